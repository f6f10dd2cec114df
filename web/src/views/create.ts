// Create VM: not built yet.

import { Context, View } from "../router";
import { el } from "../dom";

export function createView(_ctx: Context): View {
  return { node: el("section", {}, el("h2", {}, "Create VM"), el("p", { class: "muted" }, "Not built yet.")) };
}
