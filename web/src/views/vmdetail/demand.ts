// A collection kept current by a watch only while something needs it live, and otherwise by a
// list when asked (`refresh`). The server speaks HTTP/1.1, where a browser opens at most 6
// connections to it and every open watch holds one: the VM detail watches its VM, instance and
// snapshots all the time, and events or the operation kinds only while a tab or a running
// operation needs them, so requests (metrics, saves) always find a free connection.

import { call, Obj, Watch } from "../../api";

export class WatchOnDemand {
  objects = new Map<string, Obj>();
  private watch: Watch | null = null;

  constructor(private path: string, private changed: () => void, private failed: (e: Error) => void) {}

  get live(): boolean {
    return this.watch !== null;
  }

  /** Starts or stops the watch; stopped, the objects stay as last seen. */
  set(live: boolean) {
    if (live && !this.watch) {
      const watch = new Watch(
        this.path,
        () => {
          this.objects = watch.objects;
          this.changed();
        },
        this.failed,
      );
      this.watch = watch.start();
    } else if (!live && this.watch) {
      this.watch.stop();
      this.watch = null;
    }
  }

  /** Lists the collection once (when not watching: a watch is current already). */
  async refresh() {
    if (this.watch) return;
    try {
      const list = await call("GET", this.path);
      if (this.watch) return;
      this.objects = new Map((list.items ?? []).map((o: Obj) => [`${o.metadata.namespace ?? ""}/${o.metadata.name}`, o]));
      this.changed();
    } catch (e) {
      this.failed(e as Error);
    }
  }

  /** Adds an object just created (before the watch reports it). */
  add(o: Obj) {
    this.objects.set(`${o.metadata.namespace ?? ""}/${o.metadata.name}`, o);
    this.changed();
  }

  stop() {
    this.set(false);
  }
}
