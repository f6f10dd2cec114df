// VM detail: not built yet.

import { Context, View } from "../router";
import { el } from "../dom";

export function vmdetailView(_ctx: Context): View {
  return { node: el("section", {}, el("h2", {}, "VM detail"), el("p", { class: "muted" }, "Not built yet.")) };
}
