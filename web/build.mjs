// Builds the UI into dist/ (or $OUT_DIR): one bundled, minified script, the stylesheet (style.css
// then each view's own views/*.css) and the page. The vmo server embeds dist/ at compile time
// (crates/apiserver/build.rs) and serves it at /ui.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";

const out = process.env.OUT_DIR ?? "dist";
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  minify: true,
  sourcemap: false,
  target: ["chrome110", "firefox110", "safari16"],
  outfile: `${out}/app.js`,
  loader: { ".css": "text" },
  logLevel: "warning",
});
copyFileSync("src/index.html", `${out}/index.html`);
const viewStyles = readdirSync("src/views").filter((f) => f.endsWith(".css")).sort();
const css = [readFileSync("src/style.css", "utf8"), ...viewStyles.map((f) => readFileSync(`src/views/${f}`, "utf8"))];
writeFileSync(`${out}/style.css`, css.join("\n"));
