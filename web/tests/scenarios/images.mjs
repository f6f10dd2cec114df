// Images and volumes: the test guest's qcow2 is uploaded through the file chooser into a new
// DataVolume guest-image (1Gi); the upload's progress bar is shown and the DataVolume reaches
// Succeeded without a reload; cancelled part way (on a slowed network) it resumes where the
// server is. The import form creates a DataVolume from a URL, and Delete removes it after asking. Leaves t.state.image = "guest-image" for the create-VM scenario.
import { api, until } from "../lib.mjs";

const DVS = "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes";

export default async function (t) {
  const { page, step } = t;
  await api(t, "DELETE", `${DVS}/guest-image`);
  await until("the old guest-image to go", async () => (await api(t, "GET", `${DVS}/guest-image`)).status === 404, 60000);
  await page.getByRole("navigation", { name: "Views" }).getByRole("link", { name: "Images and volumes", exact: true }).click();

  step("images: the upload form refuses a bad size with the server's message");
  await page.getByRole("button", { name: "Upload image" }).click();
  const dialog = page.getByRole("dialog", { name: "Upload an image" });
  await dialog.getByLabel("Image file").setInputFiles(t.fixtures.disk);
  await dialog.getByLabel("Name").fill("guest-image");
  await dialog.getByLabel("Size").fill("lots");
  await dialog.getByRole("button", { name: "Upload" }).click();
  await dialog.getByRole("alert").filter({ hasText: /\S/ }).waitFor();

  step("images: the qcow2 uploads into guest-image with a progress bar (the network slowed down)");
  const cdp = await page.context().newCDPSession(page);
  const throttle = (bytesPerSecond) =>
    cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: bytesPerSecond });
  await cdp.send("Network.enable");
  await throttle(2 * 2 ** 20);
  await dialog.getByLabel("Size").fill("1Gi");
  await dialog.getByRole("button", { name: "Upload" }).click();
  await dialog.waitFor({ state: "detached" });
  const upload = page.locator('li.upload[data-name="guest-image"]');
  const bar = upload.getByRole("progressbar", { name: "Upload of guest-image" });
  await bar.waitFor();
  const row = page.getByRole("table", { name: "DataVolumes" }).locator('tr[data-name="guest-image"]');
  await row.waitFor();

  step("images: Cancel stops the upload part way; Resume continues from where the server is");
  await until("the upload to pass 10%", async () => (await bar.evaluate((p) => p.value)) > 10, 60000);
  await upload.locator(".progress-text", { hasText: "MiB/s" }).waitFor();
  await page.screenshot({ path: `${t.artifacts}/images-uploading.png` });
  await upload.getByRole("button", { name: "Cancel the upload of guest-image" }).click();
  await upload.locator(".upload-state", { hasText: /^cancelled$/ }).waitFor();
  const part = await api(t, "GET", `${DVS}/guest-image/upload`);
  if (!(part.body?.received > 0) || part.body.received >= part.body.size) throw new Error(`after the cancel the server has ${JSON.stringify(part.body)}`);
  await throttle(-1);
  await upload.getByRole("button", { name: "Resume the upload of guest-image" }).click();

  step("images: the DataVolume reaches Succeeded and the upload says done");
  await row.locator("td .status", { hasText: /^Succeeded$/ }).waitFor({ timeout: 120000 });
  await upload.locator(".upload-state", { hasText: /^done$/ }).waitFor();
  const value = await upload.getByRole("progressbar").evaluate((p) => p.value);
  if (value !== 100) throw new Error(`the upload's bar ends at ${value}, not 100`);
  await page.getByRole("table", { name: "Volume claims" }).locator('tr[data-name="guest-image"]').waitFor();
  await page.screenshot({ path: `${t.artifacts}/images.png`, fullPage: true });
  t.state.image = "guest-image";

  step("images: the import form creates a DataVolume from a URL; Delete asks, then removes it");
  await api(t, "DELETE", `${DVS}/images-import`);
  await page.getByRole("button", { name: "Import from URL" }).click();
  const form = page.getByRole("dialog", { name: "Import an image from a URL" });
  await form.getByLabel("Name").fill("images-import");
  await form.getByLabel("URL").fill("http://127.0.0.1:9/none.qcow2");
  await form.getByLabel("Size").fill("64Mi");
  await form.getByRole("button", { name: "Import" }).click();
  await form.waitFor({ state: "detached" });
  const imported = page.getByRole("table", { name: "DataVolumes" }).locator('tr[data-name="images-import"]');
  await imported.getByText("http http://127.0.0.1:9/none.qcow2").waitFor();
  await imported.getByRole("button", { name: "Delete images-import" }).click();
  await page.getByRole("dialog", { name: "Delete DataVolume images-import?" }).getByRole("button", { name: "Delete" }).click();
  await imported.waitFor({ state: "detached" });
}
