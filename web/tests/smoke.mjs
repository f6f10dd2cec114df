// The web UI in real headless Chromium (Debian's `chromium`, driven by playwright-core): sign in
// (a wrong token refused, the right one accepted), see the namespace's VMs, see a VM created
// meanwhile appear without a reload, start a stopped VM and watch it reach Running, stop it and
// watch it reach Stopped. Screenshots go to the artifacts directory.
//
// Usage: node tests/smoke.mjs URL TOKEN ARTIFACTS_DIR NEW_VM_JSON_FILE
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";

const [url, token, artifacts, newVmFile] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const newVm = readFileSync(newVmFile, "utf8");
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--ignore-certificate-errors"] });
const step = (what) => console.log(`step: ${what}`);
try {
  const page = await browser.newPage({ ignoreHTTPSErrors: true, viewport: { width: 1366, height: 800 } });
  page.on("pageerror", (e) => console.log(`page error: ${e.message}`));
  await page.goto(`${url}/ui/`);

  step("a wrong token is refused");
  await page.getByLabel("Token").fill("not-a-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "That token was not accepted." }).waitFor();
  await page.screenshot({ path: `${artifacts}/signin.png` });

  step("the right token signs in and shows the VMs");
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  const demo = page.locator('tr[data-vm="demo"]');
  await demo.waitFor();
  await demo.locator("td.status").filter({ hasText: /^(Stopped|Halted)$/ }).waitFor();
  // Marks this document: a reload would lose the mark.
  await page.evaluate(() => { window.__noReload = true; });

  step("a VM created elsewhere appears without a reload");
  const created = await page.evaluate(async ([body, t]) => {
    const r = await fetch("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", {
      method: "POST",
      headers: { Authorization: `Bearer ${t}`, "Content-Type": "application/json" },
      body,
    });
    return r.status;
  }, [newVm, token]);
  if (created !== 201) throw new Error(`creating the VM answered ${created}`);
  const name = JSON.parse(newVm).metadata.name;
  await page.locator(`tr[data-vm="${name}"]`).waitFor();

  step("search narrows the table");
  await page.getByLabel("Search VMs").fill(name);
  await demo.waitFor({ state: "detached" });
  await page.getByLabel("Search VMs").fill("");
  await demo.waitFor();

  step("Start runs the VM and the table shows it Running");
  await page.getByRole("button", { name: "Start demo", exact: true }).click();
  await demo.locator("td.status").filter({ hasText: /^Running$/ }).waitFor({ timeout: 120000 });
  await page.screenshot({ path: `${artifacts}/vms.png` });

  step("Stop stops it and the table shows it Stopped");
  await page.getByRole("button", { name: "Stop demo", exact: true }).click();
  await demo.locator("td.status").filter({ hasText: /^Stopped$/ }).waitFor({ timeout: 120000 });
  if (!(await page.evaluate(() => window.__noReload === true))) throw new Error("the page reloaded");

  step("sign out returns to the sign-in form");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Token").waitFor();
  console.log("smoke: ok");
} finally {
  await browser.close();
}
