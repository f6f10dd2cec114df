// From a field path as the server names it in a validation error (`spec.template.spec.domain.
// memory.guest`, `spec.template.spec.domain.devices.disks[0].name`, `metadata.labels[app]`) to the
// line of that field in the YAML the user edits, through the yaml package's node ranges. A field
// that is missing (a required value) maps to the line of its nearest present parent.

import { Document, isMap, isScalar, isSeq, LineCounter, Node } from "yaml";

/** The keys of a field path: names, [index] as numbers and [key] as names. */
export function fieldKeys(path: string): (string | number)[] {
  const keys: (string | number)[] = [];
  for (const [, name, bracket] of path.matchAll(/([^.[\]]+)|\[([^\]]*)\]/g)) {
    if (name !== undefined) keys.push(name);
    else keys.push(/^\d+$/.test(bracket) ? Number(bracket) : bracket);
  }
  return keys;
}

/** The 1-based line of `path` in `doc`, or of its nearest present parent; `exact` says which. */
export function lineOfField(doc: Document, lines: LineCounter, path: string): { line: number; exact: boolean } {
  let node: unknown = doc.contents;
  let offset = (doc.contents as Node | null)?.range?.[0] ?? 0;
  const keys = fieldKeys(path);
  for (const [i, key] of keys.entries()) {
    let next: { at: number; value: unknown } | null = null;
    if (isMap(node)) {
      const pair = node.items.find((p) => (isScalar(p.key) ? String(p.key.value) : String(p.key)) === String(key));
      const start = (pair?.key as Node | undefined)?.range?.[0];
      if (pair && start !== undefined) next = { at: start, value: pair.value };
    } else if (isSeq(node) && typeof key === "number") {
      const item = node.items[key] as Node | undefined;
      if (item?.range) next = { at: item.range[0], value: item };
    }
    if (!next) return { line: lines.linePos(offset).line, exact: false };
    offset = next.at;
    node = next.value;
    if (i === keys.length - 1) return { line: lines.linePos(offset).line, exact: true };
  }
  return { line: lines.linePos(offset).line, exact: keys.length === 0 };
}
