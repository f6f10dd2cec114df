// The Overview tab of the VM detail: what a VM is (CPU, memory, run strategy, firmware and boot)
// and how its instance is doing (status, conditions, node, addresses, guest OS), from the VM and
// its VirtualMachineInstance as the watches last saw them.

import { Obj } from "../../api";
import { age, el } from "../../dom";

type Row = [string, Node | string];

function definitions(label: string, rows: Row[]): HTMLElement {
  const list = el("dl", { class: "facts", "aria-label": label });
  for (const [term, value] of rows) list.append(el("dt", {}, term), el("dd", {}, value || "—"));
  return list;
}

function cpuText(domain: any, instancetype: any): string {
  if (instancetype?.name) return `from instance type ${instancetype.name}`;
  const cpu = domain?.cpu ?? {};
  const [sockets, cores, threads] = [cpu.sockets ?? 1, cpu.cores ?? 1, cpu.threads ?? 1];
  return `${sockets * cores * threads} vCPU (${sockets} socket${sockets > 1 ? "s" : ""} × ${cores} core${cores > 1 ? "s" : ""} × ${threads} thread${threads > 1 ? "s" : ""})${cpu.model ? `, model ${cpu.model}` : ""}`;
}

function memoryText(domain: any, instancetype: any): string {
  if (instancetype?.name) return `from instance type ${instancetype.name}`;
  return domain?.memory?.guest ?? domain?.resources?.requests?.memory ?? "";
}

/** Firmware and where the VM boots from: kernel boot, or BIOS/EFI with the disks in boot order. */
function bootText(domain: any): string {
  const firmware = domain?.firmware ?? {};
  if (firmware.kernelBoot) return `direct kernel boot (${firmware.kernelBoot.container?.kernelPath ?? "kernel"})`;
  const loader = firmware.bootloader?.efi ? `EFI${firmware.bootloader.efi.secureBoot === false ? "" : " (secure boot)"}` : "BIOS";
  const ordered = (domain?.devices?.disks ?? []).filter((d: any) => d.bootOrder).sort((a: any, b: any) => a.bootOrder - b.bootOrder);
  return ordered.length ? `${loader}, boots from ${ordered.map((d: any) => d.name).join(", ")}` : loader;
}

function addresses(vmi: Obj | undefined): string {
  const ips = (vmi?.status?.interfaces ?? []).flatMap((i: any) => i.ipAddresses ?? (i.ipAddress ? [i.ipAddress] : []));
  return [...new Set(ips)].join(", ");
}

function guestOs(vmi: Obj | undefined): string {
  const os = vmi?.status?.guestOSInfo;
  if (!os) return "not known (no guest agent report)";
  return [os.prettyName ?? os.name, os.kernelRelease].filter(Boolean).join(", ");
}

function conditionsList(objects: (Obj | undefined)[]): Node {
  const items = objects.flatMap((o) => (o?.status?.conditions ?? []).map((c: any) => ({ kind: o!.kind ?? "", ...c })));
  if (!items.length) return el("span", { class: "muted" }, "none");
  return el(
    "ul",
    { class: "conditions" },
    ...items.map((c: any) =>
      el("li", {}, el("span", { class: `condition ${c.status === "True" ? "true" : "false"}` }, `${c.type}: ${c.status}`), c.reason ? ` (${c.reason})` : "", c.message ? ` ${c.message}` : "", el("span", { class: "muted" }, ` on the ${c.kind === "VirtualMachineInstance" ? "instance" : "VM"}`)),
    ),
  );
}

function labelsList(labels: Record<string, string> | undefined): Node {
  const entries = Object.entries(labels ?? {});
  if (!entries.length) return el("span", { class: "muted" }, "none");
  return el("ul", { class: "chips", "aria-label": "Labels" }, ...entries.map(([k, v]) => el("li", {}, `${k}=${v}`)));
}

/** The Overview tab's content for `vm` and its instance (absent while it is stopped). */
export function overview(vm: Obj, vmi: Obj | undefined): HTMLElement {
  const spec = vm.spec ?? {};
  const domain = spec.template?.spec?.domain;
  const created = vm.metadata.creationTimestamp ?? "";
  const status = vm.status?.printableStatus ?? "Unknown";
  const instance: Row[] = [
    ["Status", el("span", { class: `status ${status}` }, status)],
    ["Phase of the instance", vmi?.status?.phase ?? "no instance (not running)"],
    ["Node", vmi?.status?.nodeName ?? ""],
    ["IP addresses", addresses(vmi)],
    ["Guest OS", guestOs(vmi)],
    ["Conditions", conditionsList([vm, vmi])],
  ];
  const machine: Row[] = [
    ["CPU", cpuText(domain, spec.instancetype)],
    ["Memory", memoryText(domain, spec.instancetype)],
    ["Run strategy", spec.runStrategy ?? (spec.running === true ? "Always (running: true)" : spec.running === false ? "Halted (running: false)" : "")],
    ["Firmware and boot", bootText(domain)],
    ["Created", created ? `${created} (${age(created)} ago)` : ""],
    ["Labels", labelsList(vm.metadata.labels)],
  ];
  return el(
    "div",
    { class: "overview" },
    el("section", { "aria-labelledby": "overview-instance" }, el("h3", { id: "overview-instance" }, "Instance"), definitions("Instance", instance)),
    el("section", { "aria-labelledby": "overview-machine" }, el("h3", { id: "overview-machine" }, "Machine"), definitions("Machine", machine)),
  );
}
