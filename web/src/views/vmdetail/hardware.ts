// The Disks and NICs tabs of the VM detail: each disk joined with its volume (what kind of source,
// which claim and how big) and each interface joined with its network and the instance's report
// of it (MAC, addresses).

import { Obj } from "../../api";
import { el } from "../../dom";

const SOURCES: [string, string][] = [
  ["persistentVolumeClaim", "PVC"],
  ["dataVolume", "DataVolume"],
  ["hostDisk", "hostDisk"],
  ["emptyDisk", "emptyDisk"],
  ["ephemeral", "ephemeral"],
  ["containerDisk", "containerDisk"],
  ["cloudInitNoCloud", "cloudInit (NoCloud)"],
  ["cloudInitConfigDrive", "cloudInit (ConfigDrive)"],
];

function table(label: string, headers: string[], rows: (Node | string)[][], empty: string): HTMLElement {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  return el(
    "table",
    { "aria-label": label },
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c || "—"))))),
  );
}

/** The claim a volume's data lives in: its own, its DataVolume's (same name) or an ephemeral's. */
function claimOf(volume: any): string {
  return volume.persistentVolumeClaim?.claimName ?? volume.dataVolume?.name ?? volume.ephemeral?.persistentVolumeClaim?.claimName ?? "";
}

function sizeOf(volume: any, claims: Map<string, Obj>, namespace: string): string {
  const claimName = claimOf(volume);
  if (claimName) {
    const claim = claims.get(`${namespace}/${claimName}`);
    if (!claim) return "claim not found";
    return claim.status?.capacity?.storage ?? claim.spec?.resources?.requests?.storage ?? "";
  }
  return volume.emptyDisk?.capacity ?? volume.hostDisk?.capacity ?? "";
}

function sourceDetail(volume: any): string {
  const claim = claimOf(volume);
  if (claim) return claim;
  if (volume.hostDisk) return `${volume.hostDisk.path} (${volume.hostDisk.type ?? "Disk"})`;
  if (volume.containerDisk) return volume.containerDisk.image ?? volume.containerDisk.path ?? "";
  if (volume.cloudInitNoCloud || volume.cloudInitConfigDrive) return "user data";
  return "";
}

/** The Disks tab: every disk and every volume (a volume no disk names is listed too). */
export function disks(vm: Obj, claims: Map<string, Obj>): HTMLElement {
  const spec = vm.spec?.template?.spec ?? {};
  const devices: any[] = spec.domain?.devices?.disks ?? [];
  const volumes: any[] = spec.volumes ?? [];
  const names = [...new Set([...devices.map((d) => d.name), ...volumes.map((v) => v.name)])];
  const namespace = vm.metadata.namespace ?? "";
  const rows = names.map((name) => {
    const disk = devices.find((d) => d.name === name) ?? {};
    const volume = volumes.find((v) => v.name === name) ?? {};
    const type = ["disk", "cdrom", "lun"].find((t) => disk[t]) ?? (Object.keys(disk).length ? "disk" : "no disk");
    const kind = SOURCES.find(([key]) => volume[key])?.[1] ?? (Object.keys(volume).length ? Object.keys(volume).filter((k) => k !== "name")[0] : "no volume");
    return [name, type, disk[type]?.bus ?? (type === "no disk" ? "" : "virtio"), kind, sourceDetail(volume), sizeOf(volume, claims, namespace), disk.bootOrder ? String(disk.bootOrder) : ""];
  });
  return table("Disks", ["Name", "Type", "Bus", "Source", "Claim, path or image", "Size", "Boot order"], rows, "This VM has no disks (it boots a kernel directly).");
}

const BINDINGS = ["masquerade", "bridge", "sriov", "slirp", "passt", "macvtap"];

function networkText(network: any): string {
  if (!network) return "no network of that name";
  if (network.pod) return "pod network";
  if (network.multus) return `${network.multus.networkName} (Multus)`;
  return Object.keys(network).filter((k) => k !== "name")[0] ?? "";
}

/** The NICs tab: the interfaces of the spec with what the instance reports of each. */
export function nics(vm: Obj, vmi: Obj | undefined): HTMLElement {
  const spec = vm.spec?.template?.spec ?? {};
  const interfaces: any[] = spec.domain?.devices?.interfaces ?? [];
  const networks: any[] = spec.networks ?? [];
  const reported: any[] = vmi?.status?.interfaces ?? [];
  const rows = interfaces.map((nic) => {
    const seen = reported.find((r) => r.name === nic.name) ?? {};
    const binding = nic.binding?.name ?? BINDINGS.find((b) => nic[b]) ?? "";
    const ips = (seen.ipAddresses ?? (seen.ipAddress ? [seen.ipAddress] : [])).join(", ");
    const mac = seen.mac ?? nic.macAddress ?? "";
    return [nic.name, networkText(networks.find((n) => n.name === nic.name)), binding, nic.model ?? "virtio", mac ? el("code", { class: "mac" }, mac) : "", ips];
  });
  return table("Network interfaces", ["Name", "Network", "Binding", "Model", "MAC", "IP addresses"], rows, "This VM has no network interfaces.");
}
