// Measures the VM list with many VMs in real headless Chromium (driven by playwright-core):
//  1. load: navigation start -> the list says it shows every VM and its first rows are painted,
//     over several page loads (fresh tabs); then scrolling to the last VM's row and back;
//  2. live: while VMs change at RATE updates per second (label patches, each a watch event the
//     page handles), the time from typing a search to the table showing only the match, and the
//     longest main-thread task (PerformanceObserver "longtask") seen meanwhile.
// Prints one JSON line with the results; the Rust bench (crates/vmo/benches/web.rs) starts the
// server and the VMs and records them.
//
// Usage: node bench/vmlist.mjs URL TOKEN COUNT [LOADS] [RATE]
import { chromium } from "playwright-core";

const [url, token, countText, loadsText = "5", rateText = "50"] = process.argv.slice(2);
const count = Number(countText);
const loads = Number(loadsText);
const rate = Number(rateText);
process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox", "--ignore-certificate-errors"] });
const log = (what) => console.error(`vmlist: ${what}`);
const quantile = (values, q) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
};
try {
  // Each load in a fresh tab: the time is the page's own, not that of unloading the previous one.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1920, height: 1080 } });
  await context.addInitScript((t) => {
    sessionStorage.setItem("vmo.token", t);
    window.__longest = 0;
    // The list shows all `n` VMs: its count says so and its first rows are in the table (the
    // table holds only the rows in and near the window).
    window.__listed = (n) =>
      document.querySelector("section .live")?.textContent === `${n} of ${n} VMs` &&
      document.querySelectorAll("tbody tr[data-vm]").length >= Math.min(n, 10);
    // Resolves at the first animation frame where check() holds; rejects after 60 s.
    window.__frameUntil = (check, started) =>
      new Promise((resolve, reject) => {
        const poll = () => {
          if (check()) resolve(performance.now() - started);
          else if (performance.now() - started > 60000)
            reject(new Error(`not within 60 s: ${document.querySelectorAll("tbody tr[data-vm]").length} rows`));
          else requestAnimationFrame(poll);
        };
        poll();
      });
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.__longest = Math.max(window.__longest, e.duration);
    }).observe({ type: "longtask", buffered: true });
  }, token);

  const loadTimes = [];
  let page = null;
  for (let i = 0; i < loads; i++) {
    await page?.close();
    page = await context.newPage();
    await page.goto(`${url}/ui/vms`);
    const ms = await page.evaluate((n) => window.__frameUntil(() => window.__listed(n), 0), count);
    log(`load ${i + 1}: ${Math.round(ms)} ms`);
    loadTimes.push(ms);
  }

  // Scrolling: from the top to the last VM's row, and back to the first.
  const scrollTimes = [];
  for (const [where, name] of [["end", `vm-${String(count - 1).padStart(4, "0")}`], ["top", "vm-0000"]]) {
    const ms = await page.evaluate(
      ([where, name]) => {
        const t0 = performance.now();
        window.scrollTo(0, where === "end" ? document.documentElement.scrollHeight : 0);
        return window.__frameUntil(() => !!document.querySelector(`tbody tr[data-vm="${name}"]`), t0);
      },
      [where, name],
    );
    log(`scroll to the ${where}: ${Math.round(ms)} ms`);
    scrollTimes.push(ms);
  }

  // Live updates from outside the page while the user searches.
  let running = true;
  let sent = 0;
  const updater = (async () => {
    const interval = 1000 / rate;
    while (running) {
      const started = Date.now();
      const name = `vm-${String(sent % count).padStart(4, "0")}`;
      void fetch(`${url}/apis/kubevirt.io/v1/namespaces/default/virtualmachines/${name}`, {
        method: "PATCH",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/merge-patch+json" },
        body: JSON.stringify({ metadata: { labels: { tick: String(sent) } } }),
      }).catch(() => {});
      sent++;
      await new Promise((r) => setTimeout(r, Math.max(0, interval - (Date.now() - started))));
    }
  })();
  await page.evaluate(() => { window.__longest = 0; });
  const searchTimes = [];
  const search = page.getByLabel("Search VMs");
  for (let i = 0; i < 10; i++) {
    const target = `vm-${String((i * 97) % count).padStart(4, "0")}`;
    const ms = await page.evaluate(
      (target) => {
        const input = document.querySelector('input[type="search"]');
        const t0 = performance.now();
        input.value = target;
        input.dispatchEvent(new Event("input", { bubbles: true }));
        return window.__frameUntil(() => {
          const rows = document.querySelectorAll("tbody tr[data-vm]");
          return rows.length === 1 && rows[0].getAttribute("data-vm") === target;
        }, t0);
      },
      target,
    );
    log(`search ${target}: ${Math.round(ms)} ms`);
    searchTimes.push(ms);
    await search.fill("");
    await page.waitForFunction((n) => window.__listed(n), count);
    // A second of updates alone between searches, so the page handles the stream for the whole run.
    await page.waitForTimeout(1000);
  }
  const longest = await page.evaluate(() => window.__longest);
  running = false;
  await updater;
  console.log(
    JSON.stringify({
      vms: count,
      load_ms_p50: Math.round(quantile(loadTimes, 0.5)),
      load_ms_max: Math.round(Math.max(...loadTimes)),
      scroll_ms_max: Math.round(Math.max(...scrollTimes)),
      search_ms_p50: Math.round(quantile(searchTimes, 0.5)),
      search_ms_max: Math.round(Math.max(...searchTimes)),
      longest_task_ms: Math.round(longest),
      updates_per_s: rate,
      updates_sent: sent,
    }),
  );
} finally {
  await browser.close();
}
