// A small SVG line chart for the VM detail's metrics: one or two series over the last minutes,
// a y axis from 0 to a round maximum and a time axis, both labelled, a legend with the latest
// values, and a text alternative saying the same for screen readers.

import { el } from "../../dom";

export type Point = [number, number]; // [time in ms, value]
export type Series = { label: string; points: Point[] };

/** How values read: `format` writes one with its unit; `base` 1024 for bytes; `least` the smallest axis maximum. */
export type Scale = { format: (v: number) => string; base: number; least: number };

const MINUTE = 60000;

const SVG = "http://www.w3.org/2000/svg";
const [WIDTH, HEIGHT] = [420, 150];
const PLOT = { left: 64, right: 8, top: 10, bottom: 24 };

function svg(tag: string, attrs: Record<string, string | number>, text = ""): SVGElement {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text) node.textContent = text;
  return node;
}

/** The axis maximum: 1, 2 or 5 times a power of ten of the unit (1000 or 1024), at least `value`. */
function roundUp(value: number, base: number): number {
  if (value <= 0) return 1;
  const unit = base ** Math.max(0, Math.floor(Math.log(value) / Math.log(base)));
  const scaled = value / unit;
  const power = 10 ** Math.floor(Math.log10(scaled));
  return ([1, 2, 5, 10].find((m) => m * power >= scaled) ?? 10) * power * unit;
}

function clock(ms: number): string {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** A chart of `series` since their first point (one to `maxWindowMs` back) until now. */
export function lineChart(title: string, series: Series[], scale: Scale, maxWindowMs: number, empty: string): HTMLElement {
  const { format } = scale;
  const now = Date.now();
  const first = Math.min(now, ...series.map((s) => s.points[0]?.[0] ?? now));
  const windowMs = Math.min(maxWindowMs, Math.max(MINUTE, now - first));
  const start = now - windowMs;
  const values = series.flatMap((s) => s.points.map(([, v]) => v));
  const points = Math.max(0, ...series.map((s) => s.points.length));
  const figure = el("figure", { class: "chart", "data-points": String(points), "data-title": title });
  const caption = el("figcaption", {}, el("strong", {}, title));
  figure.append(caption);
  if (points < 2) {
    figure.append(el("p", { class: "muted empty" }, points ? "Collecting: the next sample draws the line." : empty));
    return figure;
  }
  const max = roundUp(Math.max(scale.least, ...values), scale.base);
  const [w, h] = [WIDTH - PLOT.left - PLOT.right, HEIGHT - PLOT.top - PLOT.bottom];
  const x = (t: number) => PLOT.left + ((t - start) / windowMs) * w;
  const y = (v: number) => PLOT.top + h - (v / max) * h;
  const summary = series.map((s) => `${s.label}: latest ${format(s.points.at(-1)?.[1] ?? 0)}, peak ${format(Math.max(...s.points.map(([, v]) => v)))}`).join("; ");
  const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": `${title} over the last ${Math.round(windowMs / 1000)} seconds. ${summary}.` });
  for (const fraction of [0, 0.5, 1]) {
    const level = y(max * fraction);
    chart.append(svg("line", { x1: PLOT.left, x2: WIDTH - PLOT.right, y1: level, y2: level, class: "grid" }));
    chart.append(svg("text", { x: PLOT.left - 6, y: level + 4, "text-anchor": "end", class: "axis" }, format(max * fraction)));
  }
  chart.append(svg("text", { x: PLOT.left, y: HEIGHT - 6, "text-anchor": "start", class: "axis" }, clock(start)));
  chart.append(svg("text", { x: WIDTH - PLOT.right, y: HEIGHT - 6, "text-anchor": "end", class: "axis" }, clock(now)));
  series.forEach((s, i) => {
    const visible = s.points.filter(([t]) => t >= start);
    chart.append(svg("polyline", { points: visible.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "), class: `line series-${i}` }));
  });
  figure.append(chart);
  const legend = el("ul", { class: "legend" }, ...series.map((s, i) => el("li", {}, el("span", { class: `swatch series-${i}`, "aria-hidden": "true" }), `${s.label}: ${format(s.points.at(-1)?.[1] ?? 0)}`)));
  figure.append(legend);
  return figure;
}
