// Storage classes: what volumes can be made of. The StorageClasses (the default one marked, as
// its annotation says), the CDI StorageProfile of each (what a DataVolume's claim gets when it
// leaves access and volume modes out) and the VolumeSnapshotClasses, all kept live by watches.

import { collectionPath, Obj } from "../api";
import { age, el } from "../dom";
import { Column, liveTable, sorted, startWatches } from "../live-table";
import { Context, View } from "../router";

const DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class";
const DEFAULT_SNAPSHOT_CLASS = "snapshot.storage.kubernetes.io/is-default-class";

/** True when `annotation` of `o` marks it the default. */
function isDefault(o: Obj, annotation: string): boolean {
  return o.metadata.annotations?.[annotation] === "true";
}

/** The name, with a "default" badge when the annotation says so. */
function nameCell(o: Obj, annotation: string): Node {
  const cell = el("span", {}, el("strong", {}, o.metadata.name));
  if (isDefault(o, annotation)) cell.append(el("span", { class: "badge accent", title: `Annotation ${annotation}: "true"` }, "default"));
  return cell;
}

/** key=value lines of a map (parameters, labels), or a dash. */
export function keyValues(map: Record<string, unknown> | undefined): Node | string {
  const entries = Object.entries(map ?? {});
  if (!entries.length) return "—";
  return el("ul", { class: "kv" }, ...entries.map(([k, v]) => el("li", {}, `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)));
}

const yesNo = (value: unknown) => (value === true ? "yes" : "no");

const CLASS_COLUMNS: Column<Obj>[] = [
  { header: "Name", cell: (o) => nameCell(o, DEFAULT_CLASS) },
  { header: "Provisioner", cell: (o) => (o as any).provisioner ?? "" },
  { header: "Parameters", cell: (o) => keyValues((o as any).parameters) },
  { header: "Volume binding", cell: (o) => (o as any).volumeBindingMode ?? "Immediate" },
  { header: "Expansion", cell: (o) => yesNo((o as any).allowVolumeExpansion) },
  { header: "Reclaim policy", cell: (o) => (o as any).reclaimPolicy ?? "Delete" },
  { header: "Age", cell: (o) => age(o.metadata.creationTimestamp ?? "") },
];

/** "ReadWriteOnce (Filesystem), ReadWriteMany (Block)" from a profile's claim property sets. */
function claimProperties(o: Obj): string {
  const sets: any[] = o.spec?.claimPropertySets?.length ? o.spec.claimPropertySets : o.status?.claimPropertySets ?? [];
  return sets.map((s) => `${(s.accessModes ?? []).join(", ")} (${s.volumeMode ?? "Filesystem"})`).join("; ") || "—";
}

const PROFILE_COLUMNS: Column<Obj>[] = [
  { header: "Storage class", cell: (o) => o.status?.storageClass ?? o.metadata.name },
  { header: "Provisioner", cell: (o) => o.status?.provisioner ?? "" },
  { header: "Access and volume modes", cell: claimProperties },
  { header: "Clone strategy", cell: (o) => o.spec?.cloneStrategy ?? o.status?.cloneStrategy ?? "" },
];

const SNAPSHOT_CLASS_COLUMNS: Column<Obj>[] = [
  { header: "Name", cell: (o) => nameCell(o, DEFAULT_SNAPSHOT_CLASS) },
  { header: "Driver", cell: (o) => (o as any).driver ?? "" },
  { header: "Deletion policy", cell: (o) => (o as any).deletionPolicy ?? "" },
  { header: "Parameters", cell: (o) => keyValues((o as any).parameters) },
  { header: "Age", cell: (o) => age(o.metadata.creationTimestamp ?? "") },
];

function section(title: string, ...children: Node[]): HTMLElement {
  return el("section", { class: "view-section", "aria-label": title }, el("h3", {}, title), ...children);
}

export function storageView(_ctx: Context): View {
  const classes = liveTable("Storage classes", CLASS_COLUMNS, (o) => o.metadata.name, "No storage classes.");
  const profiles = liveTable("Storage profiles", PROFILE_COLUMNS, (o) => o.metadata.name, "No storage profiles.");
  const snapshotClasses = liveTable("Volume snapshot classes", SNAPSHOT_CLASS_COLUMNS, (o) => o.metadata.name, "No volume snapshot classes.");
  const render = () => {
    const [c, p, s] = live.watches;
    classes.render(sorted(c));
    profiles.render(sorted(p));
    snapshotClasses.render(sorted(s));
  };
  const live = startWatches(
    [
      { path: collectionPath("storage.k8s.io", "v1", "storageclasses"), fail: classes.fail },
      { path: collectionPath("cdi.kubevirt.io", "v1beta1", "storageprofiles"), fail: profiles.fail },
      { path: collectionPath("snapshot.storage.k8s.io", "v1", "volumesnapshotclasses"), fail: snapshotClasses.fail },
    ],
    render,
  );
  const node = el(
    "section",
    { class: "storage-view" },
    el("h2", {}, "Storage classes"),
    section("Storage classes", el("p", { class: "muted" }, "A claim or DataVolume that names no class gets the one marked default."), classes.node),
    section("Storage profiles", el("p", { class: "muted" }, "What a DataVolume's claim gets from its class when it leaves access and volume modes out."), profiles.node),
    section("Volume snapshot classes", snapshotClasses.node),
  );
  return { node, stop: live.stop };
}
