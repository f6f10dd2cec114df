// The dashboard: the node is Ready with its heartbeat, the VM count by state changes live when a
// VM created elsewhere starts running, the node's allocated CPU and memory count that VM, its
// usage arrives from the agent's metrics, the VM's events appear among the recent events, and the
// Running count opens the VM list filtered to Running VMs.
import { api, kernelBootVm, until } from "../lib.mjs";

const VMS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

/** The number in the dashboard's "N Running" link (0 when there is none). */
async function runningCount(page) {
  const item = page.locator('.vm-states li[data-state="Running"]');
  if (!(await item.count())) return 0;
  return Number((await item.innerText()).split(" ")[0]);
}

/** Memory quantities as the test VMs write them ("128Mi", "1Gi", bytes). */
function bytes(quantity = "0") {
  const units = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40 };
  const m = /^([0-9.]+)(Ki|Mi|Gi|Ti)?$/.exec(quantity);
  return m ? Number(m[1]) * (units[m[2]] ?? 1) : NaN;
}

/** The vCPUs and memory of the instances on `node` (not ended), as the API lists them. */
async function allocatedByApi(t, node) {
  const vmis = (await api(t, "GET", "/apis/kubevirt.io/v1/virtualmachineinstances")).body.items
    .filter((v) => v.status?.nodeName === node && !["Succeeded", "Failed"].includes(v.status?.phase));
  const cpus = vmis.reduce((sum, v) => {
    const cpu = v.spec.domain.cpu ?? {};
    return sum + (cpu.sockets ?? 1) * (cpu.cores ?? 1) * (cpu.threads ?? 1);
  }, 0);
  const memory = vmis.reduce((sum, v) => sum + bytes(v.spec.domain.memory?.guest ?? v.spec.domain.resources?.requests?.memory), 0);
  return { names: vmis.map((v) => v.metadata.name), cpus, memory };
}

export default async function (t) {
  const { page, step } = t;
  const name = "dash-demo";
  await page.getByRole("link", { name: "Dashboard", exact: true }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();

  step("dashboard: the node is Ready, with a heartbeat");
  const nodeRow = page.locator("table.nodes tr[data-node]").first();
  await nodeRow.locator("td.health").filter({ hasText: /^Ready$/ }).waitFor();
  await nodeRow.locator("td").filter({ hasText: / ago/ }).waitFor();
  await page.locator(".node-summary").filter({ hasText: "ready" }).waitFor();

  step("dashboard: a VM started elsewhere changes the count by state live");
  const runningByApi = async () => (await api(t, "GET", VMS)).body.items.filter((vm) => vm.status?.printableStatus === "Running").map((vm) => vm.metadata.name);
  // The count follows the API's (other scenarios' VMs may still be stopping).
  const countMatches = async (including) => {
    const running = await runningByApi();
    return including(running) && (await runningCount(page)) === running.length;
  };
  await until("the dashboard's Running count to match the API's", () => countMatches(() => true));
  const node = (await nodeRow.getAttribute("data-node")) ?? "";
  const allocatedCpu = page.getByRole("meter", { name: `Allocated CPU on ${node}` });
  const allocatedMemory = page.getByRole("meter", { name: `Allocated memory on ${node}` });
  const created = await api(t, "POST", VMS, kernelBootVm(t, name, "Always"));
  if (created.status !== 201) throw new Error(`creating ${name} answered ${created.status}: ${JSON.stringify(created.body)}`);
  await until(`${name} counted as Running`, () => countMatches((running) => running.includes(name)));

  step("dashboard: the node's allocated CPU and memory are those of the instances there, with it; usage arrives");
  await until("the allocation to match the instances on the node", async () => {
    const expected = await allocatedByApi(t, node);
    if (!expected.names.includes(name)) return false;
    const [cpu, memory] = [await allocatedCpu.getAttribute("aria-valuenow"), await allocatedMemory.getAttribute("aria-valuenow")];
    return Number(cpu) === expected.cpus && Number(memory) === expected.memory;
  }, 30000);
  await page.getByRole("meter", { name: `Used memory on ${node}` }).and(page.locator('[aria-valuenow]:not([aria-valuenow="0"])')).waitFor({ timeout: 30000 });
  await page.getByRole("meter", { name: `Used CPU on ${node}` }).and(page.locator(':not([aria-valuetext="measuring…"])')).waitFor({ timeout: 30000 });

  step("dashboard: the VM's events are among the recent events");
  await page.locator("table.events tr").filter({ hasText: `VirtualMachineInstance/${name}` }).filter({ hasText: "Started" }).first().waitFor();
  await page.screenshot({ path: `${t.artifacts}/dashboard.png`, fullPage: true });

  step("dashboard: the Running count opens the VM list filtered to Running VMs");
  await page.locator('.vm-states li[data-state="Running"] a').click();
  await page.waitForURL("**/ui/vms?status=Running");
  await page.locator(`tr[data-vm="${name}"] td.status`).filter({ hasText: /^Running$/ }).waitFor();
  const shown = await page.locator("tbody tr[data-vm] td.status").allInnerTexts();
  if (shown.some((s) => s !== "Running")) throw new Error(`the filtered list shows other states: ${shown.join(", ")}`);
  await page.getByRole("navigation", { name: "Views" }).getByRole("link", { name: "Dashboard" }).click();

  step("themes: light and dark, every text colour on its backgrounds at 4.5:1 or better");
  for (const scheme of ["light", "dark"]) {
    await page.emulateMedia({ colorScheme: scheme });
    const poor = await page.evaluate(() => {
      const style = getComputedStyle(document.documentElement);
      const rgb = (name) => style.getPropertyValue(name).trim().match(/[0-9a-f]{2}/gi).map((h) => parseInt(h, 16) / 255);
      const luminance = (c) => {
        const [r, g, b] = c.map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
      };
      const ratio = (a, b) => {
        const [x, y] = [luminance(rgb(a)), luminance(rgb(b))].sort((p, q) => q - p);
        return (x + 0.05) / (y + 0.05);
      };
      const pairs = [["--accent-fg", "--accent"]];
      for (const text of ["--fg", "--muted", "--accent", "--danger", "--ok", "--warn"]) for (const back of ["--bg", "--panel"]) pairs.push([text, back]);
      return pairs.map(([a, b]) => [a, b, ratio(a, b)]).filter(([, , r]) => r < 4.5);
    });
    if (poor.length) throw new Error(`${scheme} theme: low contrast ${JSON.stringify(poor)}`);
  }
  await page.screenshot({ path: `${t.artifacts}/dashboard-dark.png`, fullPage: true });
  await page.emulateMedia({ colorScheme: "light" });

  step("dashboard: deleting the VM takes it off the count");
  await api(t, "DELETE", `${VMS}/${name}`);
  await until(`${name} no longer counted`, () => countMatches((running) => !running.includes(name)));
}
