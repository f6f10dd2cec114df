// The wizard's networks step: the default pod network (masquerade) and any of the namespace's
// NetworkAttachmentDefinitions as VLAN attachments (bridge, multus), listed live.

import { Obj } from "../../api";
import { el } from "../../dom";
import { checkbox } from "./fields";
import { Env, Step } from "./step";

/** The VLAN (or other detail) a NetworkAttachmentDefinition's CNI config names, for its label. */
function attachmentDetail(nad: Obj): string {
  try {
    const config = JSON.parse(nad.spec?.config ?? "{}");
    return config.vlan !== undefined ? `VLAN ${config.vlan}` : config.type ?? "";
  } catch {
    return "";
  }
}

export function networksStep({ draft, catalog }: Env): Step {
  let list: HTMLElement;
  let error: HTMLElement;

  const refresh = () => {
    const nads = catalog.attachments();
    const present = new Set(nads.map((n) => n.metadata.name));
    const gone = draft.vlans.filter((v) => !present.has(v));
    list.replaceChildren(
      ...nads.map((nad) => {
        const name = nad.metadata.name;
        const detail = attachmentDetail(nad);
        return checkbox(`net-vlan-${name}`, detail ? `${name} (${detail})` : name, draft.vlans.includes(name), (on) => {
          draft.vlans = on ? [...draft.vlans, name] : draft.vlans.filter((v) => v !== name);
          error.textContent = "";
        });
      }),
    );
    if (!nads.length) list.append(el("p", { class: "muted" }, `No VLAN networks in ${draft.namespace}: add one under Networks.`));
    error.textContent = gone.length ? `No longer in ${draft.namespace}: ${gone.join(", ")}. Untick or re-create them.` : "";
  };

  const render = () => {
    list = el("div", { class: "check-list" });
    error = el("p", { class: "field-error", role: "alert" });
    const pod = checkbox("net-pod", "Default pod network (masquerade, NAT to the outside)", draft.podNetwork, (on) => (draft.podNetwork = on));
    refresh();
    return el("div", {}, pod, el("fieldset", { class: "radios" }, el("legend", {}, "VLAN attachments (bridge)"), list), error);
  };

  const validate = () => {
    const present = new Set(catalog.attachments().map((n) => n.metadata.name));
    draft.vlans = draft.vlans.filter((v) => present.has(v));
    refresh();
    return true;
  };

  return { title: "Networks", render, refresh, validate };
}
