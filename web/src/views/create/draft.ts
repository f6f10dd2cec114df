// The Create VM wizard's answers (the draft) and the VirtualMachine they make. The review step shows
// `vmManifest(...)` as YAML and Create sends that same object, so what is shown is what is applied.

import { stringify } from "yaml";
import { Obj } from "../../api";
import { InstancetypeKind } from "./catalog";

export type SizeSource = "instancetype" | "custom" | "template";
export type BootSource = "template" | "clone" | "url" | "blank";
export type CloudInitMode = "none" | "user" | "raw";
export type ExtraDisk = { name: string; size: string; storageClass: string };

export type Draft = {
  name: string;
  namespace: string;
  sizeSource: SizeSource;
  instancetype: { kind: InstancetypeKind; name: string } | null;
  cores: string;
  memory: string;
  /** The VM whose spec is copied when sizeSource is "template". */
  template: string;
  boot: BootSource;
  cloneFrom: string;
  url: string;
  /** The boot disk's size; empty for a clone means the source's size. */
  size: string;
  storageClass: string;
  cloudInit: CloudInitMode;
  user: string;
  password: string;
  sshKeys: string;
  userData: string;
  podNetwork: boolean;
  /** Names of the namespace's NetworkAttachmentDefinitions to attach. */
  vlans: string[];
  disks: ExtraDisk[];
  start: boolean;
};

/** Volume and disk names the wizard itself uses. */
export const ROOT_DISK = "rootdisk";
export const CLOUD_INIT_DISK = "cloudinitdisk";
export const POD_NETWORK = "default";

export function newDraft(namespace: string): Draft {
  return {
    name: "",
    namespace,
    sizeSource: "instancetype",
    instancetype: null,
    cores: "1",
    memory: "1Gi",
    template: "",
    boot: "clone",
    cloneFrom: "",
    url: "",
    size: "",
    storageClass: "",
    cloudInit: "none",
    user: "",
    password: "",
    sshKeys: "",
    userData: "",
    podNetwork: true,
    vlans: [],
    disks: [],
    start: true,
  };
}

/** A DataVolume template for the VM: `<vm>-<disk>` from `source`. */
function dataVolumeTemplate(name: string, source: object, size: string, storageClass: string) {
  const storage: Record<string, unknown> = {};
  if (size) storage.resources = { requests: { storage: size } };
  if (storageClass) storage.storageClassName = storageClass;
  return { metadata: { name }, spec: { source, storage } };
}

function bootSource(d: Draft): object {
  if (d.boot === "clone") return { pvc: { namespace: d.namespace, name: d.cloneFrom } };
  if (d.boot === "url") return { http: { url: d.url.trim() } };
  return { blank: {} };
}

/** The #cloud-config (or raw user-data) the cloud-init step describes; "" for none. */
export function userData(d: Draft): string {
  if (d.cloudInit === "raw") return d.userData;
  if (d.cloudInit !== "user") return "";
  const keys = d.sshKeys.split("\n").map((k) => k.trim()).filter(Boolean);
  const user: Record<string, unknown> = { name: d.user.trim(), shell: "/bin/sh", sudo: "ALL=(ALL) NOPASSWD:ALL", lock_passwd: !d.password };
  if (keys.length) user.ssh_authorized_keys = keys;
  const config: Record<string, unknown> = { users: ["default", user] };
  if (d.password) {
    config.chpasswd = { expire: false, users: [{ name: d.user.trim(), password: d.password, type: "text" }] };
    config.ssh_pwauth = true;
  }
  return `#cloud-config\n${stringify(config)}`;
}

/** The template VM's spec for a new VM: its DataVolume templates renamed after `name`, no identity. */
function copiedSpec(template: Obj, name: string): any {
  const spec = structuredClone(template.spec ?? {});
  delete spec.running;
  delete spec.runStrategy;
  const old = template.metadata.name;
  const renamed = new Map<string, string>();
  for (const t of spec.dataVolumeTemplates ?? []) {
    const was: string = t.metadata?.name ?? "";
    const now = was.startsWith(`${old}-`) ? `${name}${was.slice(old.length)}` : `${name}-${was}`;
    renamed.set(was, now);
    t.metadata = { ...t.metadata, name: now };
  }
  const vmi = spec.template?.spec ?? {};
  for (const v of vmi.volumes ?? []) {
    if (v.dataVolume && renamed.has(v.dataVolume.name)) v.dataVolume.name = renamed.get(v.dataVolume.name);
  }
  delete vmi.domain?.firmware?.uuid;
  delete vmi.domain?.firmware?.serial;
  return spec;
}

/** The disks and volumes of the template's spec, kept when the boot source is "template". */
export function templateDiskNames(template: Obj | undefined): string[] {
  return (template?.spec?.template?.spec?.domain?.devices?.disks ?? []).map((d: any) => d.name);
}

function sizeSpec(d: Draft, spec: any) {
  const domain = spec.template.spec.domain;
  if (d.sizeSource === "instancetype" && d.instancetype) {
    spec.instancetype = { kind: d.instancetype.kind, name: d.instancetype.name };
    delete domain.cpu;
    if (domain.memory) delete domain.memory.guest;
  } else if (d.sizeSource === "custom") {
    domain.cpu = { cores: Number(d.cores) };
    domain.memory = { guest: d.memory.trim() };
  }
}

function storageSpec(d: Draft, spec: any) {
  const vmi = spec.template.spec;
  const devices = vmi.domain.devices;
  if (d.boot !== "template") {
    spec.dataVolumeTemplates = [dataVolumeTemplate(`${d.name}-${ROOT_DISK}`, bootSource(d), d.size.trim(), d.storageClass)];
    devices.disks = [{ name: ROOT_DISK, disk: { bus: "virtio" }, bootOrder: 1 }];
    vmi.volumes = [{ name: ROOT_DISK, dataVolume: { name: `${d.name}-${ROOT_DISK}` } }];
  }
  const data = userData(d);
  if (data) {
    const existing = (vmi.volumes ?? []).find((v: any) => v.cloudInitNoCloud);
    if (existing) existing.cloudInitNoCloud = { userData: data };
    else {
      (devices.disks ??= []).push({ name: CLOUD_INIT_DISK, disk: { bus: "virtio" } });
      (vmi.volumes ??= []).push({ name: CLOUD_INIT_DISK, cloudInitNoCloud: { userData: data } });
    }
  }
  for (const disk of d.disks) {
    const dvName = `${d.name}-${disk.name}`;
    (spec.dataVolumeTemplates ??= []).push(dataVolumeTemplate(dvName, { blank: {} }, disk.size.trim(), disk.storageClass));
    (devices.disks ??= []).push({ name: disk.name, disk: { bus: "virtio" } });
    (vmi.volumes ??= []).push({ name: disk.name, dataVolume: { name: dvName } });
  }
}

function networkSpec(d: Draft, spec: any) {
  const vmi = spec.template.spec;
  const interfaces: object[] = [];
  const networks: object[] = [];
  if (d.podNetwork) {
    interfaces.push({ name: POD_NETWORK, masquerade: {} });
    networks.push({ name: POD_NETWORK, pod: {} });
  }
  for (const vlan of d.vlans) {
    interfaces.push({ name: vlan, bridge: {} });
    networks.push({ name: vlan, multus: { networkName: `${d.namespace}/${vlan}` } });
  }
  vmi.domain.devices.interfaces = interfaces;
  vmi.networks = networks;
}

/** The VirtualMachine the draft describes (`template`: the VM it copies, when it copies one). */
export function vmManifest(d: Draft, template?: Obj): Obj {
  const spec: any = d.sizeSource === "template" && template ? copiedSpec(template, d.name) : {};
  spec.runStrategy = d.start ? "Always" : "Halted";
  spec.template ??= {};
  spec.template.spec ??= {};
  spec.template.spec.domain ??= {};
  spec.template.spec.domain.devices ??= {};
  sizeSpec(d, spec);
  storageSpec(d, spec);
  networkSpec(d, spec);
  return { apiVersion: "kubevirt.io/v1", kind: "VirtualMachine", metadata: { name: d.name, namespace: d.namespace }, spec };
}

/** The manifest as YAML, as the review step shows it. */
export function manifestYaml(vm: Obj): string {
  return stringify(vm);
}
