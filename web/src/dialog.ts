// Modal dialogs on the native <dialog> element (focus trapped, Escape closes): a confirmation
// for destructive actions and a form dialog that stays open to show the server's error.

import { el } from "./dom";

/** Asks before a destructive action; resolves true when confirmed. */
export function confirmDialog(title: string, message: string, confirmLabel: string): Promise<boolean> {
  return new Promise((resolve) => {
    const yes = el("button", { type: "button", class: "primary danger-fill" }, confirmLabel);
    const no = el("button", { type: "button" }, "Cancel");
    const dialog = el("dialog", { "aria-label": title }, el("h2", {}, title), el("p", {}, message), el("div", { class: "dialog-actions" }, no, yes)) as HTMLDialogElement;
    const finish = (answer: boolean) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    yes.addEventListener("click", () => finish(true));
    no.addEventListener("click", () => finish(false));
    dialog.addEventListener("cancel", () => finish(false));
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}

/**
 * A dialog holding `body` (form fields) with a submit button. `submit` runs on submit; an error
 * it throws is shown in the dialog (which stays open), success closes it.
 */
export function formDialog(title: string, body: Node[], submitLabel: string, submit: () => Promise<void>): HTMLDialogElement {
  const error = el("p", { class: "error", role: "alert" });
  const ok = el("button", { type: "submit", class: "primary" }, submitLabel) as HTMLButtonElement;
  const cancel = el("button", { type: "button" }, "Cancel");
  const form = el("form", { method: "dialog" }, el("h2", {}, title), ...body, error, el("div", { class: "dialog-actions" }, cancel, ok));
  const dialog = el("dialog", { "aria-label": title }, form) as HTMLDialogElement;
  const close = () => {
    dialog.close();
    dialog.remove();
  };
  cancel.addEventListener("click", close);
  dialog.addEventListener("cancel", close);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    ok.disabled = true;
    error.textContent = "";
    try {
      await submit();
      close();
    } catch (err) {
      error.textContent = (err as Error).message;
      ok.disabled = false;
    }
  });
  document.body.append(dialog);
  dialog.showModal();
  return dialog;
}

/** Tabs (WAI-ARIA tablist, arrow keys move between them); returns the container. */
export function tabs(label: string, panels: [string, () => Node][]): HTMLElement {
  const list = el("div", { role: "tablist", "aria-label": label });
  const panel = el("div", { role: "tabpanel", tabindex: "0" });
  const buttons: HTMLButtonElement[] = [];
  const select = (i: number, focus = false) => {
    buttons.forEach((b, j) => {
      b.setAttribute("aria-selected", String(i === j));
      b.tabIndex = i === j ? 0 : -1;
    });
    panel.setAttribute("aria-label", panels[i][0]);
    panel.replaceChildren(panels[i][1]());
    if (focus) buttons[i].focus();
  };
  panels.forEach(([name], i) => {
    const b = el("button", { type: "button", role: "tab" }, name) as HTMLButtonElement;
    b.addEventListener("click", () => select(i));
    b.addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight") select((i + 1) % panels.length, true);
      if (e.key === "ArrowLeft") select((i + panels.length - 1) % panels.length, true);
    });
    buttons.push(b);
    list.append(b);
  });
  select(0);
  return el("div", { class: "tabs" }, list, panel);
}
