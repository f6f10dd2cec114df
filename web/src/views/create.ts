// Create VM: a wizard (basics and size, boot source, cloud-init, networks, disks, review) that
// builds a VirtualMachine in the current namespace, shows its YAML, creates it and goes to its page.
// A step list shows where the user is; Next checks the step first (messages at the fields) and
// Enter moves on. The choices (instance types, volumes, storage classes, VLANs, VMs) stay live.

import { el } from "../dom";
import { Context, View } from "../router";
import { basicsStep } from "./create/basics";
import { bootStep } from "./create/boot";
import { Catalog } from "./create/catalog";
import { cloudInitStep } from "./create/cloudinit";
import { disksStep } from "./create/disks";
import { newDraft } from "./create/draft";
import { networksStep } from "./create/networks";
import { reviewStep } from "./create/review";
import { Step } from "./create/step";

export function createView(ctx: Context): View {
  const draft = newDraft(ctx.namespace);
  let steps: Step[] = [];
  let current = 0;
  let reached = 0;
  const catalog = new Catalog(ctx.namespace, () => steps[current]?.refresh());
  const env = { draft, catalog };
  const review = reviewStep(env, () => steps, (i) => show(i), (name) => ctx.navigate(`vms/${encodeURIComponent(name)}`));
  steps = [basicsStep(env), bootStep(env), cloudInitStep(env), networksStep(env), disksStep(env), review];
  const last = steps.length - 1;

  const stepList = el("ol", {});
  const heading = el("h3", { id: "wizard-step-title", tabindex: "-1" });
  const panel = el("div", { class: "wizard-panel" });
  const back = el("button", { type: "button" }, "Back") as HTMLButtonElement;
  const next = el("button", { type: "submit", class: "primary" }, "Next") as HTMLButtonElement;
  const form = el("form", { class: "wizard", "aria-labelledby": "wizard-step-title", novalidate: "" }, heading, panel, el("div", { class: "wizard-actions" }, back, next));

  const drawStepList = () => {
    stepList.replaceChildren(
      ...steps.map((step, i) => {
        const button = el("button", { type: "button" }, el("span", { class: "step-number", "aria-hidden": "true" }, String(i + 1)), step.title) as HTMLButtonElement;
        button.disabled = i > reached;
        if (i === current) button.setAttribute("aria-current", "step");
        button.addEventListener("click", () => (i <= current || steps[current].validate()) && show(i));
        return el("li", { class: i < current ? "done" : "" }, button);
      }),
    );
  };

  function show(i: number, focus = true) {
    current = i;
    reached = Math.max(reached, i);
    heading.textContent = `Step ${i + 1} of ${steps.length}: ${steps[i].title}`;
    panel.replaceChildren(steps[i].render());
    back.disabled = i === 0;
    next.textContent = i === last ? "Create VM" : "Next";
    drawStepList();
    if (focus) heading.focus();
  }

  back.addEventListener("click", () => show(current - 1));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!steps[current].validate()) return;
    if (current < last) return show(current + 1);
    next.disabled = true;
    await review.create();
    next.disabled = false;
  });

  show(0, false);
  const node = el(
    "section",
    { class: "create-vm" },
    el("h2", {}, "Create VM"),
    el("div", { class: "wizard-layout" }, el("nav", { class: "wizard-steps", "aria-label": "Wizard steps" }, stepList), form),
  );
  queueMicrotask(() => (node.querySelector("#vm-name") as HTMLInputElement | null)?.focus());
  return { node, stop: () => catalog.stop() };
}
