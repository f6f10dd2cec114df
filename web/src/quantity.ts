// Kubernetes resource quantities ("2", "500m", "24159804Ki", "1Gi", "128M") as numbers, and
// numbers back as text for people: a VM's CPUs and memory, a node's allocatable, usage.

const SUFFIXES: Record<string, number> = {
  n: 1e-9, u: 1e-6, m: 1e-3, "": 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18,
  Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60,
};

/** The value of a quantity (bytes for memory, cores for CPU); 0 when it is absent or malformed. */
export function parseQuantity(quantity: string | number | undefined): number {
  if (typeof quantity === "number") return quantity;
  const m = /^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$/.exec((quantity ?? "").trim());
  if (!m || !(m[2] in SUFFIXES)) return 0;
  return Number(m[1]) * SUFFIXES[m[2]];
}

/** Bytes in binary units: "128 MiB", "23.0 GiB". */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (Math.abs(bytes) >= 1024 && i < units.length - 1) {
    bytes /= 1024;
    i++;
  }
  return `${i === 0 || bytes >= 100 ? Math.round(bytes) : bytes.toFixed(1)} ${units[i]}`;
}

/** CPUs with at most two decimals: "2", "0.35". */
export function formatCpus(cpus: number): string {
  return String(Math.round(cpus * 100) / 100);
}
