// Console: not built yet.

import { Context, View } from "../router";
import { el } from "../dom";

export function consoleView(_ctx: Context): View {
  return { node: el("section", {}, el("h2", {}, "Console"), el("p", { class: "muted" }, "Not built yet.")) };
}
