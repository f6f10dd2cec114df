// Tables of objects kept live by watches, for the views that list several kinds side by side
// (nodes, networks, storage classes, images): a table from column definitions that re-renders its
// rows, says when it is empty or its watch failed, and one place to start and stop the watches.

import { Obj, Watch } from "./api";
import { el } from "./dom";

export type Column<T> = { header: string; cell: (row: T) => Node | string; className?: string };

export type LiveTable<T> = {
  node: HTMLElement;
  /** Replaces the rows; `key` names each row (its data-name attribute). */
  render: (rows: T[]) => void;
  /** Shows why the rows cannot be listed (the watch's error) in place of the rows. */
  fail: (e: Error) => void;
};

/** A table labelled `label` with `columns`; `empty` is said when there are no rows. */
export function liveTable<T>(label: string, columns: Column<T>[], key: (row: T) => string, empty: string): LiveTable<T> {
  const body = el("tbody");
  const head = el("tr", {}, ...columns.map((c) => el("th", { scope: "col" }, c.header)));
  const table = el("table", { "aria-label": label, class: "live-table" }, el("thead", {}, head), body);
  const note = (text: string, className: string) =>
    body.replaceChildren(el("tr", {}, el("td", { colspan: String(columns.length), class: className }, text)));
  note("Loading…", "muted");
  return {
    node: el("div", { class: "table-scroll" }, table),
    render: (rows) => {
      if (!rows.length) return note(empty, "muted");
      const kept = rememberState(body);
      body.replaceChildren(
        ...rows.map((row) => el("tr", { "data-name": key(row) }, ...columns.map((c) => el("td", c.className ? { class: c.className } : {}, c.cell(row))))),
      );
      kept();
    },
    fail: (e) => note(`Cannot list: ${e.message}`, "error"),
  };
}

/** Where a control sits: its row's name and its data-key, label or text, to find it again after a re-render. */
function address(node: Element): string | null {
  const row = node.closest("tr[data-name]");
  if (!row) return null;
  return `${row.getAttribute("data-name")}\u0000${node.tagName}\u0000${node.getAttribute("data-key") ?? node.getAttribute("aria-label") ?? node.textContent ?? ""}`;
}

/**
 * Notes which control in `body` has the focus and which <details> are open, and returns what puts
 * them back once the rows are rebuilt, so live updates neither move a keyboard user's focus nor
 * fold what they unfolded.
 */
function rememberState(body: HTMLElement): () => void {
  const focused = document.activeElement && body.contains(document.activeElement) ? address(document.activeElement) : null;
  const open = new Set([...body.querySelectorAll("details[open] > summary")].map(address));
  return () => {
    for (const summary of body.querySelectorAll("details > summary")) {
      if (open.has(address(summary))) summary.parentElement!.setAttribute("open", "");
    }
    if (!focused) return;
    const again = [...body.querySelectorAll<HTMLElement>("button, a, summary, input, select")].find((n) => address(n) === focused);
    again?.focus();
  };
}

/** Objects of a watch sorted by namespace and name. */
export function sorted(watch: Watch): Obj[] {
  return [...watch.objects.values()].sort((a, b) =>
    `${a.metadata.namespace ?? ""}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace ?? ""}/${b.metadata.name}`),
  );
}

/** Starts a watch per path, each calling `render` on change and its own `fail` on error; returns a stop for all. */
export function startWatches(specs: { path: string; fail: (e: Error) => void }[], render: () => void): { watches: Watch[]; stop: () => void } {
  const watches = specs.map((s) => new Watch(s.path, render, s.fail).start());
  return { watches, stop: () => watches.forEach((w) => w.stop()) };
}
