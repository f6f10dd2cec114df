// vmo's web UI: sign-in with a token, a namespace switcher, sign-out, and the VMs view kept live
// by watches. Everything it loads comes from the vmo server; nothing from the internet.

import { ApiError, call, setToken, token } from "./api";
import { el } from "./dom";
import { vmsView } from "./vms";

const app = document.getElementById("app")!;
let stopView: (() => void) | null = null;

function signIn(message = "") {
  stopView?.();
  stopView = null;
  const input = el("input", { id: "token", type: "password", autocomplete: "current-password", required: "" }) as HTMLInputElement;
  const error = el("p", { class: "error", role: "alert" }, message);
  const form = el(
    "form",
    { class: "signin", "aria-label": "Sign in" },
    el("h1", {}, "Sign in to vmo"),
    el("label", { for: "token" }, "Token"),
    input,
    el("p", { class: "muted" }, "The bearer token from your kubeconfig (vmo up writes one)."),
    error,
    el("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    try {
      await call("GET", "/api/v1/namespaces");
      void shell();
    } catch (err) {
      setToken(null);
      error.textContent = err instanceof ApiError && err.code === 401 ? "That token was not accepted." : (err as Error).message;
    }
  });
  app.replaceChildren(form);
  input.focus();
}

async function shell() {
  let namespaces: string[];
  try {
    const list = await call("GET", "/api/v1/namespaces");
    namespaces = (list.items ?? []).map((n: any) => n.metadata.name);
  } catch (e) {
    return signIn(e instanceof ApiError && e.code === 401 ? "Your session ended: sign in again." : (e as Error).message);
  }
  const chosen = localStorage.getItem("vmo.namespace");
  const current = chosen && namespaces.includes(chosen) ? chosen : namespaces.includes("default") ? "default" : namespaces[0] ?? "default";
  const picker = el("select", { id: "namespace" }) as HTMLSelectElement;
  for (const ns of namespaces) {
    const option = el("option", { value: ns }, ns) as HTMLOptionElement;
    option.selected = ns === current;
    picker.append(option);
  }
  const main = el("main");
  const show = (ns: string) => {
    stopView?.();
    const view = vmsView(ns);
    stopView = view.stop;
    main.replaceChildren(view.node);
  };
  picker.addEventListener("change", () => {
    localStorage.setItem("vmo.namespace", picker.value);
    show(picker.value);
  });
  const signOut = el("button", { type: "button" }, "Sign out");
  signOut.addEventListener("click", () => {
    setToken(null);
    signIn();
  });
  app.replaceChildren(
    el(
      "header",
      {},
      el("h1", {}, "vmo"),
      el("label", { for: "namespace" }, "Namespace", picker),
      el("span", { class: "spacer" }),
      el("p", { id: "toast", class: "muted", role: "status", "aria-live": "polite" }),
      signOut,
    ),
    main,
  );
  show(current);
}

if (token()) void shell();
else signIn();
