// Builds the UI into dist/ (or $OUT_DIR): one bundled, minified ES module (noVNC uses top-level
// await, so the page loads it with <script type="module">), the stylesheet (style.css, the npm
// packages' stylesheets, then each view's own views/*.css: never inline, the page's CSP forbids
// it) and the page. The vmo server embeds dist/ at compile time
// (crates/apiserver/build.rs) and serves it at /ui.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";

const out = process.env.OUT_DIR ?? "dist";
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  format: "esm",
  minify: true,
  sourcemap: false,
  target: ["chrome110", "firefox110", "safari16"],
  outfile: `${out}/app.js`,
  loader: { ".css": "text" },
  logLevel: "warning",
});
copyFileSync("src/index.html", `${out}/index.html`);
const viewStyles = readdirSync("src/views").filter((f) => f.endsWith(".css")).sort();
const packageStyles = ["node_modules/@xterm/xterm/css/xterm.css"];
const css = [readFileSync("src/style.css", "utf8"), ...packageStyles.map((f) => readFileSync(f, "utf8")), ...viewStyles.map((f) => readFileSync(`src/views/${f}`, "utf8"))];
writeFileSync(`${out}/style.css`, css.join("\n"));
