// What the UI scenarios share: calling the API as the signed-in user from inside the page (so the
// browser's view of the server is what is tested), VM manifests for the test guest, and waiting.

/** Calls the vmo API from the page with the test's token; returns {status, body}. */
export async function api(t, method, path, body) {
  return t.page.evaluate(
    async ([method, path, body, token]) => {
      const r = await fetch(path, {
        method,
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", Accept: "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        // A request the page cannot make (all its connections busy, say) fails the step, not the run's clock.
        signal: AbortSignal.timeout(60000),
      });
      const text = await r.text();
      let parsed = null;
      try { parsed = text ? JSON.parse(text) : null; } catch { parsed = text; }
      return { status: r.status, body: parsed };
    },
    [method, path, body, t.token],
  );
}

/** A stopped VirtualMachine that boots the test guest's kernel (reaching Running in seconds). */
export function kernelBootVm(t, name, runStrategy = "Halted") {
  const f = t.fixtures;
  return {
    apiVersion: "kubevirt.io/v1",
    kind: "VirtualMachine",
    metadata: { name, namespace: "default" },
    spec: {
      runStrategy,
      template: {
        spec: {
          terminationGracePeriodSeconds: 5,
          domain: {
            memory: { guest: "128Mi" },
            firmware: { kernelBoot: { kernelArgs: f.kernelArgs, container: { kernelPath: f.kernel, initrdPath: f.initrd } } },
            devices: {},
          },
        },
      },
    },
  };
}

/** Polls `check` (an async function returning a truthy value when done) until `ms` pass. */
export async function until(what, check, ms = 120000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}
