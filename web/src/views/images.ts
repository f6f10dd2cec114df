// Images and volumes: not built yet.

import { Context, View } from "../router";
import { el } from "../dom";

export function imagesView(_ctx: Context): View {
  return { node: el("section", {}, el("h2", {}, "Images and volumes"), el("p", { class: "muted" }, "Not built yet.")) };
}
