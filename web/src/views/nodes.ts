// Nodes: each node's health, place (zone, machine pool), capacity, the VMs on it, its QEMU and
// accelerator, and its heartbeat; cordon and uncordon; drain, which first shows the server's
// dry-run plan (what happens to each VM, and why) and is only offered when nothing is blocked;
// and the maintenance state of a cordoned node (VMs still on it, migrations in flight), all
// kept live by watches.

import { ApiError, call, collectionPath, objectPath, Obj, token } from "../api";
import { age, el, toast } from "../dom";
import { Column, liveTable, sorted, startWatches } from "../live-table";
import { formatBytes, formatCpus, parseQuantity } from "../quantity";
import { Context, link, View } from "../router";

const LEASE_NAMESPACE = "vmo-node-lease";
const FINISHED_MIGRATION = ["Succeeded", "Failed"];

/** What a node row shows, gathered from the node, its lease, the VMIs and the migrations. */
type NodeRow = { node: Obj; heartbeat: string; vmis: Obj[]; migrations: Obj[] };

type DrainItem = { namespace: string; name: string; evictionStrategy: string; action: "Migrate" | "Stop" | "Leave" | "Blocked"; target?: string; reason?: string };
type DrainPlan = { node: string; started?: boolean; items: DrainItem[] };

/** A JSON merge patch (RFC 7386): `call` sends plain JSON, which the server reads as a whole object. */
async function mergePatch(path: string, patch: unknown): Promise<Obj> {
  const response = await fetch(path, {
    method: "PATCH",
    headers: { Accept: "application/json", Authorization: `Bearer ${token() ?? ""}`, "Content-Type": "application/merge-patch+json" },
    body: JSON.stringify(patch),
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(body?.message ?? response.statusText, response.status, body);
  return body;
}

const ready = (node: Obj) => (node.status?.conditions ?? []).find((c: any) => c.type === "Ready");
const cordoned = (node: Obj) => node.spec?.unschedulable === true;

function drainPath(node: string, dryRun: boolean): string {
  return `/apis/subresources.vmo.io/v1/nodes/${encodeURIComponent(node)}/drain${dryRun ? "?dryRun=All" : ""}`;
}

/** The server's refusal, with a plain word for a server that has no drain endpoint. */
function drainError(e: unknown): string {
  if (e instanceof ApiError && e.code === 404 && e.status?.details?.kind !== "nodes") {
    return "this server has no drain endpoint (POST /apis/subresources.vmo.io/v1/nodes/NAME/drain answered 404): it is older than this UI.";
  }
  return (e as Error).message;
}

function statusCell(r: NodeRow): Node {
  const condition = ready(r.node);
  const isReady = condition?.status === "True";
  const cell = el("div", {}, el("span", { class: `status ${isReady ? "Running" : "CrashLoopBackOff"}`, title: condition?.message ?? "" }, isReady ? "Ready" : "NotReady"));
  if (cordoned(r.node)) cell.append(el("span", { class: "badge warn" }, "Cordoned"));
  const maintenance = maintenanceText(r);
  if (maintenance) cell.append(el("div", { class: "maintenance muted" }, maintenance));
  for (const m of r.migrations) cell.append(el("div", { class: "migration" }, migrationText(m)));
  return cell;
}

/** A cordoned node's maintenance state: how many VMs still run there and how many are moving. */
function maintenanceText(r: NodeRow): string {
  if (!cordoned(r.node)) return "";
  if (!r.vmis.length) return "No VMs left: ready for maintenance";
  const vms = `${r.vmis.length} VM${r.vmis.length === 1 ? "" : "s"} still on it`;
  return r.migrations.length ? `${vms}, ${r.migrations.length} migrating` : vms;
}

function migrationText(m: Obj): string {
  const target = m.status?.migrationState?.targetNode;
  return `${m.spec?.vmiName ?? m.metadata.name}: migration ${m.status?.phase ?? "Pending"}${target ? ` → ${target}` : ""}`;
}

/** Capacity, with what VMs may use of it (allocatable) under it when that is less. */
function resources(r: NodeRow, key: "cpu" | "memory"): Node | string {
  const format = key === "cpu" ? (q: string) => formatCpus(parseQuantity(q)) : (q: string) => formatBytes(parseQuantity(q));
  const allocatable = r.node.status?.allocatable?.[key];
  const capacity = r.node.status?.capacity?.[key];
  if (!capacity) return "—";
  const cell = el("div", {}, el("span", { class: "capacity" }, format(capacity)));
  if (allocatable && allocatable !== capacity) cell.append(el("div", { class: "muted" }, `${format(allocatable)} allocatable`));
  return cell;
}

function vmsCell(ctx: Context, r: NodeRow): Node | string {
  if (!r.vmis.length) return "0";
  const names = r.vmis.map((v) => {
    const { namespace, name } = v.metadata;
    const label = namespace === ctx.namespace ? link(ctx, `vms/${encodeURIComponent(name)}`, name) : el("span", {}, `${namespace}/${name}`);
    return el("li", {}, label, el("span", { class: "muted" }, ` ${v.status?.phase ?? ""}`));
  });
  return el("details", {}, el("summary", { "data-key": "vms", "aria-label": `${r.vmis.length} VMs on ${r.node.metadata.name}` }, `${r.vmis.length}`), el("ul", { class: "kv" }, ...names));
}

function runtimeCell(node: Obj): Node {
  const labels = node.metadata.labels ?? {};
  const qemu = labels["vmo.io/qemu-version"] ?? (node.status?.nodeInfo?.containerRuntimeVersion ?? "").replace(/^qemu:\/\//, "");
  const accelerator = labels["vmo.io/accelerator"] ?? "";
  const cell = el("span", {}, qemu ? `QEMU ${qemu}` : "—");
  if (accelerator) cell.append(el("span", { class: `badge ${accelerator === "kvm" ? "ok" : "warn"}`, title: accelerator === "kvm" ? "Hardware virtualization" : "Software emulation: guests run slowly" }, accelerator.toUpperCase()));
  return cell;
}

function heartbeatCell(r: NodeRow): Node | string {
  if (!r.heartbeat) return "—";
  const stale = Date.now() - Date.parse(r.heartbeat) > 40_000;
  return el("span", { class: stale ? "error" : "", title: r.heartbeat }, `${age(r.heartbeat)} ago`);
}

function actionsCell(r: NodeRow, drain: (node: string, button: HTMLButtonElement) => void): Node {
  const name = r.node.metadata.name;
  const isCordoned = cordoned(r.node);
  const cordon = el("button", { type: "button", "aria-label": `${isCordoned ? "Uncordon" : "Cordon"} ${name}` }, isCordoned ? "Uncordon" : "Cordon") as HTMLButtonElement;
  cordon.addEventListener("click", () => void setCordoned(name, !isCordoned, cordon));
  const drainButton = el("button", { type: "button", class: "danger", "aria-label": `Drain ${name}` }, "Drain…") as HTMLButtonElement;
  drainButton.addEventListener("click", () => drain(name, drainButton));
  return el("div", { class: "actions" }, cordon, drainButton);
}

async function setCordoned(name: string, value: boolean, button: HTMLButtonElement) {
  button.disabled = true;
  toast(`${value ? "Cordoning" : "Uncordoning"} ${name}…`);
  try {
    await mergePatch(objectPath("", "v1", "nodes", undefined, name), { spec: { unschedulable: value ? true : null } });
    toast(`${name} ${value ? "cordoned: no new VMs are placed on it" : "uncordoned: VMs may be placed on it again"}`);
  } catch (e) {
    toast(`${value ? "Cordon" : "Uncordon"} ${name} failed: ${(e as Error).message}`, true);
    button.disabled = false;
  }
}

const ACTION_TEXT: Record<DrainItem["action"], (i: DrainItem) => string> = {
  Migrate: (i) => `Live-migrates to ${i.target ?? "another node"}`,
  Stop: () => "Is shut down",
  Leave: () => "Stays (left to another controller)",
  Blocked: () => "Blocks the drain",
};

function planTable(plan: DrainPlan): HTMLElement {
  const rows = plan.items.map((i) =>
    el(
      "tr",
      { "data-name": `${i.namespace}/${i.name}` },
      el("td", {}, `${i.namespace}/${i.name}`),
      el("td", {}, i.evictionStrategy),
      el("td", { class: `plan ${i.action}` }, ACTION_TEXT[i.action](i)),
      el("td", { class: "wrap" }, i.reason ?? ""),
    ),
  );
  const head = el("tr", {}, ...["VM", "Eviction strategy", "What happens", "Why"].map((h) => el("th", { scope: "col" }, h)));
  return el("div", { class: "table-scroll" }, el("table", { "aria-label": `Drain plan for ${plan.node}`, class: "live-table drain-plan" }, el("thead", {}, head), el("tbody", {}, ...rows)));
}

/** "2 live-migrate, 1 shut down" */
function planCounts(plan: DrainPlan): string {
  const count = (action: string) => plan.items.filter((i) => i.action === action).length;
  return [["Migrate", "live-migrate"], ["Stop", "shut down"], ["Leave", "stay"], ["Blocked", "cannot move"]]
    .filter(([a]) => count(a))
    .map(([a, words]) => `${count(a)} ${words}`)
    .join(", ");
}

function planSummary(plan: DrainPlan): string {
  if (!plan.items.length) return `No VMs run on ${plan.node}: draining only cordons it.`;
  return `${plan.items.length} VM${plan.items.length === 1 ? "" : "s"} on ${plan.node}: ${planCounts(plan)}. Draining cordons the node, then moves or stops each VM as shown.`;
}

/** The dry-run report in a dialog; offers the drain itself only when nothing is blocked. */
function drainDialog(plan: DrainPlan) {
  const blocked = plan.items.filter((i) => i.action === "Blocked");
  const error = el("p", { class: "error", role: "alert" });
  const close = el("button", { type: "button" }, blocked.length ? "Close" : "Cancel") as HTMLButtonElement;
  const actions = el("div", { class: "dialog-actions" }, close);
  const dialog = el(
    "dialog",
    { "aria-label": `Drain ${plan.node}`, class: "drain-dialog" },
    el("h2", {}, `Drain ${plan.node}`),
    el("p", {}, planSummary(plan)),
    plan.items.length ? planTable(plan) : "",
    error,
    actions,
  ) as HTMLDialogElement;
  const finish = () => {
    dialog.close();
    dialog.remove();
  };
  close.addEventListener("click", finish);
  dialog.addEventListener("cancel", finish);
  if (blocked.length) {
    error.textContent = `Drain is not offered: ${blocked.map((i) => i.name).join(", ")} cannot leave the node. Change ${blocked.length === 1 ? "its" : "their"} eviction strategy or make room on another node, then try again.`;
  } else {
    const confirm = el("button", { type: "button", class: "primary danger-fill" }, `Drain ${plan.node}`) as HTMLButtonElement;
    confirm.addEventListener("click", async () => {
      confirm.disabled = true;
      confirm.textContent = "Draining…";
      error.textContent = "";
      try {
        const started: DrainPlan = await call("POST", drainPath(plan.node, false), {});
        toast(`Drain of ${plan.node} started: cordoned${started.items.length ? `; ${planCounts(started)}` : ""}`);
        finish();
      } catch (e) {
        error.textContent = `The drain was refused: ${drainError(e)}`;
        confirm.textContent = `Drain ${plan.node}`;
        confirm.disabled = e instanceof ApiError && e.code === 409;
      }
    });
    actions.append(confirm);
  }
  document.body.append(dialog);
  dialog.showModal();
  close.focus();
}

/** Asks the server for the dry-run plan of draining `node`, then shows it. */
async function planDrain(node: string, button: HTMLButtonElement) {
  button.disabled = true;
  toast(`Planning the drain of ${node}…`);
  try {
    const plan: DrainPlan = await call("POST", drainPath(node, true), {});
    toast("");
    drainDialog(plan);
  } catch (e) {
    toast(`Planning the drain of ${node} failed: ${drainError(e)}`, true);
  } finally {
    button.disabled = false;
  }
}

function columns(ctx: Context): Column<NodeRow>[] {
  const label = (key: string) => (r: NodeRow) => r.node.metadata.labels?.[key] ?? "—";
  return [
    { header: "Name", cell: (r) => el("div", {}, el("strong", {}, r.node.metadata.name), el("div", { class: "muted" }, internalIp(r.node))) },
    { header: "Status", cell: statusCell, className: "status-cell" },
    { header: "Zone and pool", cell: (r) => el("div", {}, label("topology.kubernetes.io/zone")(r), el("div", { class: "muted", title: "Machine pool" }, `pool ${label("vmo.io/machine-pool")(r)}`)) },
    { header: "CPUs", cell: (r) => resources(r, "cpu"), className: "num cpu" },
    { header: "Memory", cell: (r) => resources(r, "memory"), className: "num memory" },
    { header: "VMs", cell: (r) => vmsCell(ctx, r) },
    { header: "QEMU", cell: (r) => runtimeCell(r.node) },
    { header: "Heartbeat", cell: heartbeatCell },
    { header: "Actions", cell: (r) => actionsCell(r, (name, button) => void planDrain(name, button)) },
  ];
}

function internalIp(node: Obj): string {
  return (node.status?.addresses ?? []).find((a: any) => a.type === "InternalIP")?.address ?? "";
}

/** The migrations still moving a VM off `node`. */
function migrationsFrom(node: string, migrations: Obj[], vmis: Map<string, Obj>): Obj[] {
  return migrations.filter((m) => {
    if (FINISHED_MIGRATION.includes(m.status?.phase)) return false;
    const source = m.status?.migrationState?.sourceNode ?? vmis.get(`${m.metadata.namespace}/${m.spec?.vmiName}`)?.status?.nodeName;
    return source === node;
  });
}

export function nodesView(ctx: Context): View {
  const table = liveTable("Nodes", columns(ctx), (r) => r.node.metadata.name, "No nodes have joined.");
  const render = () => {
    const [nodes, vmis, migrations, leases] = live.watches;
    const onNode = (name: string) => sorted(vmis).filter((v) => v.status?.nodeName === name && !["Succeeded", "Failed"].includes(v.status?.phase));
    table.render(
      sorted(nodes).map((node) => {
        const name = node.metadata.name;
        const lease = leases.objects.get(`${LEASE_NAMESPACE}/${name}`);
        return {
          node,
          heartbeat: lease?.spec?.renewTime ?? ready(node)?.lastHeartbeatTime ?? "",
          vmis: onNode(name),
          migrations: migrationsFrom(name, sorted(migrations), vmis.objects),
        };
      }),
    );
  };
  const quiet = (e: Error) => toast(`Live updates interrupted: ${e.message}`, true);
  const live = startWatches(
    [
      { path: collectionPath("", "v1", "nodes"), fail: table.fail },
      { path: collectionPath("kubevirt.io", "v1", "virtualmachineinstances"), fail: quiet },
      { path: collectionPath("kubevirt.io", "v1", "virtualmachineinstancemigrations"), fail: quiet },
      { path: collectionPath("coordination.k8s.io", "v1", "leases", LEASE_NAMESPACE), fail: quiet },
    ],
    render,
  );
  // Heartbeat ages move on between events.
  const ticker = window.setInterval(render, 10_000);
  const node = el(
    "section",
    { class: "nodes-view" },
    el("h2", {}, "Nodes"),
    el("p", { class: "muted" }, "Cordon keeps new VMs off a node; Drain shows what would happen to each VM on it before it cordons the node and moves or stops them."),
    table.node,
  );
  return {
    node,
    stop: () => {
      window.clearInterval(ticker);
      live.stop();
    },
  };
}
