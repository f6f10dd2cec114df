// Prometheus text exposition (what a node agent serves at /api/v1/nodes/NODE/proxy/metrics:
// kubevirt_vmi_* per instance, vmo_node_* and vmo_agent_* per node) parsed into samples.

import { ApiError, token } from "./api";

export type Sample = { name: string; labels: Record<string, string>; value: number };

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

function unescapeLabel(value: string): string {
  return value.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
}

/** The samples of a Prometheus text body; comments and malformed lines are skipped. */
export function parsePrometheus(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const [, key, value] of (m[2] ?? "").matchAll(LABEL)) labels[key] = unescapeLabel(value);
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

/** The sum of the samples named `name`. */
export function sumOf(samples: Sample[], name: string): number {
  return samples.filter((s) => s.name === name).reduce((total, s) => total + s.value, 0);
}

/** A node's metrics, through the API server's node proxy; a failure carries the server's message. */
export async function nodeMetrics(node: string): Promise<Sample[]> {
  const response = await fetch(`/api/v1/nodes/${encodeURIComponent(node)}/proxy/metrics`, {
    headers: { Accept: "text/plain", Authorization: `Bearer ${token() ?? ""}` },
  });
  const text = await response.text();
  if (!response.ok) {
    let message = text || response.statusText;
    try {
      message = JSON.parse(text).message ?? message;
    } catch {
      // not a Status: keep the text
    }
    throw new ApiError(message, response.status);
  }
  return parsePrometheus(text);
}
