// Dashboard: not built yet.

import { Context, View } from "../router";
import { el } from "../dom";

export function dashboardView(_ctx: Context): View {
  return { node: el("section", {}, el("h2", {}, "Dashboard"), el("p", { class: "muted" }, "Not built yet.")) };
}
