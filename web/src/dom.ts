// Small DOM helpers: elements from a tag, attributes and children; ages as kubectl prints them;
// a polite live region for results of actions.

export function el(tag: string, attrs: Record<string, string> = {}, ...children: (Node | string)[]): HTMLElement {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

export function age(timestamp: string): string {
  if (!timestamp) return "";
  const seconds = Math.max(0, Math.floor((Date.now() - Date.parse(timestamp)) / 1000));
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 172800) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

export function toast(message: string, error = false) {
  const region = document.getElementById("toast");
  if (!region) return;
  region.textContent = message;
  region.className = error ? "error" : "muted";
}
