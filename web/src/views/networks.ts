// Networks: the namespace's VLAN attachments (NetworkAttachmentDefinitions, whose spec.config is a
// bridge CNI config in a JSON string: docs/networking.md), a form creating one, its Services with
// their ports and load-balancer addresses, and the MetalLB address pools and L2 advertisements
// those addresses come from; all kept live by watches.

import { call, collectionPath, objectPath, Obj } from "../api";
import { age, el, toast } from "../dom";
import { confirmDialog, formDialog } from "../dialog";
import { formField } from "../form-field";
import { Column, liveTable, sorted, startWatches } from "../live-table";
import { Context, View } from "../router";

const PUBLISHED_TO = "vmo.io/published-to";
const NAD = ["k8s.cni.cncf.io", "v1", "network-attachment-definitions"] as const;

/** The attachment's CNI config, or the reason it cannot be read. */
function cniConfig(o: Obj): { config: Record<string, any>; error?: string } {
  try {
    return { config: JSON.parse(o.spec?.config ?? "{}") ?? {} };
  } catch (e) {
    return { config: {}, error: `spec.config is not JSON: ${(e as Error).message}` };
  }
}

function attachmentColumns(onDelete: (o: Obj) => void): Column<Obj>[] {
  const configValue = (name: string, fallback = "—") => (o: Obj) => {
    const value = cniConfig(o).config[name];
    return value === undefined ? fallback : String(value);
  };
  return [
    { header: "Name", cell: (o) => el("strong", {}, o.metadata.name) },
    { header: "Type", cell: (o) => cniConfig(o).error ?? configValue("type")(o) },
    { header: "Bridge", cell: configValue("bridge") },
    { header: "VLAN", cell: (o) => String(cniConfig(o).config.vlan || "untagged"), className: "num" },
    { header: "MTU", cell: configValue("mtu"), className: "num" },
    { header: "MAC spoof check", cell: (o) => (cniConfig(o).config.macspoofchk === true ? "on" : "off") },
    { header: "Published to", cell: (o) => o.metadata.annotations?.[PUBLISHED_TO] ?? "this namespace only" },
    { header: "Age", cell: (o) => age(o.metadata.creationTimestamp ?? "") },
    { header: "Actions", cell: (o) => deleteButton(o, onDelete) },
  ];
}

function deleteButton(o: Obj, onDelete: (o: Obj) => void): HTMLElement {
  const button = el("button", { type: "button", class: "danger", "aria-label": `Delete ${o.metadata.name}` }, "Delete");
  button.addEventListener("click", () => onDelete(o));
  return button;
}

/** "80/TCP → 8080 (node port 30080)" per port. */
function ports(o: Obj): Node | string {
  const list: any[] = o.spec?.ports ?? [];
  if (!list.length) return "—";
  return el(
    "ul",
    { class: "kv" },
    ...list.map((p) => {
      const target = p.targetPort !== undefined && p.targetPort !== p.port ? ` → ${p.targetPort}` : "";
      const nodePort = p.nodePort ? ` (node port ${p.nodePort})` : "";
      return el("li", {}, `${p.name ? `${p.name}: ` : ""}${p.port}/${p.protocol ?? "TCP"}${target}${nodePort}`);
    }),
  );
}

function loadBalancerAddresses(o: Obj): string {
  if (o.spec?.type !== "LoadBalancer") return "—";
  const ingress: any[] = o.status?.loadBalancer?.ingress ?? [];
  return ingress.map((i) => i.ip ?? i.hostname).filter(Boolean).join(", ") || "pending";
}

const SERVICE_COLUMNS: Column<Obj>[] = [
  { header: "Name", cell: (o) => el("strong", {}, o.metadata.name) },
  { header: "Type", cell: (o) => o.spec?.type ?? "ClusterIP" },
  { header: "Ports", cell: ports },
  { header: "Load-balancer addresses", cell: loadBalancerAddresses },
  { header: "Selector", cell: (o) => Object.entries(o.spec?.selector ?? {}).map(([k, v]) => `${k}=${v}`).join(", ") || "—" },
  { header: "Age", cell: (o) => age(o.metadata.creationTimestamp ?? "") },
];

const list = (values: unknown, empty: string) => (Array.isArray(values) && values.length ? values.join(", ") : empty);

const POOL_COLUMNS: Column<Obj>[] = [
  { header: "Name", cell: (o) => el("strong", {}, o.metadata.name) },
  { header: "Namespace", cell: (o) => o.metadata.namespace ?? "" },
  { header: "Addresses", cell: (o) => list(o.spec?.addresses, "—"), className: "wrap" },
  { header: "Auto-assign", cell: (o) => (o.spec?.autoAssign === false ? "no" : "yes") },
  { header: "Avoid .0 and .255", cell: (o) => (o.spec?.avoidBuggyIPs ? "yes" : "no") },
];

function nodeSelectors(o: Obj): string {
  const selectors: any[] = o.spec?.nodeSelectors ?? [];
  const text = selectors.map((s) => Object.entries(s.matchLabels ?? {}).map(([k, v]) => `${k}=${v}`).join(", ")).filter(Boolean);
  return text.join("; ") || "every node";
}

const ADVERTISEMENT_COLUMNS: Column<Obj>[] = [
  { header: "Name", cell: (o) => el("strong", {}, o.metadata.name) },
  { header: "Namespace", cell: (o) => o.metadata.namespace ?? "" },
  { header: "Pools", cell: (o) => list(o.spec?.ipAddressPools, "every pool") },
  { header: "Interfaces", cell: (o) => list(o.spec?.interfaces, "the node's InternalIP interface") },
  { header: "Nodes", cell: nodeSelectors },
];

/** The dialog creating a VLAN attachment in `namespace`; the server's refusal stays shown. */
function createVlanDialog(namespace: string) {
  const input = (id: string, attrs: Record<string, string>) => el("input", { id, ...attrs }) as HTMLInputElement;
  const name = input("nad-name", { required: "", pattern: "[a-z0-9]([-a-z0-9]*[a-z0-9])?", autocomplete: "off" });
  const bridge = input("nad-bridge", { required: "", value: "br0", autocomplete: "off" });
  const vlan = input("nad-vlan", { type: "number", min: "0", max: "4094", required: "" });
  const mtu = input("nad-mtu", { type: "number", min: "576", max: "9216", value: "1500" });
  const spoof = input("nad-spoof", { type: "checkbox" });
  const published = input("nad-published", { placeholder: "team-a,team-b or *" });
  formDialog(
    "Create a VLAN network",
    [
      formField("Name", name, "Lower-case letters, digits and dashes, like vlan30."),
      formField("Bridge", bridge),
      formField("VLAN ID", vlan, "1-4094, or 0 for untagged."),
      formField("MTU", mtu),
      el("label", { for: spoof.id, class: "checkbox" }, spoof, "Drop frames with another source MAC (macspoofchk)"),
      formField("Published to namespaces", published, "Optional: other namespaces whose VMs may use it, comma-separated, or * for all."),
    ],
    "Create",
    async () => {
      const config: Record<string, unknown> = { cniVersion: "0.3.1", type: "bridge", bridge: bridge.value.trim(), vlan: Number(vlan.value) };
      if (mtu.value) config.mtu = Number(mtu.value);
      if (spoof.checked) config.macspoofchk = true;
      const annotations: Record<string, string> = published.value.trim() ? { [PUBLISHED_TO]: published.value.trim() } : {};
      await call("POST", collectionPath(...NAD, namespace), {
        apiVersion: "k8s.cni.cncf.io/v1",
        kind: "NetworkAttachmentDefinition",
        metadata: { name: name.value.trim(), namespace, annotations },
        spec: { config: JSON.stringify(config) },
      });
      toast(`Created the VLAN network ${name.value.trim()}`);
    },
  );
  name.focus();
}

async function deleteAttachment(namespace: string, o: Obj) {
  const name = o.metadata.name;
  if (!(await confirmDialog(`Delete ${name}?`, `VMs whose NICs use the attachment ${namespace}/${name} will not start until it exists again.`, "Delete"))) return;
  try {
    await call("DELETE", objectPath(...NAD, namespace, name));
    toast(`Deleted ${name}`);
  } catch (e) {
    toast(`Deleting ${name} failed: ${(e as Error).message}`, true);
  }
}

export function networksView(ctx: Context): View {
  const namespace = ctx.namespace;
  const attachments = liveTable("VLAN networks", attachmentColumns((o) => void deleteAttachment(namespace, o)), (o) => o.metadata.name, `No VLAN networks in ${namespace}.`);
  const services = liveTable("Services", SERVICE_COLUMNS, (o) => o.metadata.name, `No Services in ${namespace}.`);
  const pools = liveTable("IP address pools", POOL_COLUMNS, (o) => `${o.metadata.namespace}/${o.metadata.name}`, "No address pools: LoadBalancer Services get no address.");
  const advertisements = liveTable("L2 advertisements", ADVERTISEMENT_COLUMNS, (o) => `${o.metadata.namespace}/${o.metadata.name}`, "No L2 advertisements: no node answers ARP for the addresses.");
  const render = () => {
    const [a, s, p, l] = live.watches;
    attachments.render(sorted(a));
    services.render(sorted(s));
    pools.render(sorted(p));
    advertisements.render(sorted(l));
  };
  const live = startWatches(
    [
      { path: collectionPath(...NAD, namespace), fail: attachments.fail },
      { path: collectionPath("", "v1", "services", namespace), fail: services.fail },
      { path: collectionPath("metallb.io", "v1beta1", "ipaddresspools"), fail: pools.fail },
      { path: collectionPath("metallb.io", "v1beta1", "l2advertisements"), fail: advertisements.fail },
    ],
    render,
  );
  const create = el("button", { type: "button", class: "primary" }, "Create VLAN network");
  create.addEventListener("click", () => createVlanDialog(namespace));
  const section = (title: string, ...children: (Node | string)[]) => el("section", { class: "view-section", "aria-label": title }, ...children);
  const node = el(
    "section",
    { class: "networks-view" },
    el("h2", {}, "Networks"),
    section("VLAN networks", el("div", { class: "toolbar" }, el("h3", {}, "VLAN networks"), create), attachments.node),
    section("Services", el("h3", {}, "Services"), services.node),
    section("IP address pools", el("h3", {}, "IP address pools (MetalLB)"), pools.node),
    section("L2 advertisements", el("h3", {}, "L2 advertisements (MetalLB)"), advertisements.node),
  );
  return { node, stop: live.stop };
}
