// The actions on a VirtualMachine that the VM list and the VM detail share: the lifecycle verbs
// (start, stop, restart, pause, unpause) on the subresources API, and migrate, snapshot, restore,
// clone and delete. Each of the latter creates the KubeVirt object that does the work; its
// progress is that object's status, summarised here by `progressOf` for the views that watch it.

import { call, collectionPath, objectPath, Obj } from "./api";
import { confirmDialog, formDialog } from "./dialog";
import { el, toast } from "./dom";
import { formField } from "./form-field";

export type Lifecycle = { verb: string; label: string; allowed: (status: string) => boolean };

const STOPPED = ["Stopped", "Halted"];

export const LIFECYCLE: Lifecycle[] = [
  { verb: "start", label: "Start", allowed: (s) => STOPPED.includes(s) || s.startsWith("Error") || s === "CrashLoopBackOff" },
  { verb: "stop", label: "Stop", allowed: (s) => ![...STOPPED, "Stopping"].includes(s) },
  { verb: "restart", label: "Restart", allowed: (s) => s === "Running" },
  { verb: "pause", label: "Pause", allowed: (s) => s === "Running" },
  { verb: "unpause", label: "Unpause", allowed: (s) => s === "Paused" },
];

export function isStopped(status: string): boolean {
  return STOPPED.includes(status);
}

/** A button for `action` on the VM `name` (labelled "Start NAME"), disabled when `status` forbids it; no listener. */
export function lifecycleButtonShape(name: string, status: string, action: Lifecycle): HTMLButtonElement {
  const button = el("button", { type: "button", "aria-label": `${action.label} ${name}`, "data-verb": action.verb }, action.label) as HTMLButtonElement;
  button.disabled = !action.allowed(status);
  return button;
}

/** Runs `action` on the VM `name` for `button` (disabled while the request runs), saying how it went. */
export async function runLifecycle(namespace: string, name: string, action: Lifecycle, button: HTMLButtonElement) {
  button.disabled = true;
  try {
    await call("PUT", `${objectPath("subresources.kubevirt.io", "v1", "virtualmachines", namespace, name)}/${action.verb}`, {});
    toast(`${action.label}: ${name}`);
  } catch (e) {
    toast(`${action.label} ${name} failed: ${(e as Error).message}`, true);
    button.disabled = false;
  }
}

/** A button running `action` on the VM `name` when clicked (see lifecycleButtonShape). */
export function lifecycleButton(namespace: string, name: string, status: string, action: Lifecycle): HTMLButtonElement {
  const button = lifecycleButtonShape(name, status, action);
  button.addEventListener("click", () => void runLifecycle(namespace, name, action, button));
  return button;
}

/** Where the objects each action creates live. */
export const PATHS = {
  migrations: (ns: string) => collectionPath("kubevirt.io", "v1", "virtualmachineinstancemigrations", ns),
  snapshots: (ns: string) => collectionPath("snapshot.kubevirt.io", "v1beta1", "virtualmachinesnapshots", ns),
  restores: (ns: string) => collectionPath("snapshot.kubevirt.io", "v1beta1", "virtualmachinerestores", ns),
  clones: (ns: string) => collectionPath("clone.kubevirt.io", "v1beta1", "virtualmachineclones", ns),
};

const vmRef = (name: string) => ({ apiGroup: "kubevirt.io", kind: "VirtualMachine", name });

/** Called with what an action created, so a view can point at its progress. */
export type Created = (o: Obj) => void;

/** `control` as `id` under its label, its hint tied to it (the dialogs' shared form field). */
function field(id: string, label: string, control: HTMLElement, hint = ""): HTMLElement {
  control.id = id;
  return formField(label, control, hint);
}

function textInput(value: string): HTMLInputElement {
  return el("input", { type: "text", value, required: "", pattern: "[a-z0-9]([-a-z0-9.]*[a-z0-9])?", spellcheck: "false" }) as HTMLInputElement;
}

/** A name for a new object: `base-YYYYMMDD-hhmmss` (valid as a Kubernetes name). */
function stampedName(base: string): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  return `${base}-${stamp}`;
}

/** Asks for a target node (any, or one of the others) and creates a migration of the VM's instance. */
export async function migrateDialog(namespace: string, name: string, currentNode: string, created: Created = () => {}) {
  let nodes: Obj[];
  try {
    nodes = (await call("GET", "/api/v1/nodes")).items ?? [];
  } catch (e) {
    toast(`Listing nodes failed: ${(e as Error).message}`, true);
    return;
  }
  const select = el("select", {}, el("option", { value: "" }, "Any node (the scheduler chooses)")) as HTMLSelectElement;
  for (const node of nodes.filter((n) => n.metadata.name !== currentNode)) {
    const cordoned = node.spec?.unschedulable ? " (cordoned)" : "";
    select.append(el("option", { value: node.metadata.name }, node.metadata.name + cordoned));
  }
  const others = select.options.length - 1;
  const hint = `It runs on ${currentNode || "no node"} now; ${others ? `${others} other node${others > 1 ? "s" : ""}` : "there is no other node"}.`;
  formDialog(`Migrate ${name}`, [field("migrate-target", "Target node", select, hint)], "Migrate", async () => {
    const spec: any = { vmiName: name };
    if (select.value) spec.addedNodeSelector = { "kubernetes.io/hostname": select.value };
    const body = { apiVersion: "kubevirt.io/v1", kind: "VirtualMachineInstanceMigration", metadata: { generateName: `${name}-migration-` }, spec };
    const migration = await call("POST", PATHS.migrations(namespace), body);
    toast(`Migration ${migration.metadata.name} of ${name} created`);
    created(migration);
  });
}

/** Asks for a snapshot's name and creates a VirtualMachineSnapshot of the VM. */
export function snapshotDialog(namespace: string, name: string, created: Created = () => {}) {
  const input = textInput(stampedName(name));
  formDialog(`Snapshot ${name}`, [field("snapshot-name", "Snapshot name", input, "Disks of a running VM are taken together while it runs.")], "Take snapshot", async () => {
    const body = { apiVersion: "snapshot.kubevirt.io/v1beta1", kind: "VirtualMachineSnapshot", metadata: { name: input.value.trim() }, spec: { source: vmRef(name) } };
    const snapshot = await call("POST", PATHS.snapshots(namespace), body);
    toast(`Snapshot ${snapshot.metadata.name} of ${name} started`);
    created(snapshot);
  });
}

/** Asks which snapshot to restore the VM to (it must be stopped) and creates a VirtualMachineRestore. */
export function restoreDialog(namespace: string, vm: Obj, snapshots: Obj[], chosen = "", created: Created = () => {}) {
  const name = vm.metadata.name;
  const status = vm.status?.printableStatus ?? "Unknown";
  const ready = snapshots.filter((s) => s.status?.readyToUse);
  const select = el("select", {}) as HTMLSelectElement;
  for (const s of ready) {
    const option = el("option", { value: s.metadata.name }, `${s.metadata.name} (${s.status?.creationTime ?? s.metadata.creationTimestamp ?? ""})`) as HTMLOptionElement;
    option.selected = s.metadata.name === chosen;
    select.append(option);
  }
  const notes: Node[] = [];
  if (!isStopped(status)) notes.push(el("p", { class: "error" }, `${name} is ${status}: stop it before restoring.`));
  if (!ready.length) notes.push(el("p", { class: "error" }, `${name} has no snapshot ready to restore.`));
  const body = [field("restore-snapshot", "Snapshot", select, "The VM's spec and disks go back to the snapshot; changes since are lost."), ...notes];
  formDialog(`Restore ${name}`, body, "Restore", async () => {
    const now = (await call("GET", objectPath("kubevirt.io", "v1", "virtualmachines", namespace, name))).status?.printableStatus ?? "Unknown";
    if (!isStopped(now)) throw new Error(`${name} is ${now}: stop it before restoring.`);
    if (!select.value) throw new Error("Choose a snapshot to restore.");
    const restore = await call("POST", PATHS.restores(namespace), {
      apiVersion: "snapshot.kubevirt.io/v1beta1",
      kind: "VirtualMachineRestore",
      metadata: { generateName: `${name}-restore-` },
      spec: { target: vmRef(name), virtualMachineSnapshotName: select.value },
    });
    toast(`Restoring ${name} to ${select.value}`);
    created(restore);
  });
}

/** Asks for the new VM's name and creates a VirtualMachineClone of the VM. */
export function cloneDialog(namespace: string, name: string, created: Created = () => {}) {
  const input = textInput(`${name}-clone`);
  formDialog(`Clone ${name}`, [field("clone-name", "New VM name", input, "The copy gets new MAC addresses and serials; it starts stopped.")], "Clone", async () => {
    const clone = await call("POST", PATHS.clones(namespace), {
      apiVersion: "clone.kubevirt.io/v1beta1",
      kind: "VirtualMachineClone",
      metadata: { generateName: `${name}-clone-` },
      spec: { source: vmRef(name), target: vmRef(input.value.trim()) },
    });
    toast(`Cloning ${name} to ${input.value.trim()}`);
    created(clone);
  });
}

/** Asks for confirmation, then deletes the VM; resolves true when it was deleted. */
export async function deleteVm(namespace: string, name: string): Promise<boolean> {
  const sure = await confirmDialog(`Delete ${name}?`, `The VirtualMachine ${name} and its instance are deleted. This cannot be undone.`, `Delete ${name}`);
  if (!sure) return false;
  try {
    await call("DELETE", objectPath("kubevirt.io", "v1", "virtualmachines", namespace, name));
    toast(`Deleted ${name}`);
    return true;
  } catch (e) {
    toast(`Deleting ${name} failed: ${(e as Error).message}`, true);
    return false;
  }
}

export type Progress = { phase: string; message: string; finished: boolean; failed: boolean };

const DONE = ["Succeeded", "Failed"];

/** The progress of a migration, snapshot, restore or clone, as its status tells it. */
export function progressOf(o: Obj): Progress {
  const s = o.status ?? {};
  const phase: string = s.phase ?? (s.complete === true ? "Succeeded" : s.complete === false ? "InProgress" : "Pending");
  const conditionMessage = (s.conditions ?? []).map((c: any) => c.message).find((m: string) => m) ?? "";
  const message: string = s.error?.message || s.migrationState?.failureReason || conditionMessage;
  const waitingForReady = o.kind === "VirtualMachineSnapshot" && phase === "Succeeded" && !s.readyToUse;
  return { phase, message, finished: DONE.includes(phase) && !waitingForReady, failed: phase === "Failed" };
}
