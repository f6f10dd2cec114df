// Networks and storage classes: a VLAN network created through the form is listed with its VLAN
// (and a refused one shows the server's message in the form), and the storage classes are listed
// with the default one marked; a Service made elsewhere appears with its ports.
import { api } from "../lib.mjs";

export default async function (t) {
  const { page, step } = t;
  await api(t, "DELETE", "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions/vlan30");
  await page.getByRole("navigation", { name: "Views" }).getByRole("link", { name: "Networks", exact: true }).click();

  step("networks: an invalid VLAN network is refused with the server's message");
  await page.getByRole("button", { name: "Create VLAN network" }).click();
  const dialog = page.getByRole("dialog", { name: "Create a VLAN network" });
  await dialog.getByLabel("Name", { exact: true }).fill("bad-bridge");
  await dialog.getByLabel("Bridge").fill("br 0/x");
  await dialog.getByLabel("VLAN ID").fill("30");
  await dialog.getByRole("button", { name: "Create" }).click();
  await dialog.getByRole("alert").filter({ hasText: "spec.config.bridge" }).waitFor();

  step("networks: the form creates vlan30 and the table lists it on VLAN 30");
  await dialog.getByLabel("Name", { exact: true }).fill("vlan30");
  await dialog.getByLabel("Bridge").fill("br0");
  await dialog.getByRole("button", { name: "Create" }).click();
  await dialog.waitFor({ state: "detached" });
  const row = page.getByRole("table", { name: "VLAN networks" }).locator('tr[data-name="vlan30"]');
  await row.locator("td", { hasText: /^30$/ }).waitFor();
  await row.locator("td", { hasText: /^1500$/ }).waitFor();

  step("networks: a LoadBalancer Service made elsewhere appears with its ports");
  await api(t, "DELETE", "/api/v1/namespaces/default/services/networks-web");
  const service = { apiVersion: "v1", kind: "Service", metadata: { name: "networks-web", namespace: "default" },
    spec: { type: "LoadBalancer", selector: { app: "networks-web" }, ports: [{ port: 80, targetPort: 8080, protocol: "TCP" }] } };
  const created = await api(t, "POST", "/api/v1/namespaces/default/services", service);
  if (created.status !== 201) throw new Error(`creating the Service answered ${created.status}: ${JSON.stringify(created.body)}`);
  await page.getByRole("table", { name: "Services" }).locator('tr[data-name="networks-web"]').getByText("80/TCP → 8080", { exact: false }).waitFor();
  await page.screenshot({ path: `${t.artifacts}/networks.png`, fullPage: true });
  await api(t, "DELETE", "/api/v1/namespaces/default/services/networks-web");

  step("storage: the storage classes are listed, the default one marked");
  await page.getByRole("navigation", { name: "Views" }).getByRole("link", { name: "Storage classes", exact: true }).click();
  const classes = page.getByRole("table", { name: "Storage classes" });
  const defaults = await api(t, "GET", "/apis/storage.k8s.io/v1/storageclasses");
  const marked = defaults.body.items.find((c) => c.metadata.annotations?.["storageclass.kubernetes.io/is-default-class"] === "true");
  if (!marked) throw new Error("the server has no default storage class to show");
  await classes.locator(`tr[data-name="${marked.metadata.name}"]`).getByText("default", { exact: true }).waitFor();
  for (const c of defaults.body.items.filter((c) => c !== marked)) {
    const badges = await classes.locator(`tr[data-name="${c.metadata.name}"] .badge`).count();
    if (badges) throw new Error(`${c.metadata.name} is marked default but is not`);
  }
  await page.screenshot({ path: `${t.artifacts}/storage.png`, fullPage: true });
}
