// Networks: not built yet.

import { Context, View } from "../router";
import { el } from "../dom";

export function networksView(_ctx: Context): View {
  return { node: el("section", {}, el("h2", {}, "Networks"), el("p", { class: "muted" }, "Not built yet.")) };
}
