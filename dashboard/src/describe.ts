import type { DeviceEvent } from "./types";
import { json } from "./util";

/** One line of text for an event (shown as text, never as HTML). */
export function describeEvent(ev: DeviceEvent): string {
  switch (ev.type) {
    case "measurement":
      return Object.entries(ev.values)
        .map(([k, v]) => `${k} = ${v}`)
        .join(", ");
    case "location":
      return `${ev.lat.toFixed(5)}, ${ev.lon.toFixed(5)} (${ev.ele} m)`;
    case "alert":
      return `${ev.level} ${ev.alert_type}: ${ev.message}`;
    case "command_invocation":
      return `command ${ev.command} ${json(ev.params)}`;
    case "command_response":
      return `response ${json(ev.response)}`;
    case "state_change":
      return `${ev.kind}: ${ev.previous || "—"} → ${ev.current}`;
    default:
      return "";
  }
}
