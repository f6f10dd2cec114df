// Uploading a disk image from the browser into an upload DataVolume, with the protocol of the
// server's upload subresource (crates/apiserver/src/upload.rs): wait until the DataVolume is
// UploadReady, ask where to resume (GET .../upload answers `received`), then PUT the file from
// that offset with X-Upload-Size and X-Upload-Offset. XMLHttpRequest, not fetch, because only it
// reports upload progress. Uploads live here rather than in a view, so they go on (and are shown
// again) when the user moves between views; cancel stops one and resume continues it.

import { ApiError, call, objectPath, token } from "./api";

export type UploadState = "waiting" | "uploading" | "processing" | "done" | "failed" | "cancelled";

const POLL_MS = 1000;

/** The upload subresource of DataVolume `namespace/name`. */
function uploadPath(namespace: string, name: string): string {
  return `${objectPath("cdi.kubevirt.io", "v1beta1", "datavolumes", namespace, name)}/upload`;
}

/** The server's answer to GET .../upload: where the upload stands. */
type UploadProgress = { phase: string; received: number | null; size: number | null; message?: string };

/** One file going into one DataVolume. */
export class Upload {
  state: UploadState = "waiting";
  /** Bytes the server has (the resume offset plus what this request sent). */
  sent = 0;
  /** Bytes per second of the current request. */
  rate = 0;
  /** Why it failed, or what it waits for. */
  message = "";
  private request: XMLHttpRequest | null = null;
  private cancelled = false;
  private listeners = new Set<() => void>();

  constructor(readonly namespace: string, readonly name: string, readonly file: File) {}

  get key(): string {
    return `${this.namespace}/${this.name}`;
  }

  /** 0-100. */
  get percent(): number {
    return this.file.size ? (100 * this.sent) / this.file.size : 0;
  }

  /** Calls `listener` on every change until the returned function is called. */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Waits for the DataVolume to take uploads, then sends the file from where the server is. */
  async start() {
    this.cancelled = false;
    this.set("waiting", "Waiting for the DataVolume to be ready for the upload…");
    try {
      const progress = await this.waitUntilReady();
      if (!progress) return;
      this.send(progress.received ?? 0);
    } catch (e) {
      if (!this.cancelled) this.set("failed", (e as Error).message);
    }
  }

  cancel() {
    this.cancelled = true;
    if (this.request) this.request.abort();
    else this.set("cancelled", "Cancelled before the upload began.");
  }

  private set(state: UploadState, message = "") {
    this.state = state;
    this.message = message;
    this.listeners.forEach((l) => l());
  }

  /** Polls the upload subresource until UploadReady; null when it ended otherwise. */
  private async waitUntilReady(): Promise<UploadProgress | null> {
    for (;;) {
      if (this.cancelled) {
        this.set("cancelled", "Cancelled before the upload began.");
        return null;
      }
      let progress: UploadProgress | null = null;
      try {
        progress = await call("GET", uploadPath(this.namespace, this.name));
      } catch (e) {
        // The DataVolume's controller may not have seen it yet; anything else is an answer.
        if (!(e instanceof ApiError && e.code === 409)) throw e;
      }
      if (progress?.phase === "UploadReady") return progress;
      if (progress?.phase === "Succeeded") {
        this.sent = this.file.size;
        this.set("done", "The DataVolume already holds the image.");
        return null;
      }
      if (progress?.phase === "Failed") throw new Error(`the DataVolume failed: ${progress.message ?? ""}`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  /** PUTs the file from byte `offset` on. */
  private send(offset: number) {
    const request = new XMLHttpRequest();
    this.request = request;
    this.sent = offset;
    this.rate = 0;
    const began = performance.now();
    request.open("PUT", uploadPath(this.namespace, this.name));
    request.setRequestHeader("Authorization", `Bearer ${token() ?? ""}`);
    request.setRequestHeader("Accept", "application/json");
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.setRequestHeader("X-Upload-Size", String(this.file.size));
    request.setRequestHeader("X-Upload-Offset", String(offset));
    request.upload.onprogress = (e) => {
      this.sent = offset + e.loaded;
      const seconds = (performance.now() - began) / 1000;
      this.rate = seconds > 0 ? e.loaded / seconds : 0;
      this.set("uploading", offset ? `Resumed at byte ${offset}` : "");
    };
    request.onload = () => this.finished(request);
    request.onerror = () => this.set("failed", `The connection broke after ${this.sent} of ${this.file.size} bytes; Resume continues from where the server is.`);
    request.onabort = () => this.set("cancelled", "Cancelled; Resume continues from where the server is.");
    request.onloadend = () => {
      this.request = null;
    };
    this.set("uploading", offset ? `Resuming at byte ${offset}` : "");
    request.send(offset ? this.file.slice(offset) : this.file);
  }

  private finished(request: XMLHttpRequest) {
    let answer: any = null;
    try {
      answer = JSON.parse(request.responseText);
    } catch {
      answer = { message: request.responseText || request.statusText };
    }
    if (request.status < 200 || request.status >= 300) {
      this.set("failed", `The server refused the upload (${request.status}): ${answer?.message ?? ""}`);
      return;
    }
    if (typeof answer?.received === "number") this.sent = answer.received;
    if (answer?.phase === "UploadReady") {
      this.set("failed", `The server has ${this.sent} of ${this.file.size} bytes; Resume sends the rest.`);
      return;
    }
    this.sent = this.file.size;
    this.set("processing", "Uploaded; the DataVolume is being written.");
  }

  /** Marks the upload finished once the DataVolume says so (its phase comes from a watch). */
  settle(phase: string, message: string) {
    if (this.state !== "processing" && this.state !== "done") return;
    if (phase === "Succeeded" && this.state !== "done") this.set("done", "The image is in the DataVolume.");
    if (phase === "Failed") this.set("failed", `The DataVolume failed: ${message}`);
  }
}

/** Every upload this page started, by namespace/name. */
export const uploads = new Map<string, Upload>();
const registryListeners = new Set<() => void>();

/** Calls `listener` when an upload is added or removed; returns the unsubscribe. */
export function onUploadsChanged(listener: () => void): () => void {
  registryListeners.add(listener);
  return () => registryListeners.delete(listener);
}

/** Starts uploading `file` into the DataVolume `namespace/name` (which must have an upload source). */
export function startUpload(namespace: string, name: string, file: File): Upload {
  uploads.get(`${namespace}/${name}`)?.cancel();
  const upload = new Upload(namespace, name, file);
  uploads.set(upload.key, upload);
  registryListeners.forEach((l) => l());
  void upload.start();
  return upload;
}

/** Forgets a finished, failed or cancelled upload. */
export function dismissUpload(key: string) {
  const upload = uploads.get(key);
  if (!upload || upload.state === "uploading" || upload.state === "waiting") return;
  uploads.delete(key);
  registryListeners.forEach((l) => l());
}
