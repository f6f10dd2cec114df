// The operations panel of the VM detail: the migrations, snapshots, restores and clones of this
// VM with their live phase and message (a failure's reason readable in full), newest first; the
// ones still running first of all. A running migration can be cancelled (deleting it aborts it).

import { call, Obj } from "../../api";
import { age, el, toast } from "../../dom";
import { progressOf } from "../../vmactions";

const SHOWN = 6;

const LABELS: Record<string, string> = {
  VirtualMachineInstanceMigration: "Migration",
  VirtualMachineSnapshot: "Snapshot",
  VirtualMachineRestore: "Restore",
  VirtualMachineClone: "Clone",
};

/** Whether `o` (any of the four kinds) acts on the VM `name`. */
export function concerns(o: Obj, name: string): boolean {
  const s = o.spec ?? {};
  return s.vmiName === name || s.source?.name === name || s.target?.name === name;
}

function cancelButton(o: Obj, path: string): HTMLElement {
  const button = el("button", { type: "button", "aria-label": `Cancel ${o.metadata.name}` }, "Cancel") as HTMLButtonElement;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await call("DELETE", path);
      toast(`Cancelling ${o.metadata.name}`);
    } catch (e) {
      toast(`Cancelling ${o.metadata.name} failed: ${(e as Error).message}`, true);
      button.disabled = false;
    }
  });
  return button;
}

function describe(o: Obj, kind: string): string {
  const s = o.spec ?? {};
  if (kind === "VirtualMachineInstanceMigration") {
    const to = s.addedNodeSelector?.["kubernetes.io/hostname"];
    const state = o.status?.migrationState;
    return state?.targetNode ? `${state.sourceNode} → ${state.targetNode}` : to ? `to ${to}` : "to any node";
  }
  if (kind === "VirtualMachineRestore") return `from ${s.virtualMachineSnapshotName}`;
  if (kind === "VirtualMachineClone") return `to ${o.status?.targetName ?? s.target?.name ?? ""}`;
  return "";
}

/** `ops`: [kind, object, its path] for every operation on this VM. */
export function operationsList(ops: [string, Obj, string][]): HTMLElement {
  const sorted = ops
    .map(([kind, o, path]) => ({ kind, o, path, progress: progressOf({ ...o, kind }) }))
    .sort((a, b) => Number(a.progress.finished) - Number(b.progress.finished) || (b.o.metadata.creationTimestamp ?? "").localeCompare(a.o.metadata.creationTimestamp ?? ""))
    .slice(0, SHOWN);
  const list = el("ul", { class: "operations", "aria-label": "Operations on this VM" });
  for (const { kind, o, path, progress } of sorted) {
    const tone = progress.failed ? "failed" : progress.finished ? "done" : "running";
    const item = el(
      "li",
      { class: tone, "data-operation": o.metadata.name, "data-kind": LABELS[kind] },
      el("span", { class: "op-kind" }, LABELS[kind]),
      el("span", { class: "op-name" }, o.metadata.name),
      el("span", { class: "muted" }, describe(o, kind)),
      el("span", { class: `op-phase ${tone}` }, progress.phase),
      el("span", { class: "op-message" }, progress.message),
      el("span", { class: "muted", title: o.metadata.creationTimestamp ?? "" }, `${age(o.metadata.creationTimestamp ?? "")} ago`),
    );
    if (kind === "VirtualMachineInstanceMigration" && !progress.finished) item.append(cancelButton(o, path));
    list.append(item);
  }
  return list;
}
