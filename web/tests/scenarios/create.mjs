// The Create VM wizard: an invalid name is refused at its field and Next stays on the step; then
// a VM is made through every step (an instance type, or custom size when there are none; a clone
// of a bootable DataVolume; raw user-data printing a marker to the console; the default network),
// the review's YAML names it, Create lands on the VM's page, and the VM list shows it reach Running
// without a reload. Leaves the VM for the console scenario (t.state.wizardVm). Needs a bootable
// DataVolume: the images scenario's (t.state.image), else it uploads the test guest's disk itself.
import { readFileSync } from "node:fs";
import { api, until } from "../lib.mjs";

const NAME = "wizard-vm";
const DVS = "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes";
const VMS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const MARKER = "VMO-WIZARD-MARKER";

/** The DataVolume's phase ("" while it does not exist). */
async function phase(t, name) {
  const answer = await api(t, "GET", `${DVS}/${name}`);
  return answer.status === 200 ? answer.body.status?.phase ?? "" : "";
}

/** A DataVolume holding the test guest's disk: uploaded through the upload subresource. */
async function uploadedGuestImage(t) {
  const name = "guest-image";
  if ((await api(t, "GET", `${DVS}/${name}`)).status === 404) {
    const created = await api(t, "POST", DVS, {
      apiVersion: "cdi.kubevirt.io/v1beta1",
      kind: "DataVolume",
      metadata: { name, namespace: "default" },
      spec: { source: { upload: {} }, storage: { resources: { requests: { storage: "1Gi" } } } },
    });
    if (created.status !== 201) throw new Error(`creating ${name} answered ${created.status}: ${JSON.stringify(created.body)}`);
  }
  const ready = await until(`${name} UploadReady or Succeeded`, async () => {
    const p = await phase(t, name);
    return ["UploadReady", "Succeeded"].includes(p) && p;
  });
  if (ready === "UploadReady") {
    const data = readFileSync(t.fixtures.disk);
    const answer = await t.page.request.put(`${t.url}${DVS}/${name}/upload`, {
      data,
      headers: { Authorization: `Bearer ${t.token}`, "X-Upload-Size": String(data.length), "Content-Type": "application/octet-stream" },
      timeout: 120000,
    });
    if (!answer.ok()) throw new Error(`uploading ${name} answered ${answer.status()}: ${await answer.text()}`);
  }
  await until(`${name} Succeeded`, async () => (await phase(t, name)) === "Succeeded", 180000);
  return name;
}

/** The bootable DataVolume to clone. */
async function bootableImage(t) {
  const image = typeof t.state.image === "string" ? t.state.image : t.state.image?.name;
  if (image) return image;
  t.step("create: no image from the images scenario; uploading the test guest's disk as guest-image");
  return uploadedGuestImage(t);
}

/** Deletes a VM of that name left by an earlier run, so the wizard can make it again. */
async function removeLeftover(t) {
  if ((await api(t, "DELETE", `${VMS}/${NAME}`)).status !== 200) return;
  await until(`the earlier ${NAME} gone`, async () => (await api(t, "GET", `${VMS}/${NAME}`)).status === 404);
}

export default async function (t) {
  const { page, step } = t;
  const image = await bootableImage(t);
  await removeLeftover(t);
  const heading = page.locator("#wizard-step-title");
  const next = page.getByRole("button", { name: "Next" });

  step("create: open the wizard");
  await page.getByRole("navigation", { name: "Views" }).getByRole("link", { name: "Create VM" }).click();
  await heading.filter({ hasText: "Step 1 of 6: Basics" }).waitFor();

  step("create: an invalid name is refused at the field and Next stays on the step");
  await page.getByLabel("Name", { exact: true }).fill("Bad_Name");
  const nameError = page.locator("#vm-name-error");
  await nameError.filter({ hasText: "lower-case letters" }).waitFor();
  await next.click();
  await heading.filter({ hasText: "Basics" }).waitFor();
  if ((await page.getByLabel("Name", { exact: true }).getAttribute("aria-invalid")) !== "true") throw new Error("the bad name is not marked invalid");

  step("create: basics (name and size)");
  await page.getByLabel("Name", { exact: true }).fill(NAME);
  await nameError.waitFor({ state: "hidden" });
  const nano = await api(t, "GET", "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterinstancetypes/u1.nano");
  if (nano.status === 200) {
    step("create: size from the instance type u1.nano");
    await page.getByRole("radio", { name: "Instance type" }).check();
    await page.locator("#vm-instancetype").selectOption("VirtualMachineClusterInstancetype/u1.nano");
  } else {
    step(`create: no instance type u1.nano (${nano.status}); custom 1 vCPU and 256Mi`);
    await page.getByRole("radio", { name: "Custom vCPUs and memory" }).check();
    await page.getByLabel("vCPUs").fill("1");
    await page.getByLabel("Memory", { exact: true }).fill("256Mi");
  }
  await next.click();

  step(`create: boot source, a clone of ${image}`);
  await heading.filter({ hasText: "Boot source" }).waitFor();
  await page.getByLabel("Clone a volume").check();
  await page.locator("#boot-clone").selectOption(image);
  await until("the disk size taken from the source", async () => (await page.getByLabel("Disk size").inputValue()) !== "", 10000);
  await page.screenshot({ path: `${t.artifacts}/wizard.png` });
  await next.click();

  step("create: cloud-init, raw user-data printing the marker");
  await heading.filter({ hasText: "Cloud-init" }).waitFor();
  await page.getByLabel("Raw user-data").check();
  await page.getByLabel("User-data", { exact: true }).fill(`#!/bin/sh\necho ${MARKER} > /dev/console\n`);
  await next.click();

  step("create: networks, the default pod network is on");
  await heading.filter({ hasText: "Networks" }).waitFor();
  if (!(await page.getByLabel(/Default pod network/).isChecked())) throw new Error("the pod network is not on by default");
  await next.click();

  step("create: disks, none extra");
  await heading.filter({ hasText: "Disks" }).waitFor();
  await next.click();

  step("create: the review's YAML names the VM, its clone and its user-data");
  await heading.filter({ hasText: "Review" }).waitFor();
  const yaml = await page.locator(".review-yaml").innerText();
  for (const expected of [`name: ${NAME}`, `name: ${NAME}-rootdisk`, `name: ${image}`, MARKER, "runStrategy: Always", "masquerade: {}"]) {
    if (!yaml.includes(expected)) throw new Error(`the review's YAML lacks ${JSON.stringify(expected)}:\n${yaml}`);
  }
  await page.screenshot({ path: `${t.artifacts}/wizard-review.png` });

  step("create: Create lands on the VM's page");
  await page.getByRole("button", { name: "Create VM" }).click();
  await page.waitForURL(`**/ui/vms/${NAME}`);
  t.state.wizardVm = NAME;

  step("create: the VM list shows it reach Running without a reload");
  await page.getByRole("navigation", { name: "Views" }).getByRole("link", { name: "Virtual machines" }).click();
  await page.locator(`tr[data-vm="${NAME}"] td.status`).filter({ hasText: /^Running$/ }).waitFor({ timeout: 180000 });
}
