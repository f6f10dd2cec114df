// The web UI's end-to-end scenarios in real headless Chromium (Debian's `chromium`, driven by
// playwright-core) against a running vmo server: sign in, then each scenario in order, in one
// page (so a reload anywhere is caught), then sign out. Screenshots go to the artifacts directory.
//
// Usage: node tests/run.mjs URL TOKEN ARTIFACTS_DIR FIXTURES_JSON [SCENARIO...]
//   FIXTURES_JSON: {"kernel", "initrd", "kernelArgs", "disk"} paths of the test guest (disk: a
//   bootable qcow2 image); SCENARIO: names under tests/scenarios (default: all, in ORDER).
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";

const ORDER = ["vms", "images", "create", "console", "detail", "nodes", "networks", "dashboard"];

const [url, token, artifacts, fixturesFile, ...only] = process.argv.slice(2);
if (!fixturesFile) {
  console.error("usage: node tests/run.mjs URL TOKEN ARTIFACTS_DIR FIXTURES_JSON [SCENARIO...]");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const fixtures = JSON.parse(readFileSync(fixturesFile, "utf8"));
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--ignore-certificate-errors"] });
const began = Date.now();
const step = (what) => console.log(`step: [${((Date.now() - began) / 1000).toFixed(1)} s] ${what}`);
const errors = [];
try {
  const page = await browser.newPage({ ignoreHTTPSErrors: true, viewport: { width: 1366, height: 800 } });
  page.setDefaultTimeout(30000);
  page.on("pageerror", (e) => {
    console.log(`page error: ${e.message}`);
    errors.push(e.message);
  });
  const t = { page, url, token, artifacts, fixtures, step, state: {} };
  await page.goto(`${url}/ui/`);

  step("signin: a wrong token is refused");
  await page.getByLabel("Token").fill("not-a-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "That token was not accepted." }).waitFor();
  await page.screenshot({ path: `${artifacts}/signin.png` });
  step("signin: the right token signs in");
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("navigation", { name: "Views" }).waitFor();
  // Marks this document: a reload would lose the mark.
  await page.evaluate(() => { window.__noReload = true; });

  for (const name of only.length ? only : ORDER) {
    console.log(`scenario: ${name} [${((Date.now() - began) / 1000).toFixed(1)} s]`);
    const scenario = await import(`./scenarios/${name}.mjs`);
    await scenario.default(t);
    if (!(await page.evaluate(() => window.__noReload === true))) throw new Error(`the page reloaded during ${name}`);
  }

  step("signout: back to the sign-in form");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Token").waitFor();
  if (errors.length) throw new Error(`the page threw: ${errors.join("; ")}`);
  console.log("web ui: ok");
} finally {
  await browser.close();
}
