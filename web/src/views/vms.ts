// The VMs view: a table of the namespace's VirtualMachines joined with their instances (node,
// addresses), with search, a status filter (also `?status=` in the address, which the dashboard's
// state links use) and sort, kept live by watches, and the lifecycle actions.
//
// Built to stay fast with thousands of VMs under a stream of watch events: events only mark the
// table dirty and one render runs per animation frame. Only the rows in and near the window are in
// the page (spacer rows of the right height stand in for the others, so the scroll bar is true and
// aria-rowcount/aria-rowindex tell assistive technology where a row sits); the columns have fixed
// widths so they do not shift while scrolling. Each row is kept by VM name with a signature of what
// it shows, so a render rebuilds only the rows whose VM changed and moves rows only when the order
// changed (which keeps a keyboard user's focus in place). The first render waits for both lists
// (VMs and instances) so rows are built once, and the action buttons share one click listener.

import { collectionPath, Obj, Watch } from "../api";
import { el, age, toast } from "../dom";
import { parseQuantity } from "../quantity";
import { Context, link, View } from "../router";
import { LIFECYCLE, lifecycleButtonShape, runLifecycle } from "../vmactions";

type Row = { name: string; status: string; node: string; ips: string; cpu: number; memory: string; created: string };

const COLUMNS: [keyof Row, string][] = [
  ["name", "Name"],
  ["status", "Status"],
  ["node", "Node"],
  ["ips", "IP addresses"],
  ["cpu", "CPU"],
  ["memory", "Memory"],
  ["created", "Age"],
];

/** Rows painted beyond the window's edges, so scrolling and Tab find rows already there. */
const OVERSCAN = 15;
/** A row's height until one is measured (rows are one line high). */
const ROW_HEIGHT_GUESS = 43;

/** How often the Age column is brought up to date when nothing else changes. */
const AGE_REFRESH_MS = 30_000;

function cpus(vm: Obj): number {
  const cpu = vm.spec?.template?.spec?.domain?.cpu ?? {};
  return (cpu.sockets ?? 1) * (cpu.cores ?? 1) * (cpu.threads ?? 1);
}

function memory(vm: Obj): string {
  const d = vm.spec?.template?.spec?.domain ?? {};
  return d.memory?.guest ?? d.resources?.requests?.memory ?? "";
}

function rowOf(vm: Obj, vmi: Obj | undefined): Row {
  const addresses = (vmi?.status?.interfaces ?? []).map((i: any) => i.ipAddress).filter(Boolean);
  return {
    name: vm.metadata.name,
    status: vm.status?.printableStatus ?? "Unknown",
    node: vmi?.status?.nodeName ?? "",
    ips: addresses.join(", "),
    cpu: cpus(vm),
    memory: memory(vm),
    created: vm.metadata.creationTimestamp ?? "",
  };
}

/** The sort order of two rows on `key` (by code point: names are DNS labels, and it is fast). */
function compare(a: Row, b: Row, key: keyof Row): number {
  const [x, y] = [a[key], b[key]];
  if (typeof x === "number") return x - (y as number);
  if (key === "memory") return parseQuantity(x) - parseQuantity(y as string);
  return x < y ? -1 : x > y ? 1 : 0;
}

export function vmsView(ctx: Context): View {
  const namespace = ctx.namespace;
  let search = "";
  let statusFilter = new URLSearchParams(location.search).get("status") ?? "";
  let sortBy: keyof Row = "name";
  let ascending = true;
  /** The rendered row of each VM, with the signature of what it shows. */
  const rendered = new Map<string, { tr: HTMLElement; signature: string; ageCell: HTMLElement }>();
  let rowHeight = 0;
  const spacer = () => {
    const cell = el("td", { colspan: String(COLUMNS.length + 1), class: "spacer" });
    return { row: el("tr", { class: "spacer", "aria-hidden": "true" }, cell), cell };
  };
  const above = spacer();
  const below = spacer();

  const body = el("tbody");
  body.addEventListener("click", (e) => {
    const button = (e.target as Element).closest("button[data-verb]") as HTMLButtonElement | null;
    const name = button?.closest("tr")?.getAttribute("data-vm");
    const action = LIFECYCLE.find((a) => a.verb === button?.dataset.verb);
    if (button && name && action) void runLifecycle(namespace, name, action, button);
  });
  const count = el("span", { class: "muted live", "aria-live": "polite" });
  const empty = el("p", { class: "muted" }, "Loading…");
  const filter = el("input", { type: "search", placeholder: "Search name, status, node, address", "aria-label": "Search VMs" }) as HTMLInputElement;
  filter.addEventListener("input", () => {
    search = filter.value.toLowerCase();
    schedule();
  });
  const statusSelect = el("select", { "aria-label": "Filter by status" }) as HTMLSelectElement;
  statusSelect.addEventListener("change", () => {
    statusFilter = statusSelect.value;
    const query = statusFilter ? `?status=${encodeURIComponent(statusFilter)}` : "";
    history.replaceState(null, "", `${location.pathname}${query}`);
    schedule();
  });

  const head = el("tr");
  const sortButtons = new Map<keyof Row, HTMLElement>();
  for (const [key, label] of COLUMNS) {
    const button = el("button", { type: "button" }, label);
    button.addEventListener("click", () => {
      ascending = sortBy === key ? !ascending : true;
      sortBy = key;
      schedule();
    });
    const th = el("th", { scope: "col" }, button);
    sortButtons.set(key, th);
    head.append(th);
  }
  head.append(el("th", { scope: "col" }, "Actions"));
  const columns = el("colgroup", {}, ...COLUMNS.map(([key]) => el("col", { class: `col-${key}` })), el("col", { class: "col-actions" }));
  const table = el("table", { "aria-label": "Virtual machines", class: "vm-table" }, columns, el("thead", {}, head), body);
  const node = el(
    "section",
    {},
    el("div", { class: "toolbar" }, el("h2", {}, "Virtual machines"), filter, statusSelect, count, link(ctx, "create", "Create VM", { class: "button primary" })),
    table,
    empty,
  );

  const buildRow = (r: Row) => {
    const actions = el("td", { class: "actions" });
    for (const action of LIFECYCLE) actions.append(lifecycleButtonShape(r.name, r.status, action));
    const ageCell = el("td", { title: r.created }, age(r.created));
    const tr = el(
      "tr",
      { "data-vm": r.name },
      el("td", { title: r.name }, link(ctx, `vms/${encodeURIComponent(r.name)}`, r.name)),
      el("td", { class: `status ${r.status}`, title: r.status }, r.status),
      el("td", { title: r.node }, r.node),
      el("td", { title: r.ips }, r.ips),
      el("td", {}, String(r.cpu)),
      el("td", {}, r.memory),
      ageCell,
      actions,
    );
    return { tr, ageCell };
  };

  /** The statuses offered by the filter: those present, and the chosen one even when none has it. */
  const renderStatusOptions = (rows: Row[]) => {
    const statuses = [...new Set(rows.map((r) => r.status).concat(statusFilter ? [statusFilter] : []))].sort();
    const wanted = ["", ...statuses].join("\n");
    if (statusSelect.dataset.options === wanted) return;
    statusSelect.dataset.options = wanted;
    statusSelect.replaceChildren(el("option", { value: "" }, "All states"), ...statuses.map((s) => el("option", { value: s }, s)));
    statusSelect.value = statusFilter;
  };

  /** Data changed (VMs, search, filter or sort): the shown rows are computed again before painting. */
  let dirty = true;
  let shown: Row[] = [];

  const recompute = () => {
    dirty = false;
    const rows = [...vms.objects.values()].map((vm) => rowOf(vm, vmis.objects.get(`${namespace}/${vm.metadata.name}`)));
    renderStatusOptions(rows);
    shown = rows
      .filter((r) => !statusFilter || r.status === statusFilter)
      .filter((r) => !search || [r.name, r.status, r.node, r.ips].some((v) => v.toLowerCase().includes(search)))
      .sort((a, b) => (ascending ? 1 : -1) * compare(a, b, sortBy));
    const present = new Set(rows.map((r) => r.name));
    for (const name of rendered.keys()) if (!present.has(name)) rendered.delete(name);
    for (const [key, th] of sortButtons) th.setAttribute("aria-sort", key === sortBy ? (ascending ? "ascending" : "descending") : "none");
    table.setAttribute("aria-rowcount", String(shown.length + 1));
    count.textContent = `${shown.length} of ${rows.length} VMs`;
    empty.textContent = !loaded ? "Loading…" : rows.length === 0 ? `No VMs in ${namespace} yet.` : shown.length === 0 ? "No VM matches the search and filter." : "";
    empty.hidden = !empty.textContent;
  };

  /** The row of `r`, built again only when what it shows changed. */
  const rowFor = (r: Row) => {
    const signature = JSON.stringify(r);
    let entry = rendered.get(r.name);
    if (entry?.signature !== signature) {
      const built = buildRow(r);
      const focusedHere = entry && entry.tr.contains(document.activeElement);
      entry?.tr.replaceWith(built.tr);
      entry = { ...built, signature };
      rendered.set(r.name, entry);
      if (focusedHere) (built.tr.querySelector("a") as HTMLElement | null)?.focus();
    }
    return entry.tr;
  };

  /** Puts the rows in and near the window into the table, spacers standing in for the rest. */
  const paint = () => {
    const height = rowHeight || ROW_HEIGHT_GUESS;
    const top = body.getBoundingClientRect().top;
    const first = Math.min(shown.length, Math.max(0, Math.floor(-top / height) - OVERSCAN));
    const last = Math.min(shown.length, Math.max(first, Math.ceil((window.innerHeight - top) / height) + OVERSCAN));
    const trs = shown.slice(first, last).map(rowFor);
    trs.forEach((tr, i) => tr.setAttribute("aria-rowindex", String(first + i + 2)));
    above.cell.style.height = `${first * height}px`;
    below.cell.style.height = `${(shown.length - last) * height}px`;
    const wanted = [...(first > 0 ? [above.row] : []), ...trs, ...(last < shown.length ? [below.row] : [])];
    const current = body.children;
    if (current.length !== wanted.length || wanted.some((tr, i) => current[i] !== tr)) {
      // Moving the rows takes the focus off a control in them (a keyboard user Tabbing down the
      // list scrolls it); put it back where it was.
      const focused = body.contains(document.activeElement) ? (document.activeElement as HTMLElement) : null;
      body.replaceChildren(...wanted);
      if (focused?.isConnected) focused.focus({ preventScroll: true });
    }
    const measured = !rowHeight && trs.length ? trs[0].getBoundingClientRect().height : 0;
    if (measured > 0) {
      rowHeight = measured;
      if (Math.abs(rowHeight - height) > 0.5) schedule(false);
    }
  };

  let frame = 0;
  /** The VMs are listed (rows can be shown); the instances are listed, or failed to be. */
  let loaded = false;
  let instancesKnown = false;
  function schedule(dataChanged = true) {
    dirty ||= dataChanged;
    if (!loaded || !instancesKnown || frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      if (dirty) recompute();
      paint();
    });
  }
  const scrolled = () => schedule(false);
  document.addEventListener("scroll", scrolled, { capture: true, passive: true });
  window.addEventListener("resize", scrolled, { passive: true });

  const refreshAges = setInterval(() => {
    for (const { ageCell } of rendered.values()) ageCell.textContent = age(ageCell.title);
  }, AGE_REFRESH_MS);

  const failed = (e: Error) => toast(`Live updates interrupted: ${e.message}`, true);
  const vms = new Watch(
    collectionPath("kubevirt.io", "v1", "virtualmachines", namespace),
    () => {
      loaded = true;
      schedule();
    },
    failed,
  ).start();
  const vmis = new Watch(
    collectionPath("kubevirt.io", "v1", "virtualmachineinstances", namespace),
    () => {
      instancesKnown = true;
      schedule();
    },
    (e) => {
      // Without instances the rows still show, lacking node and addresses.
      instancesKnown = true;
      schedule();
      failed(e);
    },
  ).start();
  return {
    node,
    stop: () => {
      if (frame) cancelAnimationFrame(frame);
      document.removeEventListener("scroll", scrolled, { capture: true });
      window.removeEventListener("resize", scrolled);
      clearInterval(refreshAges);
      vms.stop();
      vmis.stop();
    },
  };
}
