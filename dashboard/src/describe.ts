import { fmtValue, jsonLine, unitOf } from "./format";
import type { DeviceEvent } from "./types";

/** One line of text for an event (shown as text, never as HTML). */
export function describeEvent(ev: DeviceEvent): string {
  switch (ev.type) {
    case "measurement":
      return Object.entries(ev.values)
        .map(([k, v]) => `${k} = ${fmtValue(v, unitOf(ev.metadata, k))}`)
        .join(", ");
    case "location":
      return `${ev.lat.toFixed(5)}, ${ev.lon.toFixed(5)} (${fmtValue(ev.ele, "m")})`;
    case "alert":
      return `${ev.level} ${ev.alert_type}: ${ev.message}`;
    case "command_invocation":
      return `command ${ev.command} ${jsonLine(ev.params)}`;
    case "command_response":
      return `response ${jsonLine(ev.response)}`;
    case "state_change":
      return `${ev.kind}: ${ev.previous || "—"} → ${ev.current}`;
    default:
      return "";
  }
}
