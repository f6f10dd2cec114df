// The VM detail: opened from the VM list, it shows the running VM (Overview), its NIC with a MAC,
// its events and a metrics chart with data; an invalid memory.guest saved from the YAML tab shows
// the server's error at that field's line; then, with the VM stopped, a snapshot (Succeeded and
// ready), a restore of it (Succeeded), a clone (the copy appears in the list), a migration on a
// single node (its reason shows, then it is cancelled) and deleting the clone with confirmation.
import { api, kernelBootVm, until } from "../lib.mjs";

const VMS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const SNAPSHOTS = "/apis/snapshot.kubevirt.io/v1beta1/namespaces/default/virtualmachinesnapshots";
const NAME = "detail-demo";
const CLONE = "detail-clone";
const SNAPSHOT = "detail-snap";
const LONG = { timeout: 150000 };

/** The test guest with a NIC on the pod network and a scratch disk, so both tabs have rows. */
function demoVm(t) {
  const vm = kernelBootVm(t, NAME, "Always");
  const spec = vm.spec.template.spec;
  spec.domain.devices = { interfaces: [{ name: "default", masquerade: {} }], disks: [{ name: "scratch", disk: { bus: "virtio" } }] };
  spec.networks = [{ name: "default", pod: {} }];
  spec.volumes = [{ name: "scratch", emptyDisk: { capacity: "64Mi" } }];
  return vm;
}

async function openFromList(t, name) {
  const { page } = t;
  await page.getByRole("link", { name: "Virtual machines", exact: true }).click();
  await page.locator(`tr[data-vm="${name}"]`).getByRole("link", { name, exact: true }).click();
  await page.getByRole("heading", { name, exact: true }).waitFor();
}

async function tab(t, name) {
  await t.page.getByRole("tab", { name, exact: true }).click();
}

async function waitForStatus(t, status) {
  await t.page.locator(".vm-header .status").filter({ hasText: new RegExp(`^${status}$`) }).waitFor(LONG);
}

/** The operation of `kind` (Snapshot, Restore, Clone, Migration) reaching `phase` in the operations list. */
async function operationReaches(t, kind, phase) {
  await t.page.locator(`ul.operations li[data-kind="${kind}"] .op-phase`).filter({ hasText: new RegExp(`^${phase}$`) }).first().waitFor(LONG);
}

export default async function (t) {
  const { page, step } = t;
  step("detail: a VM with a NIC and a disk, opened from the VM list");
  await api(t, "DELETE", `${VMS}/${NAME}`);
  await api(t, "DELETE", `${VMS}/${CLONE}`);
  await api(t, "DELETE", `${SNAPSHOTS}/${SNAPSHOT}`);
  await until("the last run's VMs gone", async () => (await api(t, "GET", `${VMS}/${NAME}`)).status === 404 && (await api(t, "GET", `${VMS}/${CLONE}`)).status === 404, 60000);
  const created = await api(t, "POST", VMS, demoVm(t));
  if (created.status !== 201) throw new Error(`creating ${NAME} answered ${created.status}: ${JSON.stringify(created.body)}`);
  await openFromList(t, NAME);

  step("detail: the Overview shows it Running, on a node");
  await page.getByRole("tabpanel").locator(".status").filter({ hasText: /^Running$/ }).waitFor(LONG);
  await waitForStatus(t, "Running");

  step("detail: the NICs tab shows the interface with its MAC");
  await tab(t, "NICs");
  await page.locator("code.mac").filter({ hasText: /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/ }).waitFor();
  await tab(t, "Disks");
  await page.getByRole("table", { name: "Disks" }).getByRole("cell", { name: "emptyDisk" }).waitFor();

  step("detail: the Events tab shows the instance's start");
  await tab(t, "Events");
  await page.locator('table.events tr[data-reason="Started"]').first().waitFor();

  step("detail: the Metrics tab draws a chart with data");
  await tab(t, "Metrics");
  await until("a CPU chart with two points", async () => Number((await page.locator('figure.chart[data-title="CPU"]').getAttribute("data-points").catch(() => "0")) ?? 0) >= 2, 60000);
  await page.locator('figure.chart[data-title="CPU"] svg polyline').waitFor();
  await page.screenshot({ path: `${t.artifacts}/detail.png`, fullPage: true });

  step("detail: an invalid memory.guest saved from the YAML tab is shown at its line");
  await tab(t, "YAML");
  const editor = page.getByLabel(`YAML of ${NAME}`);
  await until("the YAML loaded", async () => (await editor.inputValue()).includes("guest: 128Mi"), 30000);
  const text = (await editor.inputValue()).replace("guest: 128Mi", "guest: lots");
  const line = text.split("\n").findIndex((l) => l.trim() === "guest: lots") + 1;
  await editor.fill(text);
  await page.getByRole("button", { name: "Save", exact: true }).click();
  const problem = page.locator(".problems button[data-line]").filter({ hasText: "spec.template.spec.domain.memory.guest" });
  await problem.waitFor();
  const shownAt = Number(await problem.getAttribute("data-line"));
  if (shownAt !== line) throw new Error(`the memory.guest error is at line ${shownAt}, the field is on line ${line}`);
  await page.locator(`.yaml-editor .mark[data-line="${line}"]`).waitFor();
  await page.locator(".yaml-editor .gutter .bad").filter({ hasText: new RegExp(`^${line}$`) }).waitFor();
  await page.screenshot({ path: `${t.artifacts}/yaml-error.png`, fullPage: true });
  await page.getByRole("button", { name: "Discard changes" }).click();
  await until("the edit discarded", async () => (await editor.inputValue()).includes("guest: 128Mi"), 10000);

  step("detail: stopped, the VM gets a snapshot that becomes ready");
  await page.getByRole("button", { name: `Stop ${NAME}`, exact: true }).click();
  await waitForStatus(t, "Stopped");
  await page.getByRole("button", { name: `Snapshot ${NAME}`, exact: true }).click();
  const snapDialog = page.getByRole("dialog", { name: `Snapshot ${NAME}` });
  await snapDialog.getByLabel("Snapshot name").fill(SNAPSHOT);
  await snapDialog.getByRole("button", { name: "Take snapshot" }).click();
  await operationReaches(t, "Snapshot", "Succeeded");
  await tab(t, "Snapshots");
  const snapRow = page.locator(`tr[data-snapshot="${SNAPSHOT}"]`);
  await snapRow.locator("td.phase").filter({ hasText: /^Succeeded$/ }).waitFor(LONG);
  await snapRow.locator("td.ready").filter({ hasText: /^yes$/ }).waitFor(LONG);

  step("detail: restoring the snapshot succeeds");
  await snapRow.getByRole("button", { name: `Restore to ${SNAPSHOT}` }).click();
  const restoreDialog = page.getByRole("dialog", { name: `Restore ${NAME}` });
  await restoreDialog.getByRole("button", { name: "Restore", exact: true }).click();
  await operationReaches(t, "Restore", "Succeeded");

  step("detail: cloning makes a new VM that the list shows");
  await page.getByRole("button", { name: `Clone ${NAME}`, exact: true }).click();
  const cloneDialog = page.getByRole("dialog", { name: `Clone ${NAME}` });
  await cloneDialog.getByLabel("New VM name").fill(CLONE);
  await cloneDialog.getByRole("button", { name: "Clone", exact: true }).click();
  await operationReaches(t, "Clone", "Succeeded");
  await page.getByRole("link", { name: "Virtual machines", exact: true }).click();
  await page.locator(`tr[data-vm="${CLONE}"]`).waitFor(LONG);

  step("detail: a migration on a single node shows why it cannot go anywhere");
  await openFromList(t, NAME);
  await page.getByRole("button", { name: `Start ${NAME}`, exact: true }).click();
  await waitForStatus(t, "Running");
  await page.getByRole("button", { name: `Migrate ${NAME}`, exact: true }).click();
  const migrateDialog = page.getByRole("dialog", { name: `Migrate ${NAME}` });
  await migrateDialog.getByLabel("Target node").selectOption("");
  await migrateDialog.getByRole("button", { name: "Migrate", exact: true }).click();
  const migration = page.locator('ul.operations li[data-kind="Migration"]').first();
  await migration.locator(".op-message").filter({ hasText: /node/ }).waitFor(LONG);
  const reason = await migration.locator(".op-message").innerText();
  step(`detail: the migration says: ${reason}`);
  await page.screenshot({ path: `${t.artifacts}/detail-migration.png` });
  const cancel = migration.getByRole("button", { name: /^Cancel / });
  if (await cancel.isVisible()) {
    await cancel.click();
    await migration.waitFor({ state: "detached", timeout: 60000 });
  }

  step("detail: deleting the clone asks first, then it leaves the list");
  await openFromList(t, CLONE);
  await page.getByRole("button", { name: `Delete ${CLONE}`, exact: true }).click();
  await page.getByRole("dialog", { name: `Delete ${CLONE}?` }).getByRole("button", { name: `Delete ${CLONE}` }).click();
  await page.locator('tr[data-vm]').first().waitFor();
  await page.locator(`tr[data-vm="${CLONE}"]`).waitFor({ state: "detached", timeout: 60000 });
  await page.locator(`tr[data-vm="${NAME}"]`).waitFor();

  await api(t, "DELETE", `${VMS}/${NAME}`);
  await api(t, "DELETE", `${SNAPSHOTS}/${SNAPSHOT}`);
  await page.locator(`tr[data-vm="${NAME}"]`).waitFor({ state: "detached", timeout: 60000 });
}
