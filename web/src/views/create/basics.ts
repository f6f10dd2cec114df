// The wizard's first step: the VM's name (checked as it is typed: a DNS-1123 label not taken in
// the namespace), its namespace, and where its size comes from: an instance type, custom vCPUs and
// memory, or an existing VM of the namespace used as a template (its spec copied).

import { Obj } from "../../api";
import { el } from "../../dom";
import { Instancetype } from "./catalog";
import { Draft, SizeSource } from "./draft";
import { Checks, field, input, labelProblem, radios, setOptions, sizeProblem } from "./fields";
import { Env, Step } from "./step";

const SIZE_SOURCES: [SizeSource, string][] = [
  ["instancetype", "Instance type"],
  ["custom", "Custom vCPUs and memory"],
  ["template", "Copy an existing VM (template)"],
];

function instancetypeLabel(t: Instancetype): string {
  const scope = t.kind === "VirtualMachineInstancetype" ? "namespace" : "cluster";
  return `${t.name}: ${t.cpus} vCPU${t.cpus === 1 ? "" : "s"}, ${t.memory} (${scope})`;
}

function vmLabel(vm: Obj): string {
  const type = vm.spec?.instancetype?.name;
  const domain = vm.spec?.template?.spec?.domain ?? {};
  const size = type ?? [domain.cpu?.cores && `${domain.cpu.cores} cores`, domain.memory?.guest].filter(Boolean).join(", ");
  return size ? `${vm.metadata.name} (${size})` : vm.metadata.name;
}

/** Takes the template's networks as the networks step's starting point. */
function networksFrom(draft: Draft, template: Obj | undefined) {
  const networks: any[] = template?.spec?.template?.spec?.networks ?? [];
  draft.podNetwork = networks.some((n) => n.pod);
  draft.vlans = networks.filter((n) => n.multus?.networkName).map((n) => String(n.multus.networkName).split("/").pop()!);
}

export function basicsStep({ draft, catalog }: Env): Step {
  let typeSelect: HTMLSelectElement;
  let templateSelect: HTMLSelectElement;
  let typeNote: HTMLElement;
  let templateNote: HTMLElement;

  const chooseType = (value: string) => {
    const [kind, name] = value.split("/");
    draft.instancetype = name ? { kind: kind as Instancetype["kind"], name } : null;
  };
  const chooseTemplate = (name: string) => {
    draft.template = name;
    if (name) networksFrom(draft, catalog.vm(name));
  };

  const refresh = () => {
    const types = catalog.instancetypes();
    setOptions(typeSelect, [["", types.length ? "Choose an instance type" : "No instance types"], ...types.map((t): [string, string] => [`${t.kind}/${t.name}`, instancetypeLabel(t)])]);
    if (draft.instancetype) typeSelect.value = `${draft.instancetype.kind}/${draft.instancetype.name}`;
    chooseType(typeSelect.value);
    const missing = catalog.failures.get("clusterTypes") ?? catalog.failures.get("namespacedTypes");
    typeNote.textContent = types.length ? "" : missing ? `No instance types: the server's answer was "${missing}".` : "No instance types are defined.";
    const vms = catalog.vms();
    setOptions(templateSelect, [["", vms.length ? "Choose a VM to copy" : "No VMs in this namespace"], ...vms.map((v): [string, string] => [v.metadata.name, vmLabel(v)])]);
    templateSelect.value = draft.template;
    draft.template = templateSelect.value;
    templateNote.textContent = vms.length ? "" : "This namespace has no VMs to copy.";
  };

  const render = () => {
    checks = new Checks();
    const name = field("Name", input("vm-name", draft.name, { required: "", maxlength: "63" }), "Lower-case letters, digits and '-'.");
    name.control.addEventListener("input", () => (draft.name = name.control.value.trim()));
    checks.add(name, () => labelProblem(draft.name, "VM name") || (catalog.vm(draft.name) ? `A VM named ${draft.name} exists in ${draft.namespace}.` : ""), true);

    typeSelect = el("select", { id: "vm-instancetype" }) as HTMLSelectElement;
    typeNote = el("p", { class: "muted" });
    const type = field("Instance type", typeSelect, "The instance type sets the vCPUs and memory.");
    typeSelect.addEventListener("change", () => chooseType(typeSelect.value));
    checks.add(type, () => (draft.sizeSource === "instancetype" && !draft.instancetype ? "Choose an instance type, or another way to size the VM." : ""));

    const cores = field("vCPUs", input("vm-cores", draft.cores, { type: "number", min: "1", max: "512", inputmode: "numeric" }));
    cores.control.addEventListener("input", () => (draft.cores = cores.control.value.trim()));
    checks.add(cores, () => (draft.sizeSource === "custom" && !/^[1-9][0-9]*$/.test(draft.cores) ? "Enter a whole number of vCPUs, 1 or more." : ""));
    const memory = field("Memory", input("vm-memory", draft.memory), "Such as 512Mi or 4Gi.");
    memory.control.addEventListener("input", () => (draft.memory = memory.control.value.trim()));
    checks.add(memory, () => (draft.sizeSource === "custom" ? sizeProblem(draft.memory) : ""));

    templateSelect = el("select", { id: "vm-template" }) as HTMLSelectElement;
    templateNote = el("p", { class: "muted" });
    const template = field("Template VM", templateSelect, "Its spec is copied; its disks are cloned under the new name.");
    templateSelect.addEventListener("change", () => chooseTemplate(templateSelect.value));
    checks.add(template, () => (draft.sizeSource === "template" && !draft.template ? "Choose the VM to copy." : ""));

    const panels: Record<SizeSource, HTMLElement> = {
      instancetype: el("div", { class: "choice-panel" }, type.node, typeNote),
      custom: el("div", { class: "choice-panel two" }, cores.node, memory.node),
      template: el("div", { class: "choice-panel" }, template.node, templateNote),
    };
    const show = () => Object.entries(panels).forEach(([k, p]) => (p.hidden = k !== draft.sizeSource));
    const sizeChoice = radios("vm-size-source", "Size", SIZE_SOURCES, draft.sizeSource, (v) => {
      draft.sizeSource = v;
      if (v === "template") {
        draft.boot = "template";
        chooseTemplate(draft.template);
      } else if (draft.boot === "template") draft.boot = "clone";
      show();
    });
    refresh();
    show();
    return el(
      "div",
      {},
      name.node,
      el("p", {}, "Namespace: ", el("strong", {}, draft.namespace), el("span", { class: "muted" }, " (switch it in the header)")),
      sizeChoice,
      ...Object.values(panels),
    );
  };

  let checks = new Checks();
  return { title: "Basics", render, refresh, validate: () => checks.run() };
}
