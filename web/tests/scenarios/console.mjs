// The consoles: reached from the VM list and the VM's page, the serial console of a stopped VM
// says so and connects by itself when the VM starts; it shows the running guest (its boot marker,
// and a command typed into the guest's shell on ttyS0 answers); a second session takes it over
// (the page says so, and Reconnect takes it back); the VNC tab shows the guest's screen on a
// connected canvas with non-blank pixels.
import { api, kernelBootVm, until } from "../lib.mjs";

const VMS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

/** The text the serial terminal shows now. */
function terminalText(page) {
  return page.locator(".serial-terminal .xterm-rows").innerText().catch(() => "");
}

/** Opens the VM's console page from the VM list and the VM's page (by URL if that has no link yet). */
async function openConsole(t, name) {
  const { page } = t;
  await page.getByRole("link", { name: "Virtual machines", exact: true }).click();
  await page.locator(`tr[data-vm="${name}"]`).getByRole("link", { name, exact: true }).click();
  const consoleLink = page.locator(`main a[href="/ui/vms/${name}/console"]`).first();
  const linked = await consoleLink.waitFor({ timeout: 5000 }).then(() => true, () => false);
  if (linked) await consoleLink.click();
  else {
    t.step("console: the VM's page has no console link yet; going there by URL");
    await page.evaluate((path) => {
      history.pushState(null, "", path);
      dispatchEvent(new PopStateEvent("popstate"));
    }, `/ui/vms/${name}/console`);
  }
  await page.getByRole("heading", { name: `Console: ${name}` }).waitFor();
}

/** Types a command into the guest's shell until its answer shows (the shell may still be starting). */
async function typeUntilAnswered(t, command, answer) {
  const { page } = t;
  await until(`the guest's answer ${answer}`, async () => {
    await page.locator(".serial-terminal .xterm-helper-textarea").focus();
    await page.keyboard.type(`${command}\n`);
    return until(answer, async () => (await terminalText(page)).includes(answer), 8000).catch(() => false);
  }, 120000);
}

/** True when the VNC canvas shows more than one colour. */
async function vncShowsPixels(page) {
  return page.evaluate(() => {
    const canvas = document.querySelector(".vnc-screen canvas");
    if (!canvas || !canvas.width || !canvas.height) return false;
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 4; i < data.length; i += 4) {
      if (data[i] !== data[0] || data[i + 1] !== data[1] || data[i + 2] !== data[2]) return true;
    }
    return false;
  });
}

export default async function (t) {
  const { page, step } = t;
  const name = t.state.wizardVm ?? "console-demo";
  const created = !t.state.wizardVm;
  if (created) {
    const answer = await api(t, "POST", VMS, kernelBootVm(t, name, "Halted"));
    if (answer.status !== 201) throw new Error(`creating ${name} answered ${answer.status}: ${JSON.stringify(answer.body)}`);
  }

  step("console: open it through the VM list and the VM's page");
  await openConsole(t, name);
  const serialStatus = page.locator(".console-bar .console-message");

  if (created) {
    step("console: a stopped VM's console says so, then connects by itself when the VM starts");
    await serialStatus.filter({ hasText: `${name} is not running.` }).waitFor();
    const started = await api(t, "PUT", `/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/${name}/start`, {});
    if (started.status !== 200 && started.status !== 202) throw new Error(`starting ${name} answered ${started.status}: ${JSON.stringify(started.body)}`);
  }
  step("console: the serial console connects once the VM runs");
  await serialStatus.filter({ hasText: `Connected to ${name}'s serial console.` }).waitFor({ timeout: 150000 });

  step("console: the guest's boot marker shows, or its shell answers a typed command");
  const sawMarker = await until("the boot marker", async () => (await terminalText(page)).includes("VMO-GUEST: ready"), 20000).catch(() => false);
  step(sawMarker ? "console: saw VMO-GUEST: ready" : "console: the marker came before attaching; typing a command");
  await typeUntilAnswered(t, "echo VMO-UI-$((6*7))", "VMO-UI-42");
  await page.screenshot({ path: `${t.artifacts}/console.png` });

  step("console: Ctrl+] leaves the terminal for its buttons");
  await page.keyboard.press("Control+BracketRight");
  const focused = await page.evaluate(() => document.activeElement?.textContent);
  if (focused !== "Disconnect") throw new Error(`Ctrl+] left the focus on ${JSON.stringify(focused)}, not the Disconnect button`);

  step("console: another session takes the serial console over; Reconnect takes it back");
  await page.evaluate(
    ([path, token]) => {
      const encoded = btoa(token).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
      const ws = new WebSocket(`wss://${location.host}${path}`, ["plain.kubevirt.io", `base64url.bearer.authorization.k8s.io.${encoded}`]);
      window.__otherConsole = ws;
    },
    [`/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/${name}/console`, t.token],
  );
  await serialStatus.filter({ hasText: "Another session took" }).waitFor();
  await page.evaluate(() => window.__otherConsole.close());
  await page.getByRole("button", { name: "Reconnect" }).click();
  await serialStatus.filter({ hasText: `Connected to ${name}'s serial console.` }).waitFor();
  await typeUntilAnswered(t, "echo VMO-UI-$((7*7))", "VMO-UI-49");

  step("console: the VNC tab shows the guest's screen");
  await page.getByRole("tab", { name: "VNC" }).click();
  await page.locator(".console-bar .console-message").filter({ hasText: `Connected to ${name}'s VNC console.` }).waitFor({ timeout: 60000 });
  await until("non-blank pixels on the VNC canvas", () => vncShowsPixels(page), 60000);
  await page.getByRole("button", { name: "Send Ctrl+Alt+Del" }).waitFor();
  await page.screenshot({ path: `${t.artifacts}/vnc.png` });

  step("console: back to the serial tab, then to the VM's page");
  await page.getByRole("tab", { name: "Serial console" }).click();
  await serialStatus.filter({ hasText: `Connected to ${name}'s serial console.` }).waitFor();
  if (created) {
    step("console: stopping the VM ends the session and the page says it is not running");
    await api(t, "PUT", `/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/${name}/stop`, {});
    await serialStatus.filter({ hasText: new RegExp(`${name} is not running|${name}'s instance has ended`) }).waitFor({ timeout: 120000 });
    await page.locator(".serial-terminal .xterm-rows").filter({ hasText: "[disconnected]" }).waitFor();
  }
  await page.getByRole("link", { name: `Back to ${name}` }).click();
  if (created) await api(t, "DELETE", `${VMS}/${name}`);
}
