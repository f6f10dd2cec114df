// Types for the parts of noVNC's RFB class (npm @novnc/novnc, which ships no types) that the VNC
// console uses; see node_modules/@novnc/novnc/docs/API.md.

declare module "@novnc/novnc" {
  export default class RFB extends EventTarget {
    constructor(target: HTMLElement, urlOrChannel: string | WebSocket, options?: { shared?: boolean; wsProtocols?: string[]; credentials?: Record<string, string> });
    scaleViewport: boolean;
    resizeSession: boolean;
    viewOnly: boolean;
    background: string;
    focusOnClick: boolean;
    disconnect(): void;
    focus(): void;
    sendCtrlAltDel(): void;
  }
}
