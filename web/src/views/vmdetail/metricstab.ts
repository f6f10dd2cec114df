// The Metrics tab of the VM detail: CPU, memory, disk and network I/O of the VM's instance, from
// the Prometheus text its node's agent serves (through the API server's node proxy), polled every
// 5 s while the tab is open. Series are the kubevirt_vmi_* ones labelled with this instance's
// namespace and name; counters become rates here, between two polls.

import { el } from "../../dom";
import { nodeMetrics, Sample } from "../../metrics";
import { formatBytes } from "../../quantity";
import { lineChart, Point, Scale, Series } from "./chart";

const POLL_MS = 5000;
const WINDOW_MS = 5 * 60 * 1000;

type Chart = { title: string; series: [string, string, "rate" | "gauge"][]; scale: Scale; empty: string };

const CPUS: Scale = { format: (v) => `${Number(v.toPrecision(2))} CPU`, base: 1000, least: 0.01 };
const BYTES: Scale = { format: formatBytes, base: 1024, least: 1024 * 1024 };
const BYTES_PER_SECOND: Scale = { format: (v) => `${formatBytes(v)}/s`, base: 1024, least: 1024 };

const CHARTS: Chart[] = [
  { title: "CPU", series: [["used", "kubevirt_vmi_cpu_usage_seconds_total", "rate"]], scale: CPUS, empty: "No CPU samples for this VM yet." },
  { title: "Memory", series: [["resident", "kubevirt_vmi_memory_resident_bytes", "gauge"]], scale: BYTES, empty: "No memory samples for this VM yet." },
  {
    title: "Disk I/O",
    series: [
      ["read", "kubevirt_vmi_storage_read_traffic_bytes_total", "rate"],
      ["write", "kubevirt_vmi_storage_write_traffic_bytes_total", "rate"],
    ],
    scale: BYTES_PER_SECOND,
    empty: "No disk counters: the VM has no disks (or none reported yet).",
  },
  {
    title: "Network I/O",
    series: [
      ["received", "kubevirt_vmi_network_receive_bytes_total", "rate"],
      ["sent", "kubevirt_vmi_network_transmit_bytes_total", "rate"],
    ],
    scale: BYTES_PER_SECOND,
    empty: "No network counters: the VM has no NICs, or they use user-mode NAT, which has none.",
  },
];

/** The sum over this instance's samples of `metric` (drives and interfaces add up), if any. */
function total(samples: Sample[], metric: string, namespace: string, name: string): number | undefined {
  const mine = samples.filter((s) => s.name === metric && s.labels.namespace === namespace && s.labels.name === name);
  return mine.length ? mine.reduce((sum, s) => sum + s.value, 0) : undefined;
}

export type MetricsTab = { node: HTMLElement; open: () => void };

/** The tab for the VM `name`; `nodeOf` says where its instance runs now ("" when it does not). */
export function metricsTab(namespace: string, name: string, nodeOf: () => string): MetricsTab {
  const charts = el("div", { class: "charts" });
  const status = el("p", { class: "muted", role: "status" });
  const node = el("div", { class: "metrics-tab" }, status, charts);
  const history = new Map<string, Point[]>(); // metric -> points (values or rates)
  const last = new Map<string, Point>(); // counter -> its previous raw reading
  let polling = false;

  const record = (metric: string, kind: "rate" | "gauge", value: number, at: number) => {
    let point: Point | null = [at, value];
    if (kind === "rate") {
      const before = last.get(metric);
      last.set(metric, [at, value]);
      point = before && value >= before[1] && at > before[0] ? [at, (value - before[1]) / ((at - before[0]) / 1000)] : null;
    }
    if (!point) return;
    const points = [...(history.get(metric) ?? []), point].filter(([t]) => t >= at - WINDOW_MS);
    history.set(metric, points);
  };

  const draw = () => {
    charts.replaceChildren(
      ...CHARTS.map((c) => {
        const series: Series[] = c.series.filter(([, metric]) => history.has(metric) || last.has(metric)).map(([label, metric]) => ({ label, points: history.get(metric) ?? [] }));
        return lineChart(c.title, series, c.scale, WINDOW_MS, c.empty);
      }),
    );
  };

  const pollOnce = async () => {
    const where = nodeOf();
    if (!where) {
      status.textContent = `Metrics appear while ${name} runs.`;
      return;
    }
    try {
      const samples = await nodeMetrics(where);
      const at = Date.now();
      for (const chart of CHARTS) {
        for (const [, metric, kind] of chart.series) {
          const value = total(samples, metric, namespace, name);
          if (value !== undefined) record(metric, kind, value, at);
        }
      }
      status.textContent = `From node ${where}'s agent, every ${POLL_MS / 1000} s; last at ${new Date(at).toLocaleTimeString()}.`;
      status.className = "muted";
    } catch (e) {
      status.textContent = `Reading node ${where}'s metrics failed: ${(e as Error).message}`;
      status.className = "error";
    }
    draw();
  };

  /** Polls until the tab's content leaves the page (another tab, another view). */
  const loop = async () => {
    while (node.isConnected) {
      await pollOnce();
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    polling = false;
  };

  return {
    node,
    open: () => {
      draw();
      // The tab's builder runs before its content joins the page: start on the next turn.
      if (polling) return;
      polling = true;
      setTimeout(() => void loop(), 0);
    },
  };
}
