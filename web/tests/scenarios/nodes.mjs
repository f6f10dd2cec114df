// Nodes: the node is listed Ready with its capacity and the VM running on it; Cordon shows it
// cordoned (with its maintenance state) and Uncordon clears it; Drain shows the server's dry-run
// report with a row for the VM; when nothing is blocked, Drain cordons the node and evicts the VM,
// then Uncordon lets the VM (runStrategy Always) run again, so the single node ends as it began.
import { api, kernelBootVm, until } from "../lib.mjs";

const VMS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const VMI = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances";

export default async function (t) {
  const { page, step } = t;
  await api(t, "DELETE", `${VMS}/nodes-demo`);
  await until("the old nodes-demo to go", async () => (await api(t, "GET", `${VMS}/nodes-demo`)).status === 404, 60000);
  const created = await api(t, "POST", VMS, kernelBootVm(t, "nodes-demo", "Always"));
  if (created.status !== 201) throw new Error(`creating nodes-demo answered ${created.status}: ${JSON.stringify(created.body)}`);
  const nodes = (await api(t, "GET", "/api/v1/nodes")).body.items;
  const name = nodes[0].metadata.name;
  await page.getByRole("navigation", { name: "Views" }).getByRole("link", { name: "Nodes", exact: true }).click();
  const row = page.getByRole("table", { name: "Nodes" }).locator(`tr[data-name="${name}"]`);

  step("nodes: the node is listed Ready with its capacity");
  await row.getByText("Ready", { exact: true }).waitFor();
  const cpus = nodes[0].status.capacity.cpu;
  await row.locator("td.cpu .capacity").filter({ hasText: new RegExp(`^${cpus}$`) }).waitFor();
  await row.locator("td.memory .capacity").filter({ hasText: /iB$/ }).waitFor();

  step("nodes: the running VM is counted on its node and its name unfolds");
  await until("nodes-demo to run", async () => (await api(t, "GET", `${VMI}/nodes-demo`)).body?.status?.phase === "Running", 180000);
  const vmList = row.locator("details");
  await vmList.locator("summary").click();
  await vmList.getByRole("link", { name: "nodes-demo" }).waitFor();

  step("nodes: Cordon shows the node cordoned with its maintenance state; Uncordon clears it");
  await row.getByRole("button", { name: `Cordon ${name}` }).click();
  await row.locator(".badge", { hasText: "Cordoned" }).waitFor();
  await row.getByText(/VMs? still on it/).waitFor();
  await page.screenshot({ path: `${t.artifacts}/nodes-cordoned.png` });
  await row.getByRole("button", { name: `Uncordon ${name}` }).click();
  await row.locator(".badge", { hasText: "Cordoned" }).waitFor({ state: "detached" });
  const spec = (await api(t, "GET", `/api/v1/nodes/${name}`)).body.spec;
  if (spec.unschedulable) throw new Error(`the node is still unschedulable: ${JSON.stringify(spec)}`);

  step("nodes: Drain shows the dry-run report with the VM's row; closing it changes nothing");
  await row.getByRole("button", { name: `Drain ${name}` }).click();
  const dialog = page.getByRole("dialog", { name: `Drain ${name}` });
  const plan = dialog.getByRole("table", { name: `Drain plan for ${name}` });
  await plan.locator('tr[data-name="default/nodes-demo"]').waitFor();
  await page.screenshot({ path: `${t.artifacts}/nodes.png` });
  const blocked = await plan.locator("td.plan.Blocked").count();
  const offered = await dialog.getByRole("button", { name: `Drain ${name}` }).count();
  if (blocked && offered) throw new Error("Drain is offered although a VM is blocked");
  if (!blocked && !offered) throw new Error("Drain is not offered although nothing is blocked");
  await dialog.getByRole("button", { name: blocked ? "Close" : "Cancel" }).click();
  await dialog.waitFor({ state: "detached" });
  if ((await api(t, "GET", `/api/v1/nodes/${name}`)).body.spec.unschedulable) throw new Error("the dry run cordoned the node");

  if (!blocked) {
    step("nodes: Drain cordons the node and evicts the VM; Uncordon lets it run again");
    const before = (await api(t, "GET", `${VMI}/nodes-demo`)).body.metadata.uid;
    await row.getByRole("button", { name: `Drain ${name}` }).click();
    await dialog.getByRole("button", { name: `Drain ${name}` }).click();
    await dialog.waitFor({ state: "detached" });
    await row.locator(".badge", { hasText: "Cordoned" }).waitFor();
    await until("the VM to leave the node", async () => {
      const vmi = (await api(t, "GET", `${VMI}/nodes-demo`)).body;
      return vmi?.metadata?.uid !== before && vmi?.status?.phase !== "Running";
    }, 120000);
    await row.getByText(/No VMs left|VMs? still on it/).waitFor();
    await page.screenshot({ path: `${t.artifacts}/nodes-drained.png` });
    await row.getByRole("button", { name: `Uncordon ${name}` }).click();
    await row.locator(".badge", { hasText: "Cordoned" }).waitFor({ state: "detached" });
    await until("nodes-demo to run again", async () => (await api(t, "GET", `${VMI}/nodes-demo`)).body?.status?.phase === "Running", 180000);
  }

  await api(t, "DELETE", `${VMS}/nodes-demo`);
}
