// A VM's consoles in the browser: the serial console (xterm.js) and the graphical console (noVNC)
// on KubeVirt's websocket subresources of the VM's instance. A browser cannot set Authorization
// on a websocket, so the token travels in a subprotocol, as Kubernetes does. The page watches the
// instance: while the VM is not running it says so, and it connects by itself once it runs.

import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";
import RFB from "@novnc/novnc";
import { adoptInlineStyles } from "../adopt-styles";
import { collectionPath, Obj, token, Watch } from "../api";
import { el, toast } from "../dom";
import { tabs } from "../dialog";
import { Context, link, View } from "../router";

/** How a session ended: closed by either side, taken over by another session, or never opened. */
type Ending = "closed" | "replaced" | "failed";

/** What a console pane reports back to its connection. */
type Handlers = { opened(): void; ended(how: Ending): void };

/** An open (or opening) session that can be closed. */
type Session = { close(): void };

/** A console pane: its content and how it opens a session on a websocket URL. */
type Pane = { name: string; sub: "console" | "vnc"; content: HTMLElement; tools: HTMLElement[]; open(url: string, protocols: string[], h: Handlers): Session; connected(on: boolean): void; stop(): void };

/** Automatic attempts per instance before the page waits for the Reconnect button. */
const AUTO_ATTEMPTS = 3;

/** The subprotocols carrying KubeVirt's plain framing and the bearer token (base64url, unpadded). */
function websocketProtocols(): string[] {
  const bytes = new TextEncoder().encode(token() ?? "");
  const encoded = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return ["plain.kubevirt.io", `base64url.bearer.authorization.k8s.io.${encoded}`];
}

function subresourceUrl(namespace: string, name: string, sub: "console" | "vnc"): string {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const path = `${collectionPath("subresources.kubevirt.io", "v1", "virtualmachineinstances", namespace)}/${encodeURIComponent(name)}/${sub}`;
  return `${scheme}://${location.host}${path}`;
}

/** Why the console cannot connect to this instance now, or "" when it is running. */
function notRunningReason(name: string, vmi: Obj | undefined): string {
  const phase = vmi?.status?.phase;
  if (!vmi) return `${name} is not running. The console connects by itself when it starts.`;
  if (phase === "Running") return "";
  if (phase === "Succeeded" || phase === "Failed") return `${name}'s instance has ended (${phase}). The console connects again when it starts.`;
  return `${name} is starting (${phase ?? "Pending"}). The console connects when it is running.`;
}

/**
 * Keeps one pane's session in step with the VM's instance: connects when the instance runs,
 * shows why it cannot, and offers Reconnect/Disconnect. Each instance (by uid) gets a few automatic
 * attempts; a session taken over by another one, or closed by the user, is not reopened by itself.
 */
class Connection {
  readonly bar: HTMLElement;
  private message = el("span", { class: "console-message", role: "status", "aria-live": "polite" });
  private connectButton = el("button", { type: "button" }, "Reconnect") as HTMLButtonElement;
  private disconnectButton = el("button", { type: "button" }, "Disconnect") as HTMLButtonElement;
  private session: Session | null = null;
  private vmi: Obj | undefined;
  private known = false;
  private active = false;
  private heldByUser = false;
  private attemptsUid = "";
  private attempts = 0;
  private retry: number | undefined;

  constructor(private pane: Pane, private namespace: string, private name: string) {
    this.connectButton.addEventListener("click", () => {
      this.heldByUser = false;
      this.attempts = 0;
      this.connect();
    });
    this.disconnectButton.addEventListener("click", () => {
      this.heldByUser = true;
      this.close();
      this.show(`Disconnected from ${this.paneLabel()}.`, "ended");
    });
    this.bar = el("div", { class: "console-bar" }, this.message, el("span", { class: "spacer" }), ...pane.tools, this.connectButton, this.disconnectButton);
    this.show(`Looking up ${name}'s instance…`, "waiting");
  }

  /** The instance changed (or vanished): connect if it now runs and nothing holds us back. */
  setInstance(vmi: Obj | undefined) {
    this.vmi = vmi;
    this.known = true;
    this.sync();
  }

  /** The pane's tab was shown (true) or hidden (false). */
  setActive(active: boolean) {
    this.active = active;
    this.attempts = 0;
    if (active) this.sync();
    else this.close();
  }

  stop() {
    this.active = false;
    this.close();
    this.pane.stop();
  }

  private paneLabel() {
    return `${this.name}'s ${this.pane.name}`;
  }

  private sync() {
    if (!this.active || this.session || !this.known) return;
    const reason = notRunningReason(this.name, this.vmi);
    if (reason) return this.show(reason, "waiting");
    const uid = this.vmi!.metadata.uid ?? "";
    if (uid !== this.attemptsUid) {
      // A new instance (the VM started or restarted): connect to it, whatever held the last one.
      this.attemptsUid = uid;
      this.attempts = 0;
      this.heldByUser = false;
    }
    // Waiting for a retry, or already saying why it is not connected.
    if (this.retry !== undefined || (this.bar.dataset.state === "ended" && (this.heldByUser || this.attempts >= AUTO_ATTEMPTS))) return;
    if (this.heldByUser) return this.show(`Disconnected from ${this.paneLabel()}.`, "ended");
    if (this.attempts >= AUTO_ATTEMPTS) return this.show(`Not connected to ${this.paneLabel()}.`, "ended");
    this.connect();
  }

  private connect() {
    this.close();
    const reason = notRunningReason(this.name, this.vmi);
    if (reason) return this.show(reason, "waiting");
    this.attempts++;
    this.show(`Connecting to ${this.paneLabel()}…`, "connecting");
    let opened = false;
    const session = this.pane.open(subresourceUrl(this.namespace, this.name, this.pane.sub), websocketProtocols(), {
      opened: () => {
        if (this.session !== session) return;
        opened = true;
        this.pane.connected(true);
        this.show(`Connected to ${this.paneLabel()}.`, "connected");
      },
      ended: (how) => {
        if (this.session !== session) return;
        this.session = null;
        this.pane.connected(false);
        this.ended(opened ? how : "failed");
      },
    });
    this.session = session;
  }

  private ended(how: Ending) {
    const reason = notRunningReason(this.name, this.vmi);
    if (how === "replaced") {
      this.attempts = AUTO_ATTEMPTS;
      return this.show(`Another session took ${this.paneLabel()} over. Reconnect to take it back.`, "ended");
    }
    if (reason) return this.show(reason, "waiting");
    const what = how === "failed" ? `Could not connect to ${this.paneLabel()}.` : `Disconnected from ${this.paneLabel()}.`;
    if (this.attempts < AUTO_ATTEMPTS && !this.heldByUser) {
      this.show(`${what} Trying again…`, "connecting");
      this.retry = window.setTimeout(() => {
        this.retry = undefined;
        this.sync();
      }, 2000);
      return;
    }
    this.show(what, "ended");
  }

  private close() {
    window.clearTimeout(this.retry);
    this.retry = undefined;
    const session = this.session;
    this.session = null;
    session?.close();
    this.pane.connected(false);
  }

  private show(text: string, state: "waiting" | "connecting" | "connected" | "ended") {
    this.message.textContent = text;
    this.bar.dataset.state = state;
    this.connectButton.hidden = state !== "ended";
    this.disconnectButton.hidden = state !== "connected" && state !== "connecting";
  }
}

/** What the agent writes to a session another one took over (crates/agent/src/endpoint.rs). */
const TAKEOVER_NOTICE = "another console session took over";

function serialPane(): Pane {
  const terminal = new Terminal({
    cursorBlink: true,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    scrollback: 5000,
  });
  const fit = new FitAddon();
  terminal.loadAddon(fit);
  const content = el("div", { class: "serial-terminal", "aria-label": "Serial console terminal" });
  const stopAdopting = adoptInlineStyles(content);
  let socket: WebSocket | null = null;
  const encoder = new TextEncoder();
  const send = (data: string | Uint8Array) => {
    if (socket?.readyState === WebSocket.OPEN) socket.send(typeof data === "string" ? encoder.encode(data) : data);
  };
  terminal.onData((data) => send(data));
  terminal.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0))));
  // The terminal needs its container laid out to measure cells: open it on the first real size.
  const resize = new ResizeObserver(() => {
    if (!content.clientWidth || !content.clientHeight) return;
    if (!terminal.element) terminal.open(content);
    fit.fit();
  });
  resize.observe(content);
  return {
    name: "serial console",
    sub: "console",
    content,
    tools: [],
    open(url, protocols, handlers) {
      const ws = new WebSocket(url, protocols);
      ws.binaryType = "arraybuffer";
      socket = ws;
      const decoder = new TextDecoder();
      let tail = "";
      ws.onopen = () => {
        terminal.write("\r\n\x1b[2m[connected: output from before now is not shown; press Enter for a prompt]\x1b[0m\r\n");
        handlers.opened();
        terminal.focus();
      };
      ws.onmessage = (e) => {
        const bytes = new Uint8Array(e.data as ArrayBuffer);
        terminal.write(bytes);
        tail = (tail + decoder.decode(bytes, { stream: true })).slice(-200);
      };
      ws.onclose = () => {
        if (socket === ws) socket = null;
        terminal.write("\r\n\x1b[2m[disconnected]\x1b[0m\r\n");
        handlers.ended(tail.includes(TAKEOVER_NOTICE) ? "replaced" : "closed");
      };
      return {
        close: () => {
          ws.onclose = null;
          ws.close();
          if (socket === ws) socket = null;
        },
      };
    },
    connected: () => {},
    stop() {
      resize.disconnect();
      terminal.dispose();
      stopAdopting();
    },
  };
}

function vncPane(): Pane {
  const content = el("div", { class: "vnc-screen", "aria-label": "VNC console screen" });
  const ctrlAltDel = el("button", { type: "button", disabled: "" }, "Send Ctrl+Alt+Del") as HTMLButtonElement;
  let rfb: RFB | null = null;
  ctrlAltDel.addEventListener("click", () => {
    rfb?.sendCtrlAltDel();
    rfb?.focus();
  });
  return {
    name: "VNC console",
    sub: "vnc",
    content,
    tools: [ctrlAltDel],
    open(url, protocols, handlers) {
      const session = new RFB(content, url, { wsProtocols: protocols, shared: true });
      session.scaleViewport = true;
      session.background = "transparent";
      rfb = session;
      session.addEventListener("connect", () => handlers.opened());
      session.addEventListener("disconnect", () => {
        if (rfb === session) rfb = null;
        handlers.ended("closed");
      });
      return {
        close: () => {
          if (rfb === session) rfb = null;
          session.disconnect();
          content.replaceChildren();
        },
      };
    },
    connected(on) {
      ctrlAltDel.disabled = !on;
    },
    stop() {
      rfb?.disconnect();
      rfb = null;
    },
  };
}

/** True for Ctrl+], the key that leaves a console (virsh console's escape): Tab goes to the guest. */
function isLeaveKey(e: KeyboardEvent): boolean {
  return e.ctrlKey && !e.altKey && !e.metaKey && (e.key === "]" || e.code === "BracketRight");
}

/** A tab's panel: the pane's connection bar above its content; Ctrl+] moves focus to the bar. */
function panel(connection: Connection, pane: Pane): HTMLElement {
  const bar = connection.bar;
  const hint = el("p", { class: "muted console-hint", id: `console-hint-${pane.sub}` }, "Keys go to the guest, Tab included. Ctrl+] leaves the console (focus goes to its buttons).");
  pane.content.setAttribute("aria-describedby", hint.id);
  // In the capture phase, before xterm.js or noVNC take the key for the guest.
  pane.content.addEventListener(
    "keydown",
    (e) => {
      if (!isLeaveKey(e)) return;
      e.preventDefault();
      e.stopPropagation();
      bar.querySelector<HTMLButtonElement>("button:not([hidden]):not(:disabled)")?.focus();
    },
    true,
  );
  return el("div", { class: "console-pane" }, bar, pane.content, hint);
}

export function consoleView(ctx: Context): View {
  const name = ctx.params.name;
  const panes = [serialPane(), vncPane()];
  const connections = panes.map((p) => new Connection(p, ctx.namespace, name));
  const panels = panes.map((p, i) => panel(connections[i], p));
  const select = (i: number) => {
    connections.forEach((c, j) => j !== i && c.setActive(false));
    connections[i].setActive(true);
    return panels[i];
  };
  const node = el(
    "section",
    { class: "console-view" },
    el("div", { class: "toolbar" }, el("h2", {}, `Console: ${name}`), link(ctx, `vms/${encodeURIComponent(name)}`, `Back to ${name}`)),
    tabs(`Consoles of ${name}`, [
      ["Serial console", () => select(0)],
      ["VNC", () => select(1)],
    ]),
  );
  const key = `${ctx.namespace}/${name}`;
  const vmis = new Watch(
    collectionPath("kubevirt.io", "v1", "virtualmachineinstances", ctx.namespace),
    () => connections.forEach((c) => c.setInstance(vmis.objects.get(key))),
    (e) => toast(`Live updates of ${name} interrupted: ${e.message}`, true),
  ).start();
  return {
    node,
    stop: () => {
      vmis.stop();
      connections.forEach((c) => c.stop());
    },
  };
}
