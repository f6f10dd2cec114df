// Form pieces for the Create VM wizard's steps: a labelled control with its error message at the
// field (aria-invalid, read out through aria-describedby), checks that run before Next and then
// again as the user corrects the field, radio groups, and selects whose options follow live lists
// without losing the choice.

import { el } from "../../dom";
import { formField } from "../../form-field";

type Control = HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;
export type Field = { node: HTMLElement; control: Control; setError: (message: string) => void };

/** `control` (with an id) under `label`, with `hint` and a place for its error. */
export function field(label: string, control: Control, hint = ""): Field {
  const node = formField(label, control, hint);
  const error = el("p", { class: "field-error", id: `${control.id}-error` });
  node.append(error);
  const described = control.getAttribute("aria-describedby");
  control.setAttribute("aria-describedby", [described, error.id].filter(Boolean).join(" "));
  const setError = (message: string) => {
    error.textContent = message;
    if (message) control.setAttribute("aria-invalid", "true");
    else control.removeAttribute("aria-invalid");
  };
  return { node, control, setError };
}

export function input(id: string, value: string, attrs: Record<string, string> = {}): HTMLInputElement {
  const i = el("input", { id, type: "text", autocomplete: "off", spellcheck: "false", ...attrs }) as HTMLInputElement;
  i.value = value;
  return i;
}

export function textarea(id: string, value: string, rows = 6): HTMLTextAreaElement {
  const t = el("textarea", { id, rows: String(rows), spellcheck: "false" }) as HTMLTextAreaElement;
  t.value = value;
  return t;
}

/** Replaces `select`'s options when they differ, keeping its value when it is still offered. */
export function setOptions(select: HTMLSelectElement, options: [value: string, label: string][]) {
  const same = select.options.length === options.length && options.every(([v, l], i) => select.options[i].value === v && select.options[i].text === l);
  if (same) return;
  const value = select.value;
  select.replaceChildren(...options.map(([v, l]) => el("option", { value: v }, l)));
  if (options.some(([v]) => v === value)) select.value = value;
}

/** Radio buttons in a fieldset (arrow keys move between them); `changed` gets the chosen value. */
export function radios<T extends string>(name: string, legend: string, options: [T, string][], current: T, changed: (value: T) => void): HTMLElement {
  const set = el("fieldset", { class: "radios" }, el("legend", {}, legend));
  for (const [value, label] of options) {
    const radio = el("input", { type: "radio", name, value, id: `${name}-${value}` }) as HTMLInputElement;
    radio.checked = value === current;
    radio.addEventListener("change", () => radio.checked && changed(value));
    set.append(el("label", { for: radio.id }, radio, label));
  }
  return set;
}

/** A checkbox with its label. */
export function checkbox(id: string, label: string, checked: boolean, changed: (checked: boolean) => void): HTMLElement {
  const box = el("input", { type: "checkbox", id }) as HTMLInputElement;
  box.checked = checked;
  box.addEventListener("change", () => changed(box.checked));
  return el("label", { for: id, class: "check" }, box, label);
}

/**
 * A step's checks: each names the problem with a field ("" when fine). `run` shows them all and
 * focuses the first bad field; after that (or at once for `live` ones) a field is checked again as
 * it changes, so its message goes away when it is fixed.
 */
export class Checks {
  private list: { field: Field; check: () => string }[] = [];
  private shown = false;

  add(field: Field, check: () => string, live = false) {
    this.list.push({ field, check });
    const recheck = () => {
      if (live || this.shown) field.setError(check());
    };
    field.control.addEventListener("input", recheck);
    field.control.addEventListener("change", recheck);
  }

  run(): boolean {
    this.shown = true;
    let first: Control | null = null;
    for (const { field, check } of this.list) {
      const message = check();
      field.setError(message);
      if (message && !first) first = field.control;
    }
    first?.focus();
    return !first;
  }
}

/** The problem with a DNS-1123 label (a VM, disk or volume name), or "". */
export function labelProblem(name: string, what: string): string {
  if (!name) return `Enter a ${what}.`;
  if (name.length > 63) return `A ${what} has at most 63 characters.`;
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name)) {
    return `A ${what} has lower-case letters, digits and '-', and starts and ends with a letter or digit.`;
  }
  return "";
}

/** The problem with a size such as 10Gi, or "". */
export function sizeProblem(size: string, required = true): string {
  if (!size) return required ? "Enter a size, such as 10Gi." : "";
  if (!/^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$/.test(size)) return "A size is a number with a unit: 512Mi, 10Gi, 1Ti.";
  if (Number(size.replace(/[A-Za-z]+$/, "")) <= 0) return "A size must be more than 0.";
  return "";
}
