// The Snapshots tab of the VM detail: the VirtualMachineSnapshots of this VM with their phase and
// readiness, newest first, each with a Restore button.

import { Obj } from "../../api";
import { age, el } from "../../dom";
import { progressOf } from "../../vmactions";

/** The snapshots whose source is the VM `name`, newest first. */
export function snapshotsOf(snapshots: Iterable<Obj>, name: string): Obj[] {
  return [...snapshots]
    .filter((s) => s.spec?.source?.kind === "VirtualMachine" && s.spec?.source?.name === name)
    .sort((a, b) => (b.metadata.creationTimestamp ?? "").localeCompare(a.metadata.creationTimestamp ?? ""));
}

export function snapshotsTable(snapshots: Obj[], restore: (snapshot: Obj) => void): HTMLElement {
  if (!snapshots.length) return el("p", { class: "muted" }, "No snapshots of this VM yet: take one with Snapshot above.");
  const rows = snapshots.map((s) => {
    const progress = progressOf(s);
    const button = el("button", { type: "button", "aria-label": `Restore to ${s.metadata.name}` }, "Restore") as HTMLButtonElement;
    button.disabled = !s.status?.readyToUse;
    button.addEventListener("click", () => restore(s));
    const created = s.status?.creationTime ?? s.metadata.creationTimestamp ?? "";
    return el(
      "tr",
      { "data-snapshot": s.metadata.name },
      el("td", {}, s.metadata.name),
      el("td", { class: `phase ${progress.phase}` }, progress.phase),
      el("td", { class: "ready" }, s.status?.readyToUse ? "yes" : "no"),
      el("td", { title: created }, created ? `${age(created)} ago` : ""),
      el("td", { class: "message" }, progress.failed || !progress.finished ? progress.message : (s.status?.indications ?? []).join(", ")),
      el("td", {}, button),
    );
  });
  const headers = ["Name", "Phase", "Ready to use", "Created", "Details", "Actions"];
  return el("table", { class: "snapshots", "aria-label": "Snapshots" }, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, ...rows));
}
