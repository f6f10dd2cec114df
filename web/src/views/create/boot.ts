// The wizard's boot source step: the VM's root disk is a DataVolume template (`<vm>-rootdisk`,
// virtio) cloned from a DataVolume or claim of the namespace (sized like its source unless told),
// imported from a URL, or blank; or, for a copied VM, the template's own disks. The storage class
// defaults to the cluster's default class.

import { el } from "../../dom";
import { CloneSource } from "./catalog";
import { BootSource } from "./draft";
import { Checks, field, input, radios, setOptions, sizeProblem } from "./fields";
import { Env, Step } from "./step";

function sourceLabel(s: CloneSource): string {
  const kind = s.kind === "DataVolume" ? "DataVolume" : "claim";
  return `${s.name} (${kind}${s.size ? `, ${s.size}` : ""}${s.phase ? `, ${s.phase}` : ""})`;
}

export function bootStep({ draft, catalog }: Env): Step {
  let sourceSelect: HTMLSelectElement;
  let classSelect: HTMLSelectElement;
  let sourceNote: HTMLElement;
  let sizeInput: HTMLInputElement;

  /** The clone source's size fills the size field, as the default the user may change. */
  const chooseSource = (name: string, fillSize: boolean) => {
    draft.cloneFrom = name;
    const source = catalog.cloneSources().find((s) => s.name === name);
    if (fillSize && source?.size) draft.size = sizeInput.value = source.size;
  };

  const refresh = () => {
    const sources = catalog.cloneSources();
    setOptions(sourceSelect, [["", sources.length ? "Choose a volume to clone" : "No volumes in this namespace"], ...sources.map((s): [string, string] => [s.name, sourceLabel(s)])]);
    sourceSelect.value = draft.cloneFrom;
    // A source that is gone is no longer chosen (its check then says so).
    draft.cloneFrom = sourceSelect.value;
    sourceNote.textContent = sources.length ? "" : "Import or upload an image under Images and volumes first, or import from a URL here.";
    const classes = catalog.storageClasses();
    setOptions(classSelect, classes.map((c): [string, string] => [c.name, c.isDefault ? `${c.name} (default)` : c.name]));
    if (!draft.storageClass || !classes.some((c) => c.name === draft.storageClass)) draft.storageClass = classes[0]?.name ?? "";
    classSelect.value = draft.storageClass;
  };

  const render = () => {
    checks = new Checks();
    sourceSelect = el("select", { id: "boot-clone" }) as HTMLSelectElement;
    sourceNote = el("p", { class: "muted" });
    const source = field("Volume to clone", sourceSelect);
    sourceSelect.addEventListener("change", () => chooseSource(sourceSelect.value, true));
    checks.add(source, () => (draft.boot === "clone" && !draft.cloneFrom ? "Choose the volume to clone." : ""));

    const url = field("Image URL", input("boot-url", draft.url, { type: "url", placeholder: "https://example.com/disk.qcow2" }), "qcow2, raw, vmdk, or gzip- or xz-compressed raw.");
    url.control.addEventListener("input", () => (draft.url = url.control.value.trim()));
    checks.add(url, () => (draft.boot === "url" && !/^https?:\/\/[^\s/]+/.test(draft.url) ? "Enter an http:// or https:// URL." : ""));

    sizeInput = input("boot-size", draft.size, { placeholder: "10Gi" });
    const size = field("Disk size", sizeInput, "For a clone, empty means the source's size.");
    sizeInput.addEventListener("input", () => (draft.size = sizeInput.value.trim()));
    checks.add(size, () => (draft.boot === "template" ? "" : sizeProblem(draft.size, draft.boot !== "clone")));

    classSelect = el("select", { id: "boot-storage-class" }) as HTMLSelectElement;
    const storageClass = field("Storage class", classSelect);
    classSelect.addEventListener("change", () => (draft.storageClass = classSelect.value));

    const templateNote = el("p", { class: "muted" }, `The disks of ${draft.template || "the template VM"} are cloned under the new VM's name.`);
    const clonePanel = el("div", { class: "choice-panel" }, source.node, sourceNote);
    const urlPanel = el("div", { class: "choice-panel" }, url.node);
    const diskPanel = el("div", { class: "choice-panel two" }, size.node, storageClass.node);
    const show = () => {
      templateNote.hidden = draft.boot !== "template";
      clonePanel.hidden = draft.boot !== "clone";
      urlPanel.hidden = draft.boot !== "url";
      diskPanel.hidden = draft.boot === "template";
    };
    const options: [BootSource, string][] = [
      ["clone", "Clone a volume"],
      ["url", "Import from a URL"],
      ["blank", "Blank disk"],
    ];
    if (draft.sizeSource === "template") options.unshift(["template", "The template's disks"]);
    const choice = radios("boot-source", "Boot disk", options, draft.boot, (v) => {
      draft.boot = v;
      show();
    });
    refresh();
    show();
    return el("div", {}, choice, templateNote, clonePanel, urlPanel, diskPanel, el("p", { class: "muted" }, "The disk is attached on the virtio bus and boots first."));
  };

  let checks = new Checks();
  return { title: "Boot source", render, refresh, validate: () => checks.run() };
}
