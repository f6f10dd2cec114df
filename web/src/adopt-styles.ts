// A CSP-safe home for the <style> elements a library writes at run time (xterm.js's DOM renderer
// writes its theme colours and cell sizes that way). The page's CSP (default-src 'self') refuses
// inline styles, so their text is mirrored into constructed stylesheets, which the CSP allows
// (they are the CSSOM, like element.style), for as long as the library's element lives.

function touchesStyle(record: MutationRecord): boolean {
  const isStyle = (n: Node) => n instanceof HTMLStyleElement;
  return isStyle(record.target) || record.target.parentNode instanceof HTMLStyleElement || [...record.addedNodes, ...record.removedNodes].some(isStyle);
}

/** Mirrors every <style> inside `root` into document.adoptedStyleSheets; returns how to stop. */
export function adoptInlineStyles(root: HTMLElement): () => void {
  const sheets = new Map<HTMLStyleElement, CSSStyleSheet>();
  let adopted: CSSStyleSheet[] = [];
  const replaceAdopted = (next: CSSStyleSheet[]) => {
    document.adoptedStyleSheets = [...document.adoptedStyleSheets.filter((s) => !adopted.includes(s)), ...next];
    adopted = next;
  };
  const sync = () => {
    const present = new Set(root.querySelectorAll("style"));
    for (const style of sheets.keys()) if (!present.has(style)) sheets.delete(style);
    for (const style of present) {
      const sheet = sheets.get(style) ?? new CSSStyleSheet();
      sheet.replaceSync(style.textContent ?? "");
      sheets.set(style, sheet);
    }
    replaceAdopted([...sheets.values()]);
  };
  const observer = new MutationObserver((records) => {
    if (records.some(touchesStyle)) sync();
  });
  observer.observe(root, { subtree: true, childList: true, characterData: true });
  sync();
  return () => {
    observer.disconnect();
    replaceAdopted([]);
  };
}
