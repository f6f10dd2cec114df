// What the Create VM wizard offers to choose from, kept live by watches: instance types (cluster
// and namespaced), the namespace's VMs (templates, and names already taken), DataVolumes and claims
// (boot sources to clone), storage classes and VLAN attachments. A list the server does not have
// (404) is treated as empty, and picked up once it appears.

import { ApiError, collectionPath, Obj, Watch } from "../../api";

export type InstancetypeKind = "VirtualMachineClusterInstancetype" | "VirtualMachineInstancetype";
export type Instancetype = { kind: InstancetypeKind; name: string; cpus: number; memory: string };
export type CloneSource = { name: string; kind: "DataVolume" | "PersistentVolumeClaim"; size: string; phase: string };

const GROUP = "instancetype.kubevirt.io";

export class Catalog {
  private watches: Record<string, Watch>;
  /** Lists whose last load failed, with why (a 404 means the server has no such API yet). */
  readonly failures = new Map<string, string>();

  constructor(namespace: string, private changed: () => void) {
    const watch = (key: string, path: string) =>
      new Watch(path, () => this.loaded(key), (e) => this.failed(key, e)).start();
    this.watches = {
      clusterTypes: watch("clusterTypes", collectionPath(GROUP, "v1beta1", "virtualmachineclusterinstancetypes")),
      namespacedTypes: watch("namespacedTypes", collectionPath(GROUP, "v1beta1", "virtualmachineinstancetypes", namespace)),
      vms: watch("vms", collectionPath("kubevirt.io", "v1", "virtualmachines", namespace)),
      dataVolumes: watch("dataVolumes", collectionPath("cdi.kubevirt.io", "v1beta1", "datavolumes", namespace)),
      claims: watch("claims", collectionPath("", "v1", "persistentvolumeclaims", namespace)),
      storageClasses: watch("storageClasses", collectionPath("storage.k8s.io", "v1", "storageclasses")),
      attachments: watch("attachments", collectionPath("k8s.cni.cncf.io", "v1", "network-attachment-definitions", namespace)),
    };
  }

  stop() {
    for (const w of Object.values(this.watches)) w.stop();
  }

  private loaded(key: string) {
    this.failures.delete(key);
    this.changed();
  }

  private failed(key: string, e: Error) {
    // A kind the server does not serve has no choices; a passing error keeps the last ones (the
    // watch lists again), so nothing the user chose is dropped by a network blip.
    if (e instanceof ApiError && e.code === 404) this.watches[key].objects.clear();
    this.failures.set(key, e.message);
    this.changed();
  }

  private items(key: string): Obj[] {
    return [...this.watches[key].objects.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  }

  /** Instance types, the namespace's own first; sorted by size within each kind. */
  instancetypes(): Instancetype[] {
    const describe = (kind: InstancetypeKind) => (o: Obj): Instancetype => ({
      kind,
      name: o.metadata.name,
      cpus: Number(o.spec?.cpu?.guest ?? 0),
      memory: String(o.spec?.memory?.guest ?? ""),
    });
    return [
      ...this.items("namespacedTypes").map(describe("VirtualMachineInstancetype")),
      ...this.items("clusterTypes").map(describe("VirtualMachineClusterInstancetype")),
    ];
  }

  vms(): Obj[] {
    return this.items("vms");
  }

  vm(name: string): Obj | undefined {
    return this.vms().find((v) => v.metadata.name === name);
  }

  /** DataVolumes, and claims no DataVolume owns, that a new disk can be cloned from. */
  cloneSources(): CloneSource[] {
    const volumes: CloneSource[] = this.items("dataVolumes").map((dv) => ({
      name: dv.metadata.name,
      kind: "DataVolume",
      size: dv.spec?.storage?.resources?.requests?.storage ?? dv.spec?.pvc?.resources?.requests?.storage ?? "",
      phase: dv.status?.phase ?? "",
    }));
    const owned = new Set(volumes.map((v) => v.name));
    const claims: CloneSource[] = this.items("claims")
      .filter((c) => !owned.has(c.metadata.name))
      .map((c) => ({
        name: c.metadata.name,
        kind: "PersistentVolumeClaim",
        size: c.status?.capacity?.storage ?? c.spec?.resources?.requests?.storage ?? "",
        phase: c.status?.phase ?? "",
      }));
    return [...volumes, ...claims];
  }

  /** Storage class names, with the default one (by its annotation) first. */
  storageClasses(): { name: string; isDefault: boolean }[] {
    return this.items("storageClasses")
      .map((c) => ({ name: c.metadata.name, isDefault: c.metadata.annotations?.["storageclass.kubernetes.io/is-default-class"] === "true" }))
      .sort((a, b) => Number(b.isDefault) - Number(a.isDefault));
  }

  attachments(): Obj[] {
    return this.items("attachments");
  }
}
