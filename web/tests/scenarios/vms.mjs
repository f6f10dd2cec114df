// The VM list: shows the namespace's VMs, a VM created elsewhere appears without a reload, search
// narrows the table, Start runs a VM (Running), the status filter shows only the Running one, with
// many VMs only the rows near the window are painted and scrolling reaches the last, and Stop stops
// it (Stopped).
import { api, kernelBootVm, until } from "../lib.mjs";

const VMS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

export default async function (t) {
  const { page, step } = t;
  // What an earlier run against the same server left.
  for (const name of ["demo", "created-later"]) await api(t, "DELETE", `${VMS}/${name}`);
  await until("the earlier run's VMs gone", async () => (await api(t, "GET", `${VMS}/demo`)).status === 404 && (await api(t, "GET", `${VMS}/created-later`)).status === 404, 60000);
  await page.getByRole("link", { name: "Virtual machines" }).click();
  await api(t, "POST", VMS, kernelBootVm(t, "demo"));
  const demo = page.locator('tr[data-vm="demo"]');
  await demo.locator("td.status").filter({ hasText: /^(Stopped|Halted)$/ }).waitFor();

  step("vms: a VM created elsewhere appears without a reload");
  const created = await api(t, "POST", VMS, kernelBootVm(t, "created-later"));
  if (created.status !== 201) throw new Error(`creating the VM answered ${created.status}: ${JSON.stringify(created.body)}`);
  await page.locator('tr[data-vm="created-later"]').waitFor();

  step("vms: search narrows the table");
  await page.getByLabel("Search VMs").fill("created-later");
  await demo.waitFor({ state: "detached" });
  await page.getByLabel("Search VMs").fill("");
  await demo.waitFor();

  step("vms: Start runs the VM and the table shows it Running");
  await page.getByRole("button", { name: "Start demo", exact: true }).click();
  await demo.locator("td.status").filter({ hasText: /^Running$/ }).waitFor({ timeout: 120000 });
  await page.screenshot({ path: `${t.artifacts}/vms.png` });

  step("vms: at a laptop's 1280 pixels the page needs no sideways scrolling");
  const wide = page.viewportSize();
  await page.setViewportSize({ width: 1280, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.screenshot({ path: `${t.artifacts}/vms-laptop.png` });
  await page.setViewportSize(wide);
  if (overflow > 0) throw new Error(`at 1280 pixels the page is ${overflow} pixels wider than the window`);

  step("vms: the status filter shows only Running VMs and keeps the choice in the address");
  await page.getByLabel("Filter by status").selectOption("Running");
  await page.locator('tr[data-vm="created-later"]').waitFor({ state: "detached" });
  await demo.waitFor();
  if (!page.url().endsWith("/ui/vms?status=Running")) throw new Error(`the address does not keep the filter: ${page.url()}`);
  await page.getByLabel("Filter by status").selectOption("");
  await page.locator('tr[data-vm="created-later"]').waitFor();

  step("vms: with 80 more VMs only the rows near the window are in the page; scrolling reaches the last");
  const bulk = Array.from({ length: 80 }, (_, i) => `bulk-${String(i).padStart(2, "0")}`);
  for (const name of bulk) await api(t, "POST", VMS, kernelBootVm(t, name));
  const total = bulk.length + 2;
  await page.locator(".live").filter({ hasText: `${total} of ${total} VMs` }).waitFor();
  if ((await page.getByRole("table", { name: "Virtual machines" }).getAttribute("aria-rowcount")) !== String(total + 1)) throw new Error("aria-rowcount does not count every VM");
  const painted = await page.locator("tbody tr[data-vm]").count();
  if (painted >= total) throw new Error(`all ${painted} rows are in the page, not only those near the window`);
  await page.evaluate(() => window.scrollTo(0, document.documentElement.scrollHeight));
  await page.locator('tr[data-vm="demo"]').waitFor();
  await page.getByLabel("Search VMs").fill("bulk-79");
  await page.locator('tr[data-vm="bulk-79"]').waitFor();
  await page.getByLabel("Search VMs").fill("");
  for (const name of bulk) await api(t, "DELETE", `${VMS}/${name}`);
  await page.locator(".live").filter({ hasText: "2 of 2 VMs" }).waitFor();
  await page.evaluate(() => window.scrollTo(0, 0));

  step("vms: Stop stops it and the table shows it Stopped");
  await page.getByRole("button", { name: "Stop demo", exact: true }).click();
  await demo.locator("td.status").filter({ hasText: /^Stopped$/ }).waitFor({ timeout: 120000 });
}
