// vmo's web UI: sign-in with a token, the shell (navigation, namespace switcher, sign-out) and the
// views, each kept live by watches. Everything it loads comes from the vmo server; nothing from
// the internet.

import { ApiError, call, setToken, token } from "./api";
import { el } from "./dom";
import { Context, currentPath, link, match, Route, View } from "./router";
import { consoleView } from "./views/console";
import { createView } from "./views/create";
import { dashboardView } from "./views/dashboard";
import { imagesView } from "./views/images";
import { networksView } from "./views/networks";
import { nodesView } from "./views/nodes";
import { storageView } from "./views/storage";
import { vmdetailView } from "./views/vmdetail";
import { vmsView } from "./views/vms";

const ROUTES: Route[] = [
  { pattern: "", title: "Dashboard", nav: true, view: dashboardView },
  { pattern: "vms", title: "Virtual machines", nav: true, view: vmsView },
  { pattern: "create", title: "Create VM", nav: true, view: createView },
  { pattern: "vms/:name", title: "Virtual machine", view: vmdetailView },
  { pattern: "vms/:name/console", title: "Console", view: consoleView },
  { pattern: "images", title: "Images and volumes", nav: true, view: imagesView },
  { pattern: "nodes", title: "Nodes", nav: true, view: nodesView },
  { pattern: "networks", title: "Networks", nav: true, view: networksView },
  { pattern: "storage", title: "Storage classes", nav: true, view: storageView },
];

const app = document.getElementById("app")!;
let current: View | null = null;

function stopCurrent() {
  current?.stop?.();
  current = null;
}

function signIn(message = "") {
  stopCurrent();
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
  let namespace = chosen && namespaces.includes(chosen) ? chosen : namespaces.includes("default") ? "default" : namespaces[0] ?? "default";
  const picker = el("select", { id: "namespace" }) as HTMLSelectElement;
  for (const ns of namespaces) {
    const option = el("option", { value: ns }, ns) as HTMLOptionElement;
    option.selected = ns === namespace;
    picker.append(option);
  }
  const main = el("main", { id: "main", tabindex: "-1" });
  const nav = el("nav", { "aria-label": "Views" });
  const navigate = (path: string, push = true) => {
    if (push && path !== currentPath()) history.pushState(null, "", `/ui/${path}`);
    show();
  };
  const ctx = { navigate };
  for (const route of ROUTES.filter((r) => r.nav)) nav.append(link(ctx, route.pattern, route.title, { "data-path": route.pattern }));
  const show = () => {
    stopCurrent();
    const path = currentPath();
    const found = match(ROUTES, path);
    for (const a of nav.querySelectorAll("a")) {
      if (a.getAttribute("data-path") === path) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (!found) {
      main.replaceChildren(el("section", {}, el("h2", {}, "Not found"), el("p", {}, `vmo's UI has no page at /ui/${path}. `), link(ctx, "", "Go to the dashboard")));
      return;
    }
    const context: Context = { namespace, namespaces, params: found.params, navigate };
    current = found.route.view(context);
    document.title = `${found.route.title} · vmo`;
    main.replaceChildren(current.node);
  };
  picker.addEventListener("change", () => {
    namespace = picker.value;
    localStorage.setItem("vmo.namespace", namespace);
    // A VM's pages belong to its namespace: go back to the list of the new one.
    if (currentPath().startsWith("vms/")) navigate("vms");
    else show();
  });
  const signOut = el("button", { type: "button" }, "Sign out");
  signOut.addEventListener("click", () => {
    setToken(null);
    signIn();
  });
  window.onpopstate = () => show();
  app.replaceChildren(
    el("a", { class: "skip", href: "#main" }, "Skip to content"),
    el(
      "header",
      {},
      el("h1", {}, "vmo"),
      el("label", { for: "namespace" }, "Namespace", picker),
      el("span", { class: "spacer" }),
      el("p", { id: "toast", class: "muted", role: "status", "aria-live": "polite" }),
      signOut,
    ),
    el("div", { class: "layout" }, nav, main),
  );
  show();
}

if (token()) void shell();
else signIn();
