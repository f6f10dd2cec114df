// The VM detail view (/ui/vms/NAME): the VM's header with its status and every action, the
// operations on it (migrations, snapshots, restores, clones) with their live progress, and tabs
// for its overview, disks, NICs, events, snapshots, metrics and YAML. The VM, its instance and
// its snapshots are watched all the time; events while their tab is open; migrations, restores
// and clones while one of this VM's runs (listed again whenever the VM or instance changes, which
// any of them does); claims are listed with the VM's changes. The tabs' parts are in vmdetail/.

import { collectionPath, objectPath, Obj, Watch } from "../api";
import { tabs } from "../dialog";
import { el, toast } from "../dom";
import { Context, link, View } from "../router";
import { cloneDialog, deleteVm, LIFECYCLE, lifecycleButton, migrateDialog, PATHS, progressOf, restoreDialog, snapshotDialog } from "../vmactions";
import { WatchOnDemand } from "./vmdetail/demand";
import { eventsAbout, eventsTable } from "./vmdetail/events";
import { disks, nics } from "./vmdetail/hardware";
import { metricsTab } from "./vmdetail/metricstab";
import { concerns, operationsList } from "./vmdetail/operations";
import { overview } from "./vmdetail/overview";
import { snapshotsOf, snapshotsTable } from "./vmdetail/snapshots";
import { yamlEditor } from "./vmdetail/yaml";

/** The operations watched while one of this VM's runs (snapshots are watched all the time). */
const ON_DEMAND = [
  ["VirtualMachineInstanceMigration", "migrations"],
  ["VirtualMachineRestore", "restores"],
  ["VirtualMachineClone", "clones"],
] as const;
type OnDemand = (typeof ON_DEMAND)[number][1];

export function vmdetailView(ctx: Context): View {
  const { namespace } = ctx;
  const name = ctx.params.name;
  const key = `${namespace}/${name}`;
  const vmPath = objectPath("kubevirt.io", "v1", "virtualmachines", namespace, name);
  let vmListed = false;
  const vm = () => vms.objects.get(key);
  const vmi = () => vmis.objects.get(key);
  const status = () => vm()?.status?.printableStatus ?? "Unknown";
  const snapshots = () => snapshotsOf(snapshotWatch.objects.values(), name);

  const title = el("h2", {}, name);
  const statusBadge = el("span", { class: "status", role: "status", "aria-live": "polite" });
  const actionBar = el("div", { class: "vm-actions", role: "group", "aria-label": `Actions on ${name}` });
  const operationsArea = el("section", { class: "vm-operations", "aria-label": "Operations", "aria-live": "polite" });
  const missing = el("p", { class: "error", role: "alert" });

  const started = (plural: OnDemand) => (o: Obj) => operations[plural].add(o);
  const restore = (chosen = "") => vm() && restoreDialog(namespace, vm()!, snapshots(), chosen, started("restores"));
  const actionButton = (label: string, run: () => void, enabled: boolean, extra: Record<string, string> = {}) => {
    const button = el("button", { type: "button", "aria-label": `${label} ${name}`, ...extra }, label) as HTMLButtonElement;
    button.disabled = !enabled;
    button.addEventListener("click", run);
    return button;
  };

  /** The header's buttons, rebuilt only when the status changes (keeps focus otherwise). */
  let actionsFor = "";
  const renderActions = () => {
    const now = `${status()}|${vmi()?.status?.nodeName ?? ""}`;
    if (now === actionsFor) return;
    actionsFor = now;
    const running = !!vmi() && ["Running", "Paused"].includes(status());
    actionBar.replaceChildren(
      ...LIFECYCLE.map((a) => lifecycleButton(namespace, name, status(), a)),
      actionButton("Migrate", () => void migrateDialog(namespace, name, vmi()?.status?.nodeName ?? "", started("migrations")), running),
      actionButton("Snapshot", () => snapshotDialog(namespace, name), true),
      actionButton("Restore", () => restore(), true),
      actionButton("Clone", () => cloneDialog(namespace, name, started("clones")), true),
      actionButton("Delete", async () => (await deleteVm(namespace, name)) && ctx.navigate("vms"), true, { class: "danger" }),
      link(ctx, `vms/${encodeURIComponent(name)}/console`, "Console", { class: "button" }),
    );
  };

  const overviewPanel = el("div");
  const disksPanel = el("div");
  const nicsPanel = el("div");
  const eventsPanel = el("div");
  const snapshotsPanel = el("div");
  const metrics = metricsTab(namespace, name, () => vmi()?.status?.nodeName ?? "");
  const yaml = yamlEditor(vmPath, name);

  const renderPanels = () => {
    const current = vm();
    if (!current) return;
    if (overviewPanel.isConnected) overviewPanel.replaceChildren(overview(current, vmi()));
    if (disksPanel.isConnected) disksPanel.replaceChildren(disks(current, claims.objects));
    if (nicsPanel.isConnected) nicsPanel.replaceChildren(nics(current, vmi()));
    if (eventsPanel.isConnected) eventsPanel.replaceChildren(eventsTable(eventsAbout(events.objects.values(), current)));
    if (snapshotsPanel.isConnected) snapshotsPanel.replaceChildren(snapshotsTable(snapshots(), (s) => restore(s.metadata.name)));
  };
  /** A tab's builder: its persistent panel, filled now (the panel is not in the page yet). */
  const panel = (node: HTMLElement) => () => {
    queueMicrotask(renderPanels);
    return node;
  };
  const tabbed = tabs(`${name}'s details`, [
    ["Overview", panel(overviewPanel)],
    ["Disks", panel(disksPanel)],
    ["NICs", panel(nicsPanel)],
    ["Events", panel(eventsPanel)],
    ["Snapshots", panel(snapshotsPanel)],
    [
      "Metrics",
      () => {
        metrics.open();
        return metrics.node;
      },
    ],
    ["YAML", () => yaml.node],
  ]);

  /** This VM's operations (not those of an earlier VM of the same name). */
  const mine = (objects: Map<string, Obj>) => {
    const since = vm()?.metadata.creationTimestamp ?? "";
    return [...objects.values()].filter((o) => concerns(o, name) && (o.metadata.creationTimestamp ?? "") >= since);
  };
  const renderOperations = () => {
    const kinds: [string, Map<string, Obj>, string][] = [
      ["VirtualMachineSnapshot", snapshotWatch.objects, PATHS.snapshots(namespace)],
      ...ON_DEMAND.map(([kind, plural]): [string, Map<string, Obj>, string] => [kind, operations[plural].objects, PATHS[plural](namespace)]),
    ];
    const ops = kinds.flatMap(([kind, objects, path]) => mine(objects).map((o): [string, Obj, string] => [kind, o, `${path}/${encodeURIComponent(o.metadata.name)}`]));
    operationsArea.replaceChildren(...(ops.length ? [el("h3", {}, "Operations"), operationsList(ops)] : []));
  };

  const render = () => {
    const current = vm();
    missing.textContent = vmListed && !current ? `There is no VM ${name} in ${namespace} (any more).` : "";
    tabbed.hidden = !current;
    statusBadge.textContent = current ? status() : "";
    statusBadge.className = `status ${status()}`;
    if (current) renderActions();
    else actionBar.replaceChildren();
    renderOperations();
    renderPanels();
    yaml.update(current);
    followDemand();
  };

  /** Which watches run: events while their tab shows, an operation kind while one of ours runs. */
  let seen = "";
  const followDemand = () => {
    events.set(eventsPanel.isConnected);
    for (const [kind, plural] of ON_DEMAND) {
      operations[plural].set(mine(operations[plural].objects).some((o) => !progressOf({ ...o, kind }).finished));
    }
    const now = `${vm()?.metadata.resourceVersion}|${vmi()?.metadata.resourceVersion}`;
    if (now !== seen) {
      seen = now;
      for (const [, plural] of ON_DEMAND) void operations[plural].refresh();
      void claims.refresh();
    }
  };
  let scheduled = 0;
  let stopped = false;
  const changed = () => {
    if (scheduled || stopped) return;
    scheduled = window.setTimeout(() => {
      scheduled = 0;
      if (!stopped) render();
    }, 30);
  };

  const failed = (e: Error) => toast(`Live updates interrupted: ${e.message}`, true);
  const watch = (path: string) => new Watch(path, changed, failed).start();
  const vms = new Watch(
    collectionPath("kubevirt.io", "v1", "virtualmachines", namespace),
    () => {
      vmListed = true;
      changed();
    },
    failed,
  ).start();
  const vmis = watch(collectionPath("kubevirt.io", "v1", "virtualmachineinstances", namespace));
  const snapshotWatch = watch(PATHS.snapshots(namespace));
  const events = new WatchOnDemand(collectionPath("", "v1", "events", namespace), changed, failed);
  const claims = new WatchOnDemand(collectionPath("", "v1", "persistentvolumeclaims", namespace), changed, failed);
  const operations = Object.fromEntries(ON_DEMAND.map(([, plural]) => [plural, new WatchOnDemand(PATHS[plural](namespace), changed, failed)])) as Record<OnDemand, WatchOnDemand>;
  // Switching tabs changes what needs watching.
  const tabSwitches = new MutationObserver(changed);
  tabSwitches.observe(tabbed.querySelector('[role="tabpanel"]')!, { childList: true });

  const node = el(
    "section",
    { class: "vmdetail" },
    el("p", { class: "crumbs" }, link(ctx, "vms", "VMs"), ` / ${name}`),
    el("div", { class: "vm-header" }, title, statusBadge, actionBar),
    missing,
    operationsArea,
    tabbed,
  );
  return {
    node,
    stop: () => {
      // No render after this: it could start on-demand watches nothing would stop.
      stopped = true;
      clearTimeout(scheduled);
      tabSwitches.disconnect();
      [vms, vmis, snapshotWatch, events, claims, ...Object.values(operations)].forEach((w) => w.stop());
    },
  };
}
