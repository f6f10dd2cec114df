// The Events tab of the VM detail: the core v1 Events about the VM or its instance, newest first,
// from the namespace's event watch.

import { Obj } from "../../api";
import { age, el } from "../../dom";

const KINDS = ["VirtualMachine", "VirtualMachineInstance"];

function when(e: any): string {
  return e.lastTimestamp ?? e.eventTime ?? e.firstTimestamp ?? e.metadata?.creationTimestamp ?? "";
}

/**
 * The events whose involvedObject is the VM or its instance, newest first; not those of an earlier
 * VM of the same name (another uid, or older than this VM).
 */
export function eventsAbout(events: Iterable<Obj>, vm: Obj): any[] {
  const { name, uid, creationTimestamp = "" } = vm.metadata;
  const ours = (o: any) => o?.name === name && KINDS.includes(o.kind) && (o.kind !== "VirtualMachine" || !o.uid || o.uid === uid);
  return [...events]
    .filter((e: any) => ours(e.involvedObject) && when(e) >= creationTimestamp)
    .sort((a, b) => when(b).localeCompare(when(a)));
}

export function eventsTable(events: any[]): HTMLElement {
  if (!events.length) return el("p", { class: "muted" }, "No events about this VM.");
  const rows = events.map((e) =>
    el(
      "tr",
      { "data-reason": e.reason ?? "" },
      el("td", { title: when(e) }, age(when(e))),
      el("td", { class: e.type === "Warning" ? "warning" : "" }, e.type ?? ""),
      el("td", {}, e.reason ?? ""),
      el("td", {}, e.involvedObject.kind === "VirtualMachine" ? "VM" : "instance"),
      el("td", { class: "message" }, e.message ?? ""),
      el("td", {}, e.count > 1 ? `×${e.count}` : ""),
      el("td", {}, e.source?.component ?? e.reportingComponent ?? ""),
    ),
  );
  const headers = ["Age", "Type", "Reason", "Object", "Message", "Count", "From"];
  return el("table", { class: "events", "aria-label": "Events" }, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, ...rows));
}
