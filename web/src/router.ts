// Views and their URLs under /ui/: each view is a function from the context (namespace, route
// parameters) to a node and a `stop` that ends its watches. Links change the URL without a reload.

export type View = { node: HTMLElement; stop?: () => void };

export type Context = {
  /** The namespace chosen in the header. */
  namespace: string;
  /** All namespaces the user can see. */
  namespaces: string[];
  /** Parameters from the route's `:name` parts. */
  params: Record<string, string>;
  /** Goes to another view (a path under /ui/, like "vms/demo"). */
  navigate: (path: string) => void;
};

export type Route = { pattern: string; title: string; nav?: boolean; view: (ctx: Context) => View };

/** The route matching `path` (without the /ui/ prefix), with its parameters. */
export function match(routes: Route[], path: string): { route: Route; params: Record<string, string> } | null {
  const parts = path.split("/").filter(Boolean);
  for (const route of routes) {
    const pattern = route.pattern.split("/").filter(Boolean);
    if (pattern.length !== parts.length) continue;
    const params: Record<string, string> = {};
    if (pattern.every((p, i) => (p.startsWith(":") ? ((params[p.slice(1)] = decodeURIComponent(parts[i])), true) : p === parts[i]))) {
      return { route, params };
    }
  }
  return null;
}

/** The path under /ui/ the browser shows now. */
export function currentPath(): string {
  return location.pathname.replace(/^\/ui\/?/, "");
}

/** A link to a view that navigates without a reload. */
export function link(ctx: Pick<Context, "navigate">, path: string, text: string, attrs: Record<string, string> = {}): HTMLAnchorElement {
  const a = document.createElement("a");
  a.href = `/ui/${path}`;
  a.textContent = text;
  for (const [k, v] of Object.entries(attrs)) a.setAttribute(k, v);
  a.addEventListener("click", (e) => {
    if (e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    ctx.navigate(path);
  });
  return a;
}
