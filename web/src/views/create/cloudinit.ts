// The wizard's cloud-init step: none, a user (name, password, SSH authorized keys) written as a
// #cloud-config, or raw user-data used as it is. Either becomes a cloudInitNoCloud volume.

import { el } from "../../dom";
import { CloudInitMode } from "./draft";
import { Checks, field, input, radios, textarea } from "./fields";
import { Env, Step } from "./step";

/** The server's limit for inline user-data. */
const MAX_USER_DATA = 64 * 1024;

const MODES: [CloudInitMode, string][] = [
  ["none", "None"],
  ["user", "A user with a password or SSH key"],
  ["raw", "Raw user-data"],
];

function keyProblem(keys: string): string {
  const bad = keys.split("\n").map((k) => k.trim()).filter(Boolean).find((k) => !/^(ssh-|ecdsa-|sk-)\S+ \S+/.test(k));
  return bad ? `"${bad.slice(0, 24)}…" is not an OpenSSH public key (ssh-ed25519 AAAA…, one a line).` : "";
}

export function cloudInitStep({ draft }: Env): Step {
  const render = () => {
    checks = new Checks();
    const user = field("User name", input("ci-user", draft.user, { autocomplete: "off" }), "Created in the guest, with sudo.");
    user.control.addEventListener("input", () => (draft.user = user.control.value.trim()));
    checks.add(user, () => (draft.cloudInit === "user" && !/^[a-z_][a-z0-9_-]{0,31}$/.test(draft.user) ? "Enter a user name: lower-case letters, digits, '_' or '-'." : ""));
    const password = field("Password", input("ci-password", draft.password, { type: "password", autocomplete: "new-password" }), "Stored in the VM's spec in plain text.");
    password.control.addEventListener("input", () => (draft.password = password.control.value));
    const keys = field("SSH authorized keys", textarea("ci-ssh-keys", draft.sshKeys, 3), "One public key a line.");
    keys.control.addEventListener("input", () => (draft.sshKeys = keys.control.value));
    checks.add(keys, () => (draft.cloudInit === "user" ? keyProblem(draft.sshKeys) : ""));
    checks.add(password, () => (draft.cloudInit === "user" && !draft.password && !draft.sshKeys.trim() ? "Give a password or an SSH key, or both." : ""));

    const raw = field("User-data", textarea("ci-user-data", draft.userData, 12), "Used as written: a #cloud-config, or a script starting with #!.");
    raw.control.classList.add("code");
    raw.control.addEventListener("input", () => (draft.userData = raw.control.value));
    checks.add(raw, () => {
      if (draft.cloudInit !== "raw") return "";
      if (!draft.userData.trim()) return "Enter the user-data, or choose None.";
      return new Blob([draft.userData]).size > MAX_USER_DATA ? "User-data may be at most 64 KiB." : "";
    });

    const userPanel = el("div", { class: "choice-panel" }, user.node, password.node, keys.node);
    const rawPanel = el("div", { class: "choice-panel" }, raw.node);
    const show = () => {
      userPanel.hidden = draft.cloudInit !== "user";
      rawPanel.hidden = draft.cloudInit !== "raw";
    };
    const choice = radios("ci-mode", "Cloud-init", MODES, draft.cloudInit, (v) => {
      draft.cloudInit = v;
      show();
    });
    show();
    return el("div", {}, choice, userPanel, rawPanel);
  };

  let checks = new Checks();
  return { title: "Cloud-init", render, refresh: () => {}, validate: () => checks.run() };
}
