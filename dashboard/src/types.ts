export interface Page<T> {
  items: T[];
  page: number;
  page_size: number;
  total: number;
}

export interface Device {
  token: string;
  device_type: string;
  comments: string;
  metadata: Record<string, string>;
  created: string;
}

export interface Param {
  name: string;
  type: "string" | "int" | "float" | "bool" | "unspecified";
  required: boolean;
}

export interface Command {
  name: string;
  description: string;
  params: Param[];
}

export interface DeviceType {
  token: string;
  name: string;
  description: string;
  commands: Command[];
}

export interface DeviceState {
  device: string;
  device_type: string;
  assignment: string;
  presence: "present" | "missing";
  presence_changed: string;
  last_seen: string;
  last_seen_ms: number;
  last_received: string;
  location: { lat: number; lon: number; ele: number; time: string; time_ms: number } | null;
  measurements: Record<string, { value: number; time: string; time_ms: number }>;
  last_alert: {
    alert_type: string;
    level: string;
    message: string;
    source: string;
    state: string;
    rule: string;
    time: string;
  } | null;
  link: { status: string; adapter: string; time: string; time_ms: number } | null;
  raised_rules: string[];
}

export interface Invocation {
  id: string;
  device: string;
  command: string;
  params: unknown;
  status: string;
  reason: string;
  response: unknown;
  created: string;
  updated: string;
  expires: string;
}

export interface EventBase {
  id: string;
  device: string;
  event_time: string;
  event_time_ms: number;
  received_time: string;
  metadata: Record<string, string>;
}

export type DeviceEvent = EventBase &
  (
    | { type: "measurement"; values: Record<string, number> }
    | { type: "location"; lat: number; lon: number; ele: number }
    | { type: "alert"; alert_type: string; level: string; message: string; source: string }
    | { type: "command_invocation"; invocation: string; command: string; params: unknown }
    | { type: "command_response"; invocation: string; response: unknown }
    | { type: "state_change"; kind: string; previous: string; current: string }
  );

export interface Fleet {
  devices: number;
  online: number;
  offline: number;
  missing: number;
  unknown: number;
  events_per_s: number;
  events_last_minute: number;
  failed_decodes_last_hour: number;
  alerts_raised: number;
  edges_connected: number;
  tenants: string[] | null;
}

export interface Edge {
  edge_id: string;
  connected: boolean;
  connected_since: string | null;
  last_seen: string;
  version: string;
  buffer_depth: number | null;
  uplink_lag_ms: number | null;
  failed_decodes: number | null;
}

export interface Alert {
  device: string;
  device_type: string;
  alert_type: string;
  level: string;
  message: string;
  source: string;
  state: string;
  rule: string;
  time: string;
  time_ms: number;
}

export interface Named {
  token: string;
  name?: string;
}

export interface Zone {
  token: string;
  name?: string;
  area: string;
  polygon: [number, number][];
}
