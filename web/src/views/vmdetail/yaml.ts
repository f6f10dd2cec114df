// The YAML tab of the VM detail: the VM as YAML in an editable textarea with line numbers. Save
// PUTs the edited object; the server's validation errors (details.causes[].field) are shown at the
// line of their field and in a list, YAML syntax errors at their line before anything is sent, and
// a conflict (someone else changed the VM) offers to load the latest. While the text is unedited
// it follows the VM live.

import { LineCounter, parseDocument, stringify } from "yaml";
import { ApiError, call, Obj } from "../../api";
import { el } from "../../dom";
import { lineOfField } from "./yamlpath";

type Problem = { line: number | null; field: string; message: string };

/** The VM as the editor shows it: without managedFields (bookkeeping nobody edits by hand). */
function editable(vm: Obj): string {
  const copy = structuredClone(vm);
  delete (copy.metadata as any).managedFields;
  return stringify(copy, { lineWidth: 0 });
}

export type YamlEditor = { node: HTMLElement; update: (vm: Obj | undefined) => void };

export function yamlEditor(path: string, name: string): YamlEditor {
  const textarea = el("textarea", { id: "vm-yaml", wrap: "off", spellcheck: "false", autocapitalize: "off", "aria-describedby": "vm-yaml-problems" }) as HTMLTextAreaElement;
  const gutter = el("div", { class: "gutter", "aria-hidden": "true" });
  const marks = el("div", { class: "marks", "aria-hidden": "true" });
  const save = el("button", { type: "button", class: "primary" }, "Save") as HTMLButtonElement;
  const revert = el("button", { type: "button" }, "Discard changes") as HTMLButtonElement;
  const status = el("span", { class: "muted", role: "status", "aria-live": "polite" });
  const notice = el("div", { class: "notice", role: "alert" });
  const problems = el("div", { id: "vm-yaml-problems", class: "problems" });
  let base = ""; // the text of the version loaded, to tell edits apart
  let latest: Obj | undefined;
  let shownProblems: Problem[] = [];

  const dirty = () => textarea.value !== base;
  const load = (vm: Obj) => {
    base = editable(vm);
    textarea.value = base;
    notice.replaceChildren();
    showProblems([]);
    refresh();
  };
  const lineHeight = () => parseFloat(getComputedStyle(textarea).lineHeight) || 20;
  const topOf = (line: number) => parseFloat(getComputedStyle(textarea).paddingTop) + (line - 1) * lineHeight() - textarea.scrollTop;

  /** Line numbers (error lines marked) and the messages beside their lines, scrolled with the text. */
  const refresh = () => {
    const count = textarea.value.split("\n").length;
    const bad = new Set(shownProblems.map((p) => p.line));
    if (gutter.childElementCount !== count || bad.size) {
      gutter.replaceChildren(...Array.from({ length: count }, (_, i) => el("div", { class: bad.has(i + 1) ? "bad" : "" }, String(i + 1))));
    }
    gutter.scrollTop = textarea.scrollTop;
    marks.replaceChildren(
      ...shownProblems
        .filter((p) => p.line !== null)
        .map((p) => {
          const mark = el("div", { class: "mark", "data-line": String(p.line) }, el("span", {}, p.message));
          mark.style.top = `${topOf(p.line!)}px`;
          mark.style.height = `${lineHeight()}px`;
          return mark;
        }),
    );
  };

  const scrollToLine = (line: number) => {
    textarea.scrollTop = Math.max(0, (line - 3) * lineHeight());
    refresh();
  };
  const goToLine = (line: number) => {
    const lines = textarea.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    textarea.focus();
    textarea.setSelectionRange(start, start + (lines[line - 1] ?? "").length);
    scrollToLine(line);
  };

  function showProblems(list: Problem[], heading = "") {
    shownProblems = list;
    if (!list.length) {
      problems.replaceChildren();
      refresh();
      return;
    }
    const items = list.map((p) => {
      const where = p.line === null ? "" : `Line ${p.line}: `;
      const text = `${where}${p.field ? `${p.field}: ` : ""}${p.message}`;
      if (p.line === null) return el("li", {}, text);
      const button = el("button", { type: "button", class: "link", "data-line": String(p.line) }, text);
      button.addEventListener("click", () => goToLine(p.line!));
      return el("li", {}, button);
    });
    problems.replaceChildren(el("p", { class: "error", role: "alert" }, heading || `${list.length} problem${list.length > 1 ? "s" : ""}: not saved.`), el("ul", {}, ...items));
    const first = list.find((p) => p.line !== null);
    if (first) scrollToLine(first.line!);
    else refresh();
  }

  const offerLatest = (message: string) => {
    const reload = el("button", { type: "button" }, "Load the latest (replaces your edits)");
    reload.addEventListener("click", () => latest && load(latest));
    notice.replaceChildren(el("p", {}, message), reload);
  };

  const submit = async () => {
    const lines = new LineCounter();
    const doc = parseDocument(textarea.value, { lineCounter: lines, prettyErrors: false });
    if (doc.errors.length) {
      showProblems(
        doc.errors.map((e) => ({ line: e.linePos?.[0].line ?? null, field: "", message: e.message.split("\n")[0] })),
        "The YAML does not parse: nothing was sent.",
      );
      return;
    }
    const edited = doc.toJS();
    if (edited?.metadata?.name !== name) {
      showProblems([{ line: lineOfField(doc, lines, "metadata.name").line, field: "metadata.name", message: `must stay ${name} (a VM cannot be renamed)` }]);
      return;
    }
    save.disabled = true;
    status.textContent = "Saving…";
    try {
      const saved = await call("PUT", path, edited);
      load(saved);
      status.textContent = `Saved (resourceVersion ${saved.metadata.resourceVersion}).`;
    } catch (e) {
      status.textContent = "";
      if (e instanceof ApiError && e.code === 409) {
        offerLatest(`Not saved: someone else changed ${name} since you loaded it. ${e.message}`);
      } else {
        const causes: any[] = (e as ApiError).status?.details?.causes ?? [];
        showProblems(
          causes.length
            ? causes.map((c) => ({ line: c.field ? lineOfField(doc, lines, c.field).line : null, field: c.field ?? "", message: c.message ?? c.reason ?? "" }))
            : [{ line: null, field: "", message: (e as Error).message }],
          `The server refused the change: ${(e as Error).message}`,
        );
      }
    } finally {
      save.disabled = false;
    }
  };

  save.addEventListener("click", () => void submit());
  revert.addEventListener("click", () => latest && load(latest));
  textarea.addEventListener("scroll", refresh);
  textarea.addEventListener("input", () => {
    status.textContent = dirty() ? "Edited, not saved." : "";
    refresh();
  });
  textarea.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "s") {
      e.preventDefault();
      void submit();
    }
  });

  const node = el(
    "div",
    { class: "yaml-tab" },
    el("div", { class: "toolbar" }, save, revert, status, el("span", { class: "muted" }, "Ctrl+S saves; Tab leaves the editor.")),
    notice,
    el("label", { for: "vm-yaml", class: "visually-hidden" }, `YAML of ${name}`),
    el("div", { class: "yaml-editor" }, gutter, textarea, marks),
    problems,
  );
  return {
    node,
    update: (vm) => {
      const changed = vm?.metadata.resourceVersion !== latest?.metadata.resourceVersion;
      latest = vm;
      if (!vm || !changed) return;
      if (!dirty()) load(vm);
      else offerLatest(`${name} changed on the server (resourceVersion ${vm.metadata.resourceVersion}) while you were editing.`);
    },
  };
}
