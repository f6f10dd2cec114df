// The vmo API as the UI uses it: the Kubernetes-style REST paths with the signed-in user's bearer
// token, errors turned into the server's own message, and watches (list, then a streamed watch
// from that resourceVersion, reconnecting) that keep a map of objects current.

export type Obj = {
  apiVersion?: string;
  kind?: string;
  metadata: { name: string; namespace?: string; uid?: string; resourceVersion?: string; creationTimestamp?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: any;
  status?: any;
};

const TOKEN_KEY = "vmo.token";

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(t: string | null) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An API failure with the server's message (a Kubernetes Status) and its HTTP code. */
export class ApiError extends Error {
  constructor(message: string, public code: number, public status?: any) {
    super(message);
  }
}

export async function call(method: string, path: string, body?: unknown): Promise<any> {
  const headers: Record<string, string> = { Accept: "application/json", Authorization: `Bearer ${token() ?? ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let parsed: any = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    const message = parsed?.message ?? (text || response.statusText);
    throw new ApiError(message, response.status, parsed);
  }
  return parsed;
}

export function collectionPath(group: string, version: string, plural: string, namespace?: string): string {
  const base = group ? `/apis/${group}/${version}` : `/api/${version}`;
  return namespace ? `${base}/namespaces/${encodeURIComponent(namespace)}/${plural}` : `${base}/${plural}`;
}

/** Keeps `objects` (by namespace/name) equal to the collection at `path`, calling `changed`. */
export class Watch {
  objects = new Map<string, Obj>();
  private stopped = false;
  private controller: AbortController | null = null;

  constructor(private path: string, private changed: () => void, private failed: (e: Error) => void) {}

  start() {
    void this.run();
    return this;
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
  }

  private key(o: Obj) {
    return `${o.metadata.namespace ?? ""}/${o.metadata.name}`;
  }

  private async run() {
    while (!this.stopped) {
      try {
        const list = await call("GET", this.path);
        if (this.stopped) return;
        this.objects = new Map((list.items ?? []).map((o: Obj) => [this.key(o), o]));
        this.changed();
        await this.follow(list.metadata?.resourceVersion ?? "");
      } catch (e) {
        if (this.stopped) return;
        this.failed(e as Error);
        if (e instanceof ApiError && e.code === 401) return;
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
  }

  private async follow(resourceVersion: string) {
    this.controller = new AbortController();
    const url = `${this.path}?watch=true&allowWatchBookmarks=true&resourceVersion=${encodeURIComponent(resourceVersion)}`;
    const response = await fetch(url, {
      headers: { Accept: "application/json", Authorization: `Bearer ${token() ?? ""}` },
      signal: this.controller.signal,
    });
    if (!response.ok || !response.body) throw new ApiError(`watch ${this.path}: ${response.status}`, response.status);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      pending += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, newline).trim();
        pending = pending.slice(newline + 1);
        if (!line) continue;
        const event = JSON.parse(line);
        const o: Obj = event.object;
        if (event.type === "ERROR") throw new ApiError(o?.status?.message ?? "watch error", 410);
        if (event.type === "BOOKMARK") continue;
        if (event.type === "DELETED") this.objects.delete(this.key(o));
        else this.objects.set(this.key(o), o);
        this.changed();
      }
    }
  }
}

/** The path of one object: `collectionPath(...)/name`. */
export function objectPath(group: string, version: string, plural: string, namespace: string | undefined, name: string): string {
  return `${collectionPath(group, version, plural, namespace)}/${encodeURIComponent(name)}`;
}
