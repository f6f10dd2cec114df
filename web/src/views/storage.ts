// Storage classes: not built yet.

import { Context, View } from "../router";
import { el } from "../dom";

export function storageView(_ctx: Context): View {
  return { node: el("section", {}, el("h2", {}, "Storage classes"), el("p", { class: "muted" }, "Not built yet.")) };
}
