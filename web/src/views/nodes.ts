// Nodes: not built yet.

import { Context, View } from "../router";
import { el } from "../dom";

export function nodesView(_ctx: Context): View {
  return { node: el("section", {}, el("h2", {}, "Nodes"), el("p", { class: "muted" }, "Not built yet.")) };
}
