// The VMs view: a table of the namespace's VirtualMachines joined with their instances (node,
// addresses), with search and sort, kept live by watches, and the lifecycle actions.

import { call, collectionPath, Obj, Watch } from "../api";
import { el, age, toast } from "../dom";
import { Context, link, View } from "../router";

type Row = { name: string; status: string; node: string; ips: string; cpu: number; memory: string; created: string; vm: Obj };

const COLUMNS: [keyof Row, string][] = [
  ["name", "Name"],
  ["status", "Status"],
  ["node", "Node"],
  ["ips", "IP addresses"],
  ["cpu", "CPU"],
  ["memory", "Memory"],
  ["created", "Age"],
];

const ACTIONS: [string, string, (status: string) => boolean][] = [
  ["start", "Start", (s) => ["Stopped", "Halted"].includes(s) || s.startsWith("Error") || s === "CrashLoopBackOff"],
  ["stop", "Stop", (s) => !["Stopped", "Halted", "Stopping"].includes(s)],
  ["restart", "Restart", (s) => s === "Running"],
  ["pause", "Pause", (s) => s === "Running"],
  ["unpause", "Unpause", (s) => s === "Paused"],
];

function cpus(vm: Obj): number {
  const cpu = vm.spec?.template?.spec?.domain?.cpu ?? {};
  return (cpu.sockets ?? 1) * (cpu.cores ?? 1) * (cpu.threads ?? 1);
}

function memory(vm: Obj): string {
  const d = vm.spec?.template?.spec?.domain ?? {};
  return d.memory?.guest ?? d.resources?.requests?.memory ?? "";
}

export function vmsView(ctx: Context): View {
  const namespace = ctx.namespace;
  let search = "";
  let sortBy: keyof Row = "name";
  let ascending = true;
  const body = el("tbody");
  const count = el("span", { class: "muted live", "aria-live": "polite" });
  const filter = el("input", { type: "search", placeholder: "Search name, status, node, address", "aria-label": "Search VMs" }) as HTMLInputElement;
  filter.addEventListener("input", () => {
    search = filter.value.toLowerCase();
    render();
  });
  const head = el("tr");
  for (const [key, label] of COLUMNS) {
    const button = el("button", { type: "button" }, label);
    button.addEventListener("click", () => {
      ascending = sortBy === key ? !ascending : true;
      sortBy = key;
      render();
    });
    head.append(el("th", { scope: "col" }, button));
  }
  head.append(el("th", { scope: "col" }, "Actions"));
  const table = el("table", { "aria-label": "Virtual machines" }, el("thead", {}, head), body);
  const node = el("section", {}, el("div", { class: "toolbar" }, el("h2", {}, "Virtual machines"), filter, count, link(ctx, "create", "Create VM", { class: "button primary" })), table);

  const render = () => {
    const instances = vmis.objects;
    const rows: Row[] = [...vms.objects.values()].map((vm) => {
      const vmi = instances.get(`${namespace}/${vm.metadata.name}`);
      const addresses = (vmi?.status?.interfaces ?? []).map((i: any) => i.ipAddress).filter(Boolean);
      return {
        name: vm.metadata.name,
        status: vm.status?.printableStatus ?? "Unknown",
        node: vmi?.status?.nodeName ?? "",
        ips: addresses.join(", "),
        cpu: cpus(vm),
        memory: memory(vm),
        created: vm.metadata.creationTimestamp ?? "",
        vm,
      };
    });
    const shown = rows
      .filter((r) => !search || [r.name, r.status, r.node, r.ips].some((v) => v.toLowerCase().includes(search)))
      .sort((a, b) => {
        const [x, y] = [a[sortBy], b[sortBy]];
        const order = typeof x === "number" ? (x as number) - (y as number) : String(x).localeCompare(String(y));
        return ascending ? order : -order;
      });
    body.replaceChildren(
      ...shown.map((r) => {
        const actions = el("td", { class: "actions" });
        for (const [verb, label, allowed] of ACTIONS) {
          const button = el("button", { type: "button", "aria-label": `${label} ${r.name}` }, label) as HTMLButtonElement;
          button.disabled = !allowed(r.status);
          button.addEventListener("click", async () => {
            button.disabled = true;
            try {
              await call("PUT", `${collectionPath("subresources.kubevirt.io", "v1", "virtualmachines", namespace)}/${encodeURIComponent(r.name)}/${verb}`, {});
              toast(`${label}: ${r.name}`);
            } catch (e) {
              toast(`${label} ${r.name} failed: ${(e as Error).message}`, true);
              button.disabled = false;
            }
          });
          actions.append(button);
        }
        return el(
          "tr",
          { "data-vm": r.name },
          el("td", {}, link(ctx, `vms/${encodeURIComponent(r.name)}`, r.name)),
          el("td", { class: `status ${r.status}` }, r.status),
          el("td", {}, r.node),
          el("td", {}, r.ips),
          el("td", {}, String(r.cpu)),
          el("td", {}, r.memory),
          el("td", { title: r.created }, age(r.created)),
          actions,
        );
      }),
    );
    count.textContent = `${shown.length} of ${rows.length} VMs`;
  };

  const failed = (e: Error) => toast(`Live updates interrupted: ${e.message}`, true);
  const vms = new Watch(collectionPath("kubevirt.io", "v1", "virtualmachines", namespace), render, failed).start();
  const vmis = new Watch(collectionPath("kubevirt.io", "v1", "virtualmachineinstances", namespace), render, failed).start();
  return {
    node,
    stop: () => {
      vms.stop();
      vmis.stop();
    },
  };
}
