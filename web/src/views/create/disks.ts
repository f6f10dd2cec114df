// The wizard's disks step: extra blank disks (name, size, storage class), each a DataVolume
// template `<vm>-<name>` attached on the virtio bus.

import { el } from "../../dom";
import { CLOUD_INIT_DISK, ExtraDisk, ROOT_DISK, templateDiskNames } from "./draft";
import { Checks, field, input, labelProblem, setOptions, sizeProblem } from "./fields";
import { Env, Step } from "./step";

export function disksStep({ draft, catalog }: Env): Step {
  let container: HTMLElement;
  let classSelects: HTMLSelectElement[] = [];

  /** Names the wizard or the template already gives a disk. */
  const takenNames = () => {
    const template = draft.sizeSource === "template" && draft.boot === "template" ? templateDiskNames(catalog.vm(draft.template)) : [ROOT_DISK];
    return new Set([...template, CLOUD_INIT_DISK]);
  };

  const nameProblem = (disk: ExtraDisk, index: number) => {
    const problem = labelProblem(disk.name, "disk name");
    if (problem) return problem;
    if (takenNames().has(disk.name)) return `${disk.name} is already a disk of this VM.`;
    return draft.disks.findIndex((d) => d.name === disk.name) < index ? `Another disk is named ${disk.name}.` : "";
  };

  const refresh = () => {
    const classes = catalog.storageClasses();
    const options = classes.map((c): [string, string] => [c.name, c.isDefault ? `${c.name} (default)` : c.name]);
    classSelects.forEach((select, i) => {
      setOptions(select, options);
      if (!classes.some((c) => c.name === draft.disks[i].storageClass)) draft.disks[i].storageClass = classes[0]?.name ?? "";
      select.value = draft.disks[i].storageClass;
    });
  };

  const row = (disk: ExtraDisk, i: number) => {
    const name = field("Name", input(`disk-${i}-name`, disk.name));
    name.control.addEventListener("input", () => (disk.name = name.control.value.trim()));
    checks.add(name, () => nameProblem(disk, i), true);
    const size = field("Size", input(`disk-${i}-size`, disk.size, { placeholder: "10Gi" }));
    size.control.addEventListener("input", () => (disk.size = size.control.value.trim()));
    checks.add(size, () => sizeProblem(disk.size));
    const select = el("select", { id: `disk-${i}-class` }) as HTMLSelectElement;
    select.addEventListener("change", () => (disk.storageClass = select.value));
    classSelects.push(select);
    const remove = el("button", { type: "button", class: "danger", "aria-label": `Remove disk ${i + 1}` }, "Remove");
    remove.addEventListener("click", () => {
      draft.disks.splice(i, 1);
      draw();
      (container.querySelector("button.add-disk") as HTMLElement).focus();
    });
    return el("fieldset", { class: "disk-row" }, el("legend", {}, `Disk ${i + 1}`), name.node, size.node, field("Storage class", select).node, remove);
  };

  const draw = () => {
    checks = new Checks();
    classSelects = [];
    const add = el("button", { type: "button", class: "add-disk" }, "Add disk");
    add.addEventListener("click", () => {
      draft.disks.push({ name: `disk${draft.disks.length + 1}`, size: "1Gi", storageClass: "" });
      draw();
      (container.querySelector(`#disk-${draft.disks.length - 1}-name`) as HTMLElement).focus();
    });
    const rows = draft.disks.map(row);
    container.replaceChildren(...(rows.length ? rows : [el("p", { class: "muted" }, "No extra disks: the VM has its boot disk only.")]), add);
    refresh();
  };

  const render = () => {
    container = el("div", { class: "disk-list" });
    draw();
    return container;
  };

  let checks = new Checks();
  return { title: "Disks", render, refresh, validate: () => checks.run() };
}
