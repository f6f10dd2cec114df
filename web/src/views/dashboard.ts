// The dashboard: the namespace's VMs by state, the nodes and their health, CPU and memory per node
// (allocatable; allocated to the instances placed there, from their specs; used, as each node's
// agent measures it in its Prometheus metrics) and the namespace's newest events. Everything comes
// from watches except usage, which the agents only offer as metrics: polled every 10 s.

import { collectionPath, Obj, Watch } from "../api";
import { age, el, toast } from "../dom";
import { nodeMetrics, Sample } from "../metrics";
import { formatBytes, formatCpus, parseQuantity } from "../quantity";
import { Context, link, View } from "../router";

const POLL_MS = 10_000;
/** The first rate needs two samples: the second comes sooner. */
const FIRST_RATE_MS = 2_000;
const EVENTS_SHOWN = 15;
/** A heartbeat older than this is shown as a warning. */
const STALE_HEARTBEAT_S = 120;
const ENDED_PHASES = ["Succeeded", "Failed"];

/** One node's usage from its agent's metrics: CPU seconds per instance, kept to compute a rate. */
type Usage = { at: number; cpuSeconds: Map<string, number>; cpus?: number; memory: number; error?: string };

/** Per-instance CPU counter keyed by namespace/name. */
function cpuCounters(samples: Sample[]): Map<string, number> {
  const counters = new Map<string, number>();
  for (const s of samples) if (s.name === "kubevirt_vmi_cpu_usage_seconds_total") counters.set(`${s.labels.namespace}/${s.labels.name}`, s.value);
  return counters;
}

/** CPUs busy between two readings, from the counters of the instances present in both. */
function cpuRate(before: Usage, after: Omit<Usage, "cpus">): number {
  let seconds = 0;
  for (const [key, value] of after.cpuSeconds) {
    const previous = before.cpuSeconds.get(key);
    if (previous !== undefined && value >= previous) seconds += value - previous;
  }
  return seconds / ((after.at - before.at) / 1000);
}

function vmiCpus(vmi: Obj): number {
  const cpu = vmi.spec?.domain?.cpu ?? {};
  return (cpu.sockets ?? 1) * (cpu.cores ?? 1) * (cpu.threads ?? 1);
}

function vmiMemory(vmi: Obj): number {
  const domain = vmi.spec?.domain ?? {};
  return parseQuantity(domain.memory?.guest ?? domain.resources?.requests?.memory);
}

/** A bar for `value` out of `max` (role meter, named `label`), shown as `short` and `text`. */
function meter(short: string, label: string, value: number, max: number, text: string): HTMLElement {
  const fraction = max > 0 ? Math.min(1, value / max) : 0;
  const fill = el("span", { class: "fill" });
  fill.style.width = `${(fraction * 100).toFixed(1)}%`;
  const level = fraction >= 0.9 ? "high" : fraction >= 0.7 ? "raised" : "normal";
  const bar = el("span", { class: `bar ${level}`, role: "meter", "aria-label": label, "aria-valuemin": "0", "aria-valuemax": String(max), "aria-valuenow": String(value), "aria-valuetext": text }, fill);
  return el("div", { class: "meter" }, el("span", { class: "meter-label" }, short), bar, el("span", { class: "meter-text" }, text));
}

function readiness(node: Obj): { text: string; tone: string } {
  const ready = (node.status?.conditions ?? []).find((c: any) => c.type === "Ready");
  if (ready?.status === "True") return { text: "Ready", tone: "ok" };
  if (ready?.status === "False") return { text: "NotReady", tone: "danger" };
  return { text: "Unknown", tone: "warn" };
}

function heartbeat(node: Obj): HTMLElement {
  const ready = (node.status?.conditions ?? []).find((c: any) => c.type === "Ready");
  const at = ready?.lastHeartbeatTime ?? "";
  if (!at) return el("span", { class: "muted" }, "none");
  const stale = (Date.now() - Date.parse(at)) / 1000 > STALE_HEARTBEAT_S;
  return el("span", { class: stale ? "tone-warn" : "", title: at }, `${age(at)} ago${stale ? " (stale)" : ""}`);
}

/** The VM state counts of the namespace, each a link to the VM list. */
function vmStates(ctx: Context, vms: Obj[], loaded: boolean): HTMLElement {
  const counts = new Map<string, number>();
  for (const vm of vms) {
    const state = vm.status?.printableStatus ?? "Unknown";
    counts.set(state, (counts.get(state) ?? 0) + 1);
  }
  const items = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  return el(
    "div",
    { class: "card vm-states" },
    el("h3", {}, "Virtual machines"),
    el("p", { class: "total" }, el("span", { class: "big" }, String(vms.length)), ` in ${ctx.namespace}`),
    !loaded
      ? el("p", { class: "muted" }, "Loading…")
      : items.length
      ? el("ul", { class: "states" }, ...items.map(([state, n]) => el("li", { "data-state": state }, link(ctx, `vms?status=${encodeURIComponent(state)}`, `${n} ${state}`, { class: `status ${state}`, "aria-label": `${n} ${state}: open the VM list filtered to them` }))))
      : el("p", { class: "muted" }, "No VMs yet. ", link(ctx, "create", "Create one")),
  );
}

function nodeSummary(nodes: Obj[]): HTMLElement {
  const ready = nodes.filter((n) => readiness(n).text === "Ready").length;
  const cordoned = nodes.filter((n) => n.spec?.unschedulable).length;
  return el(
    "div",
    { class: "card node-summary" },
    el("h3", {}, "Nodes"),
    el("p", { class: "total" }, el("span", { class: `big ${ready === nodes.length ? "tone-ok" : "tone-warn"}` }, `${ready}/${nodes.length}`), " ready"),
    el("p", { class: "muted" }, cordoned ? `${cordoned} cordoned` : "none cordoned"),
  );
}

export function dashboardView(ctx: Context): View {
  const namespace = ctx.namespace;
  const usage = new Map<string, Usage>();
  const summary = el("div", { class: "cards" });
  const nodeRows = el("tbody");
  const eventRows = el("tbody");
  const node = el(
    "section",
    { class: "dashboard" },
    el("div", { class: "toolbar" }, el("h2", {}, "Dashboard")),
    summary,
    el(
      "div",
      { class: "card" },
      el("h3", { id: "dash-nodes" }, "Nodes: health and capacity"),
      el("p", { class: "muted" }, "Allocated: the vCPUs and memory of the instances placed on the node. Used: what their QEMU processes use, from the node agent's metrics every 10 s."),
      el("table", { "aria-labelledby": "dash-nodes", class: "nodes" }, el("thead", {}, el("tr", {}, ...["Node", "Health", "Scheduling", "Heartbeat", "VMs", "CPU", "Memory"].map((h) => el("th", { scope: "col" }, h)))), nodeRows),
    ),
    el(
      "div",
      { class: "card" },
      el("h3", { id: "dash-events" }, `Recent events in ${namespace}`),
      el("table", { "aria-labelledby": "dash-events", class: "events" }, el("thead", {}, el("tr", {}, ...["Age", "Type", "Reason", "Object", "Message"].map((h) => el("th", { scope: "col" }, h)))), eventRows),
    ),
  );

  const instancesOn = (nodeName: string) => [...vmis.objects.values()].filter((v) => v.status?.nodeName === nodeName && !ENDED_PHASES.includes(v.status?.phase));

  const cpuCell = (n: Obj, placed: Obj[]) => {
    const allocatable = parseQuantity(n.status?.allocatable?.cpu);
    const allocated = placed.reduce((sum, v) => sum + vmiCpus(v), 0);
    const used = usage.get(n.metadata.name);
    const of = `of ${formatCpus(allocatable)}`;
    return el(
      "td",
      { class: "resources" },
      meter("Allocated", `Allocated CPU on ${n.metadata.name}`, allocated, allocatable, `${formatCpus(allocated)} ${of} vCPUs`),
      used?.error
        ? el("p", { class: "error" }, `Usage unavailable: ${used.error}`)
        : meter("Used", `Used CPU on ${n.metadata.name}`, used?.cpus ?? 0, allocatable, used?.cpus === undefined ? "measuring…" : `${formatCpus(used.cpus)} ${of} CPUs`),
    );
  };

  const memoryCell = (n: Obj, placed: Obj[]) => {
    const allocatable = parseQuantity(n.status?.allocatable?.memory);
    const allocated = placed.reduce((sum, v) => sum + vmiMemory(v), 0);
    const used = usage.get(n.metadata.name);
    const of = `of ${formatBytes(allocatable)}`;
    return el(
      "td",
      { class: "resources" },
      meter("Allocated", `Allocated memory on ${n.metadata.name}`, allocated, allocatable, `${formatBytes(allocated)} ${of}`),
      used?.error ? el("p", { class: "error" }, "Usage unavailable") : meter("Used", `Used memory on ${n.metadata.name}`, used?.memory ?? 0, allocatable, used ? `${formatBytes(used.memory)} ${of}` : "measuring…"),
    );
  };

  const renderNodes = () => {
    const list = [...nodes.objects.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    nodeRows.replaceChildren(
      ...list.map((n) => {
        const placed = instancesOn(n.metadata.name);
        const health = readiness(n);
        return el(
          "tr",
          { "data-node": n.metadata.name },
          el("th", { scope: "row" }, n.metadata.name),
          el("td", { class: `health tone-${health.tone}` }, health.text),
          el("td", { class: n.spec?.unschedulable ? "tone-warn" : "" }, n.spec?.unschedulable ? "Cordoned" : "Schedulable"),
          el("td", {}, heartbeat(n)),
          el("td", {}, String(placed.length)),
          cpuCell(n, placed),
          memoryCell(n, placed),
        );
      }),
    );
    if (!list.length) nodeRows.replaceChildren(el("tr", {}, el("td", { colspan: "7", class: "muted" }, loaded.has("nodes") ? "No nodes have joined." : "Loading…")));
  };

  const eventTime = (e: Obj) => (e as any).lastTimestamp ?? (e as any).eventTime ?? e.metadata.creationTimestamp ?? "";

  const renderEvents = () => {
    const order = (e: Obj) => Number(e.metadata.resourceVersion ?? 0);
    const newest = [...events.objects.values()].sort((a, b) => eventTime(b).localeCompare(eventTime(a)) || order(b) - order(a)).slice(0, EVENTS_SHOWN);
    eventRows.replaceChildren(
      ...newest.map((e: any) => {
        const target = e.involvedObject ?? {};
        const isVm = ["VirtualMachine", "VirtualMachineInstance"].includes(target.kind) && target.namespace === namespace;
        const object = `${target.kind ?? ""}/${target.name ?? ""}`;
        return el(
          "tr",
          { class: e.type === "Warning" ? "warning" : "" },
          el("td", { title: eventTime(e) }, age(eventTime(e))),
          el("td", { class: e.type === "Warning" ? "tone-danger" : "" }, e.type ?? ""),
          el("td", {}, e.reason ?? ""),
          el("td", {}, isVm ? link(ctx, `vms/${encodeURIComponent(target.name)}`, object) : object),
          el("td", { class: "message" }, `${e.message ?? ""}${(e.count ?? 1) > 1 ? ` (×${e.count})` : ""}`),
        );
      }),
    );
    if (!newest.length) eventRows.replaceChildren(el("tr", {}, el("td", { colspan: "5", class: "muted" }, loaded.has("events") ? "No events in this namespace." : "Loading…")));
  };

  const renderSummary = () => summary.replaceChildren(vmStates(ctx, [...vms.objects.values()], loaded.has("vms")), nodeSummary([...nodes.objects.values()]));

  const render = () => {
    renderSummary();
    renderNodes();
    renderEvents();
  };

  const poll = async () => {
    await Promise.all(
      [...nodes.objects.values()].map(async (n) => {
        const name = n.metadata.name;
        try {
          const samples = await nodeMetrics(name);
          const reading = { at: Date.now(), cpuSeconds: cpuCounters(samples), memory: samples.filter((s) => s.name === "kubevirt_vmi_memory_resident_bytes").reduce((t, s) => t + s.value, 0) };
          const before = usage.get(name);
          usage.set(name, { ...reading, cpus: before && !before.error ? cpuRate(before, reading) : undefined });
        } catch (e) {
          usage.set(name, { at: Date.now(), cpuSeconds: new Map(), memory: 0, error: (e as Error).message });
        }
      }),
    );
  };

  let stopped = false;
  let timer: number | undefined;
  const pollLoop = async (first: boolean) => {
    await poll();
    if (stopped) return;
    renderNodes();
    timer = window.setTimeout(() => void pollLoop(false), first ? FIRST_RATE_MS : POLL_MS);
  };

  const failed = (e: Error) => toast(`Live updates interrupted: ${e.message}`, true);
  // Which watches have listed once: until then a view says "Loading…", not "none".
  const loaded = new Set<string>();
  const whenChanged = (what: string, render: () => void) => () => {
    loaded.add(what);
    render();
  };
  const vms = new Watch(collectionPath("kubevirt.io", "v1", "virtualmachines", namespace), whenChanged("vms", renderSummary), failed).start();
  const vmis = new Watch(collectionPath("kubevirt.io", "v1", "virtualmachineinstances"), renderNodes, failed).start();
  let polling = false;
  const nodes = new Watch(
    collectionPath("", "v1", "nodes"),
    () => {
      loaded.add("nodes");
      render();
      if (!polling) {
        polling = true;
        void pollLoop(true);
      }
    },
    failed,
  ).start();
  const events = new Watch(collectionPath("", "v1", "events", namespace), whenChanged("events", renderEvents), failed).start();
  // Ages (heartbeats, events) move with the clock.
  const clock = window.setInterval(() => {
    renderNodes();
    renderEvents();
  }, POLL_MS);
  render();
  return {
    node,
    stop: () => {
      stopped = true;
      window.clearTimeout(timer);
      window.clearInterval(clock);
      for (const w of [vms, vmis, nodes, events]) w.stop();
    },
  };
}
