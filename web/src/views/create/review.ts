// The wizard's review step: the VirtualMachine as YAML (read-only; exactly the object Create
// sends), whether to start it, and Create. The server's refusal is shown with each field it names
// and a way back to the step that sets that field.

import { ApiError, call, collectionPath } from "../../api";
import { el, toast } from "../../dom";
import { manifestYaml, vmManifest } from "./draft";
import { checkbox } from "./fields";
import { Env, Step } from "./step";

/** Which step (by index) sets a field the server names; the review itself when none does. */
const FIELD_STEPS: [RegExp, number][] = [
  [/^metadata\.name|^spec\.instancetype|^spec\.preference|\.domain\.(cpu|memory|resources)/, 0],
  [/^spec\.dataVolumeTemplates\[0\]|\.volumes\[0\]|\.disks\[0\]/, 1],
  [/cloudInit/, 2],
  [/\.networks|\.interfaces/, 3],
  [/^spec\.dataVolumeTemplates|\.volumes|\.disks/, 4],
];

export function stepOfField(field: string): number {
  return FIELD_STEPS.find(([pattern]) => pattern.test(field))?.[1] ?? 5;
}

export type ReviewStep = Step & { create: () => Promise<void> };

export function reviewStep({ draft, catalog }: Env, steps: () => Step[], goTo: (index: number) => void, created: (name: string) => void): ReviewStep {
  let yaml: HTMLElement;
  let problems: HTMLElement;
  let progress: HTMLElement;

  const manifest = () => vmManifest(draft, draft.sizeSource === "template" ? catalog.vm(draft.template) : undefined);
  const refresh = () => {
    yaml.textContent = manifestYaml(manifest());
  };

  const showError = (e: Error) => {
    const causes: { field?: string; message?: string }[] = e instanceof ApiError ? e.status?.details?.causes ?? [] : [];
    const items = causes.map((c) => {
      const step = stepOfField(c.field ?? "");
      const item = el("li", {}, c.field ? el("code", {}, c.field) : "", c.field ? ": " : "", c.message ?? "");
      if (step < 5) {
        const back = el("button", { type: "button", class: "link" }, `Go to ${steps()[step].title}`);
        back.addEventListener("click", () => goTo(step));
        item.append(" ", back);
      }
      return item;
    });
    problems.replaceChildren(el("p", {}, `The server refused the VM: ${e.message}`), ...(items.length ? [el("ul", {}, ...items)] : []));
  };

  const create = async () => {
    const vm = manifest();
    yaml.textContent = manifestYaml(vm);
    problems.replaceChildren();
    progress.textContent = `Creating ${draft.name}…`;
    try {
      await call("POST", collectionPath("kubevirt.io", "v1", "virtualmachines", draft.namespace), vm);
      toast(`Created ${draft.name}${draft.start ? "; it is starting" : ""}.`);
      created(draft.name);
    } catch (e) {
      progress.textContent = "";
      showError(e as Error);
      problems.focus();
    }
  };

  const render = () => {
    yaml = el("pre", { class: "review-yaml code", tabindex: "0", "aria-label": "The VirtualMachine to create, as YAML" });
    problems = el("div", { class: "field-error create-problems", role: "alert", tabindex: "-1" });
    progress = el("p", { class: "muted", role: "status" });
    const start = checkbox("review-start", "Start the VM after creating it", draft.start, (on) => {
      draft.start = on;
      refresh();
    });
    refresh();
    return el("div", { class: "review" }, start, el("h4", {}, "What will be applied"), yaml, progress, problems);
  };

  return { title: "Review", render, refresh, validate: () => true, create };
}
