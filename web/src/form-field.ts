// One labelled form control with an optional hint tied to it (aria-describedby), for the forms in
// dialogs (VLAN network, DataVolume import and upload), so every control has a visible label.

import { el } from "./dom";

/** `control` (which must have an id) under its label, with `hint` read out after the label. */
export function formField(label: string, control: HTMLElement, hint = ""): HTMLElement {
  const field = el("div", { class: "form-field" }, el("label", { for: control.id }, label), control);
  if (hint) {
    const hintId = `${control.id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    field.append(el("small", { id: hintId, class: "muted" }, hint));
  }
  return field;
}
