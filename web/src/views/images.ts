// Images and volumes: the namespace's DataVolumes (phase, source, size, a live progress bar from
// status.progress, why one failed) and claims (size, class, access modes, the VM using each);
// creating a DataVolume that imports from a URL, uploading a local image file from the browser
// (with progress, cancel and resume: src/upload.ts), and deleting, all kept live by watches.

import { call, collectionPath, objectPath, Obj } from "../api";
import { confirmDialog, formDialog } from "../dialog";
import { age, el, toast } from "../dom";
import { formField } from "../form-field";
import { Column, liveTable, sorted, startWatches } from "../live-table";
import { formatBytes, parseQuantity } from "../quantity";
import { Context, link, View } from "../router";
import { dismissUpload, onUploadsChanged, startUpload, Upload, uploads } from "../upload";

const DV = ["cdi.kubevirt.io", "v1beta1", "datavolumes"] as const;
const PVC = ["", "v1", "persistentvolumeclaims"] as const;
const IN_PROGRESS = ["ImportInProgress", "CloneInProgress", "UploadReady", "ImportScheduled", "CloneScheduled", "UploadScheduled"];
const DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class";

/** claim name -> names of the VMs whose volumes use it (directly or through a DataVolume). */
function claimUsers(vms: Obj[]): Map<string, string[]> {
  const users = new Map<string, string[]>();
  for (const vm of vms) {
    for (const v of vm.spec?.template?.spec?.volumes ?? []) {
      const claim = v.persistentVolumeClaim?.claimName ?? v.dataVolume?.name;
      if (claim) users.set(claim, [...(users.get(claim) ?? []), vm.metadata.name]);
    }
  }
  return users;
}

/** The DataVolume's source kind, with its URL when it imports one. */
function sourceOf(dv: Obj): string {
  const source = dv.spec?.source ?? {};
  const kind = Object.keys(source)[0];
  if (!kind) return dv.spec?.sourceRef ? `${dv.spec.sourceRef.kind ?? "ref"} ${dv.spec.sourceRef.name ?? ""}` : "—";
  if (kind === "http") return `http ${source.http?.url ?? ""}`;
  if (kind === "pvc") return `clone of ${source.pvc?.namespace ?? dv.metadata.namespace}/${source.pvc?.name ?? ""}`;
  return kind;
}

/** A size as people read it: "10Gi" stays, a bare byte count becomes "1.0 GiB". */
function readableSize(quantity: string | undefined): string {
  if (!quantity) return "—";
  return /^\d+$/.test(quantity) ? formatBytes(parseQuantity(quantity)) : quantity;
}

function requestedSize(dv: Obj): string {
  return readableSize(dv.spec?.storage?.resources?.requests?.storage ?? dv.spec?.pvc?.resources?.requests?.storage);
}

/** A labelled progress bar; `percent` 0-100, `text` beside it. */
function progressBar(label: string, percent: number, text: string): HTMLElement {
  const bar = el("progress", { max: "100", "aria-label": label }) as HTMLProgressElement;
  bar.value = Math.max(0, Math.min(100, percent));
  return el("span", { class: "progress" }, bar, el("span", { class: "progress-text" }, text));
}

function progressCell(dv: Obj): Node | string {
  const phase = dv.status?.phase ?? "";
  const progress: string = dv.status?.progress ?? "";
  if (phase === "Succeeded") return "100%";
  if (!IN_PROGRESS.includes(phase) || !progress) return progress || "—";
  return progressBar(`Progress of ${dv.metadata.name}`, parseFloat(progress) || 0, progress);
}

/** The messages of the conditions that are not met, shown when the DataVolume is in trouble. */
function trouble(dv: Obj): string {
  const failing = dv.status?.phase === "Failed" || (dv.status?.restartCount ?? 0) > 0;
  if (!failing) return "";
  const messages = (dv.status?.conditions ?? []).filter((c: any) => c.status !== "True" && c.message).map((c: any) => c.message);
  return [...new Set(messages)].join("; ");
}

function phaseCell(dv: Obj): Node {
  const phase = dv.status?.phase ?? "Pending";
  const tone = phase === "Succeeded" ? "Running" : phase === "Failed" ? "Error" : IN_PROGRESS.includes(phase) ? "Starting" : "Stopped";
  const cell = el("div", {}, el("span", { class: `status ${tone}` }, phase));
  const why = trouble(dv);
  if (why) cell.append(el("div", { class: "error failure" }, why));
  return cell;
}

function usersCell(ctx: Context, names: string[] | undefined): Node | string {
  if (!names?.length) return "—";
  const links = names.flatMap((n, i) => [...(i ? [", "] : []), link(ctx, `vms/${encodeURIComponent(n)}`, n)]);
  return el("span", {}, ...links);
}

async function deleteObject(what: string, path: string, name: string, consequence: string) {
  if (!(await confirmDialog(`Delete ${what} ${name}?`, consequence, "Delete"))) return;
  toast(`Deleting ${what} ${name}…`);
  try {
    await call("DELETE", path);
    toast(`Deleted ${what} ${name}`);
  } catch (e) {
    toast(`Deleting ${what} ${name} failed: ${(e as Error).message}`, true);
  }
}

function button(label: string, ariaLabel: string, onClick: () => void, className = ""): HTMLButtonElement {
  const b = el("button", { type: "button", "aria-label": ariaLabel, ...(className ? { class: className } : {}) }, label) as HTMLButtonElement;
  b.addEventListener("click", onClick);
  return b;
}

/** A file chooser for resuming (or starting) the upload of an UploadReady DataVolume from its row. */
function chooseFileAndUpload(namespace: string, name: string) {
  const input = el("input", { type: "file", "aria-label": `Image file for ${name}` }) as HTMLInputElement;
  input.addEventListener("change", () => {
    const file = input.files?.[0];
    if (file) startUpload(namespace, name, file);
  });
  input.click();
}

function dataVolumeColumns(ctx: Context, users: () => Map<string, string[]>): Column<Obj>[] {
  const ns = ctx.namespace;
  return [
    { header: "Name", cell: (o) => el("strong", {}, o.metadata.name) },
    { header: "Phase", cell: phaseCell, className: "phase-cell" },
    { header: "Source", cell: (o) => el("span", { class: "source", title: sourceOf(o) }, sourceOf(o)) },
    { header: "Size", cell: requestedSize, className: "num" },
    { header: "Class", cell: (o) => o.spec?.storage?.storageClassName ?? o.spec?.pvc?.storageClassName ?? "default" },
    { header: "Progress", cell: progressCell },
    { header: "Restarts", cell: (o) => String(o.status?.restartCount ?? 0), className: "num" },
    { header: "Used by", cell: (o) => usersCell(ctx, users().get(o.status?.claimName ?? o.metadata.name)) },
    { header: "Age", cell: (o) => age(o.metadata.creationTimestamp ?? "") },
    {
      header: "Actions",
      cell: (o) => {
        const name = o.metadata.name;
        const actions = el("div", { class: "actions" });
        const waitingForFile = o.spec?.source?.upload && o.status?.phase === "UploadReady" && !uploads.has(`${ns}/${name}`);
        if (waitingForFile) actions.append(button("Upload…", `Upload a file into ${name}`, () => chooseFileAndUpload(ns, name)));
        actions.append(
          button("Delete", `Delete ${name}`, () => void deleteObject("DataVolume", objectPath(...DV, ns, name), name, "Its volume and the data on it are deleted too."), "danger"),
        );
        return actions;
      },
    },
  ];
}

function claimColumns(ctx: Context, users: () => Map<string, string[]>): Column<Obj>[] {
  return [
    { header: "Name", cell: (o) => el("strong", {}, o.metadata.name) },
    { header: "Phase", cell: (o) => o.status?.phase ?? "Pending" },
    { header: "Size", cell: (o) => readableSize(o.status?.capacity?.storage ?? o.spec?.resources?.requests?.storage), className: "num" },
    { header: "Class", cell: (o) => o.spec?.storageClassName ?? "default" },
    { header: "Access modes", cell: (o) => (o.spec?.accessModes ?? []).join(", ") || "—" },
    { header: "Volume mode", cell: (o) => o.spec?.volumeMode ?? "Filesystem" },
    { header: "Used by", cell: (o) => usersCell(ctx, users().get(o.metadata.name)) },
    { header: "Age", cell: (o) => age(o.metadata.creationTimestamp ?? "") },
  ];
}

/** A storage class chooser: the default one first, named as such. */
function classSelect(id: string, classes: Obj[]): HTMLSelectElement {
  const select = el("select", { id }) as HTMLSelectElement;
  select.append(el("option", { value: "" }, "The default class"));
  for (const c of classes) {
    const isDefault = c.metadata.annotations?.[DEFAULT_CLASS] === "true";
    select.append(el("option", { value: c.metadata.name }, `${c.metadata.name}${isDefault ? " (default)" : ""}`));
  }
  return select;
}

/** The manifest of a DataVolume in `namespace` with `source`, `size` and optional class. */
function dataVolume(namespace: string, name: string, source: Record<string, unknown>, size: string, storageClass: string): Obj {
  const storage: Record<string, unknown> = { resources: { requests: { storage: size } } };
  if (storageClass) storage.storageClassName = storageClass;
  return { apiVersion: "cdi.kubevirt.io/v1beta1", kind: "DataVolume", metadata: { name, namespace }, spec: { source, storage } } as Obj;
}

function textInput(id: string, attrs: Record<string, string> = {}): HTMLInputElement {
  return el("input", { id, autocomplete: "off", required: "", ...attrs }) as HTMLInputElement;
}

const NAME_HINT = "Lower-case letters, digits and dashes.";
const SIZE_HINT = "The volume's size, like 10Gi: at least the image's virtual size.";

function importDialog(namespace: string, classes: Obj[]) {
  const name = textInput("dv-name");
  const url = textInput("dv-url", { type: "url", placeholder: "https://example.com/disk.qcow2" });
  const size = textInput("dv-size", { value: "10Gi" });
  const storageClass = classSelect("dv-class", classes);
  formDialog(
    "Import an image from a URL",
    [formField("Name", name, NAME_HINT), formField("URL", url, "An http or https URL of a qcow2, raw or ISO image (xz or gz compressed too)."), formField("Size", size, SIZE_HINT), formField("Storage class", storageClass)],
    "Import",
    async () => {
      await call("POST", collectionPath(...DV, namespace), dataVolume(namespace, name.value.trim(), { http: { url: url.value.trim() } }, size.value.trim(), storageClass.value));
      toast(`Importing ${url.value.trim()} into ${name.value.trim()}`);
    },
  );
  name.focus();
}

/** A DataVolume name from a file name: "Debian 12.qcow2" -> "debian-12". */
function nameFromFile(file: string): string {
  return file.replace(/\.(qcow2|img|raw|iso|vmdk|vhdx?)(\.(gz|xz))?$/i, "").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 63);
}

function uploadDialog(namespace: string, classes: Obj[]) {
  const file = el("input", { id: "upload-file", type: "file", required: "", accept: ".qcow2,.img,.raw,.iso,.gz,.xz,application/octet-stream" }) as HTMLInputElement;
  const name = textInput("upload-name");
  const size = textInput("upload-size", { value: "10Gi" });
  const storageClass = classSelect("upload-class", classes);
  file.addEventListener("change", () => {
    const chosen = file.files?.[0];
    if (chosen && !name.value) name.value = nameFromFile(chosen.name);
  });
  formDialog(
    "Upload an image",
    [formField("Image file", file, "A qcow2, raw or ISO image from this computer."), formField("Name", name, NAME_HINT), formField("Size", size, SIZE_HINT), formField("Storage class", storageClass)],
    "Upload",
    async () => {
      const chosen = file.files?.[0];
      if (!chosen) throw new Error("Choose a file to upload.");
      const dvName = name.value.trim();
      await call("POST", collectionPath(...DV, namespace), dataVolume(namespace, dvName, { upload: {} }, size.value.trim(), storageClass.value));
      startUpload(namespace, dvName, chosen);
      toast(`Uploading ${chosen.name} into ${dvName}`);
    },
  );
  file.focus();
}

/** One upload's line: bar, percent and speed, and what can be done with it now. */
function uploadItem(upload: Upload): { node: HTMLElement; update: () => void } {
  const bar = el("progress", { max: "100", "aria-label": `Upload of ${upload.name}` }) as HTMLProgressElement;
  const figures = el("span", { class: "progress-text" });
  const state = el("span", { class: "upload-state" });
  const message = el("span", { class: "muted upload-message" });
  const cancel = button("Cancel", `Cancel the upload of ${upload.name}`, () => upload.cancel());
  const resume = button("Resume", `Resume the upload of ${upload.name}`, () => void upload.start());
  const dismiss = button("Dismiss", `Dismiss the upload of ${upload.name}`, () => dismissUpload(upload.key));
  const node = el(
    "li",
    { class: "upload", "data-name": upload.name },
    el("div", {}, el("strong", {}, upload.name), el("span", { class: "muted" }, ` ${upload.file.name}, ${formatBytes(upload.file.size)}`)),
    el("div", { class: "progress" }, bar, figures, state),
    message,
    el("div", { class: "actions" }, cancel, resume, dismiss),
  );
  const update = () => {
    bar.value = upload.percent;
    const mibs = `${(upload.rate / 2 ** 20).toFixed(1)} MiB/s`;
    const speed = !upload.rate ? "" : upload.state === "uploading" ? ` · ${mibs}` : ` · ${mibs} on average`;
    figures.textContent = `${upload.percent.toFixed(1)}% · ${formatBytes(upload.sent)} of ${formatBytes(upload.file.size)}${speed}`;
    state.textContent = upload.state;
    state.className = `upload-state ${upload.state}`;
    message.textContent = upload.message;
    message.className = upload.state === "failed" ? "error upload-message" : "muted upload-message";
    cancel.hidden = !["waiting", "uploading"].includes(upload.state);
    resume.hidden = !["failed", "cancelled"].includes(upload.state);
    dismiss.hidden = ["waiting", "uploading"].includes(upload.state);
  };
  update();
  return { node, update };
}

/** The uploads of this namespace started in this page, each updated in place as it moves. */
function uploadsPanel(namespace: string): { node: HTMLElement; settle: (dvs: Obj[]) => void; stop: () => void } {
  const list = el("ul", { class: "uploads", "aria-label": "Uploads from this browser" });
  const node = el("section", { class: "view-section", "aria-label": "Uploads" }, el("h3", {}, "Uploads from this browser"), list);
  let unsubscribers: (() => void)[] = [];
  const rebuild = () => {
    unsubscribers.forEach((u) => u());
    const mine = [...uploads.values()].filter((u) => u.namespace === namespace);
    node.hidden = !mine.length;
    unsubscribers = mine.map((upload) => {
      const item = uploadItem(upload);
      list.append(item.node);
      return upload.subscribe(item.update);
    });
  };
  const reset = () => {
    list.replaceChildren();
    rebuild();
  };
  const stopRegistry = onUploadsChanged(reset);
  reset();
  return {
    node,
    settle: (dvs) => dvs.forEach((dv) => uploads.get(`${namespace}/${dv.metadata.name}`)?.settle(dv.status?.phase ?? "", trouble(dv) || "")),
    stop: () => {
      stopRegistry();
      unsubscribers.forEach((u) => u());
    },
  };
}

export function imagesView(ctx: Context): View {
  const ns = ctx.namespace;
  let users = new Map<string, string[]>();
  const dataVolumes = liveTable("DataVolumes", dataVolumeColumns(ctx, () => users), (o) => o.metadata.name, `No DataVolumes in ${ns}.`);
  const claims = liveTable("Volume claims", claimColumns(ctx, () => users), (o) => o.metadata.name, `No volume claims in ${ns}.`);
  const uploadsView = uploadsPanel(ns);
  const quiet = (e: Error) => toast(`Live updates interrupted: ${e.message}`, true);
  const render = () => {
    const [dvs, pvcs, vms] = live.watches;
    users = claimUsers(sorted(vms));
    const dvList = sorted(dvs);
    dataVolumes.render(dvList);
    claims.render(sorted(pvcs));
    uploadsView.settle(dvList);
  };
  const live = startWatches(
    [
      { path: collectionPath(...DV, ns), fail: dataVolumes.fail },
      { path: collectionPath(...PVC, ns), fail: claims.fail },
      { path: collectionPath("kubevirt.io", "v1", "virtualmachines", ns), fail: quiet },
      { path: collectionPath("storage.k8s.io", "v1", "storageclasses"), fail: quiet },
    ],
    render,
  );
  // The row actions ("Upload…") depend on which uploads run here.
  const stopUploads = onUploadsChanged(render);
  const classes = () => sorted(live.watches[3]);
  const importButton = button("Import from URL", "Import from URL", () => importDialog(ns, classes()));
  const uploadButton = button("Upload image", "Upload image", () => uploadDialog(ns, classes()), "primary");
  const node = el(
    "section",
    { class: "images-view" },
    el("div", { class: "toolbar" }, el("h2", {}, "Images and volumes"), uploadButton, importButton),
    uploadsView.node,
    el("section", { class: "view-section", "aria-label": "DataVolumes" }, el("h3", {}, "DataVolumes"), dataVolumes.node),
    el("section", { class: "view-section", "aria-label": "Volume claims" }, el("h3", {}, "Volume claims"), claims.node),
  );
  return {
    node,
    stop: () => {
      live.stop();
      stopUploads();
      uploadsView.stop();
    },
  };
}
