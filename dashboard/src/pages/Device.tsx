import { useEffect, useMemo, useState } from "preact/hooks";
import { ApiError, describeError, enc, get, request } from "../api";
import { MeasurementChart } from "../components/Chart";
import { CommandForm } from "../components/CommandForm";
import { Card, ErrorNote, LevelBadge, StateBadge, StatusBadge, TableWrap } from "../components/common";
import { DeviceMap, type Point } from "../components/DeviceMap";
import type { Device, DeviceEvent, DeviceState, DeviceType, Invocation, Page, Zone } from "../types";
import { fmtValue, jsonLine, jsonPretty, preview, unitOf } from "../format";
import { ago, fmtTime, healthOf, useInterval, useLive, useLoad, useThrottled } from "../util";
import { deviceLabel } from "./Devices";

const RANGES: [string, number][] = [
  ["15 min", 15 * 60],
  ["1 h", 3600],
  ["24 h", 86400],
];

/** The chart points by measurement name, and each name's unit: the newest a measurement event
 *  of the device carried in its metadata (`unit.<name>`, docs/protocols/mqtt.md). */
type Series = {
  ids: Set<string>;
  by: Record<string, { xs: number[]; ys: number[] }>;
  units: Record<string, { unit: string; t: number }>;
};
const EMPTY: Series = { ids: new Set(), by: {}, units: {} };
type Measurement = Extract<DeviceEvent, { type: "measurement" }>;
type Location = Extract<DeviceEvent, { type: "location" }>;
type AlertEvent = Extract<DeviceEvent, { type: "alert" }>;

/** Add measurement events to the series (each event once, by id; xs kept sorted) and drop the
 *  points older than `fromS`. History and live events overlap: the ids make that harmless.
 *  Units are learnt from every event, also one older than the range. */
function addPoints(series: Series, events: Measurement[], fromS: number): Series {
  const units = { ...series.units };
  for (const ev of events) {
    for (const k of Object.keys(ev.values)) {
      const unit = unitOf(ev.metadata, k);
      if (unit && ev.event_time_ms >= (units[k]?.t ?? -Infinity)) units[k] = { unit, t: ev.event_time_ms };
    }
  }
  const ids = new Set(series.ids);
  const by: Series["by"] = {};
  for (const [k, v] of Object.entries(series.by)) {
    const keep = v.xs.findIndex((x) => x >= fromS);
    by[k] = keep < 0 ? { xs: [], ys: [] } : { xs: v.xs.slice(keep), ys: v.ys.slice(keep) };
  }
  for (const ev of events) {
    const x = ev.event_time_ms / 1000;
    if (x < fromS || ids.has(ev.id)) continue;
    ids.add(ev.id);
    for (const [k, y] of Object.entries(ev.values)) {
      const s = (by[k] ??= { xs: [], ys: [] });
      let i = s.xs.length;
      while (i > 0 && s.xs[i - 1] > x) i--;
      s.xs.splice(i, 0, x);
      s.ys.splice(i, 0, y);
    }
  }
  return { ids, by, units };
}

/** The events of a device since a time, newest first, up to `max` (a few pages of 1000). */
async function eventsSince<T>(token: string, type: string, sinceIso: string | undefined, max: number): Promise<T[]> {
  const all: T[] = [];
  for (let page = 1; all.length < max; page++) {
    const p = await get<Page<T>>(`/api/v1/devices/${enc(token)}/events`, {
      type,
      since: sinceIso,
      page,
      page_size: Math.min(1000, max),
    });
    all.push(...p.items);
    if (p.items.length < p.page_size || page * p.page_size >= p.total) break;
  }
  return all;
}

function QrLabel({ token }: { token: string }) {
  const [url, setUrl] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let made: string | null = null;
    let gone = false;
    request(`/api/v1/devices/${enc(token)}/label.svg`)
      .then((r) => r.blob())
      .then((b) => {
        if (gone) return;
        made = URL.createObjectURL(b.type ? b : new Blob([b], { type: "image/svg+xml" }));
        setUrl(made);
      })
      .catch((err) => !gone && setError(describeError(err, "QR label")));
    return () => {
      gone = true;
      if (made) URL.revokeObjectURL(made);
    };
  }, [token]);
  if (error) return <p class="muted">{error}</p>;
  if (!url) return <p class="muted">Loading…</p>;
  return (
    <div class="qr">
      <img src={url} alt={`QR label of ${token}`} data-testid="qr-label" />
      <a href={url} download={`${token}-label.svg`}>
        Download SVG
      </a>
    </div>
  );
}

const JSON_PREVIEW = 60;

/** JSON in a table cell: on one line with spaces to wrap at (a line breaks between tokens, not
 *  inside one); longer than {@link JSON_PREVIEW} characters, the start of it with a "more"
 *  toggle that opens it indented. */
function JsonCell({ value, testid }: { value: unknown; testid?: string }) {
  const line = jsonLine(value);
  if (line.length <= JSON_PREVIEW) {
    return (
      <code class="json" data-testid={testid}>
        {line}
      </code>
    );
  }
  return (
    <details class="json" data-testid={testid}>
      <summary>
        <code class="json">{preview(line, JSON_PREVIEW)}</code>
      </summary>
      <pre class="json">{jsonPretty(value)}</pre>
    </details>
  );
}

function InvocationTable({ items }: { items: Invocation[] }) {
  if (items.length === 0) return <p class="muted">No commands sent to this device yet.</p>;
  return (
    <TableWrap>
      <table data-testid="invocations">
        <thead>
          <tr>
            <th>sent</th>
            <th>command</th>
            <th>params</th>
            <th>status</th>
            <th>response</th>
          </tr>
        </thead>
        <tbody>
          {items.map((i) => (
            <tr key={i.id} data-invocation={i.id} data-command={i.command}>
              <td>{fmtTime(i.created)}</td>
              <td>{i.command}</td>
              <td>
                <JsonCell value={i.params} testid="invocation-params" />
              </td>
              <td>
                <StatusBadge status={i.status} />
                {i.reason && <span class="muted small"> {i.reason}</span>}
              </td>
              <td>
                <JsonCell value={i.response} testid="invocation-response" />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </TableWrap>
  );
}

export function DevicePage({ token }: { token: string }) {
  const [rangeS, setRangeS] = useState(RANGES[0][1]);
  const device = useLoad("Device", () => get<Device>(`/api/v1/devices/${enc(token)}`), [token]);
  const state = useLoad(
    "Device state",
    async () => {
      try {
        return await get<DeviceState>(`/api/v1/devices/${enc(token)}/state`);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) return null; // no state yet
        throw err;
      }
    },
    [token],
  );
  const dtype = useLoad(
    "Device type",
    () => (device.data ? get<DeviceType>(`/api/v1/device-types/${enc(device.data.device_type)}`) : Promise.resolve(null)),
    [device.data?.device_type],
  );
  const [series, setSeries] = useState<Series>(EMPTY);
  const history = useLoad(
    "Measurements",
    async () => {
      const since = new Date(Date.now() - rangeS * 1000).toISOString();
      const evs = await eventsSince<Measurement>(token, "measurement", since, 5000);
      // Nothing in the range: the newest measurement still says which units the values have.
      if (evs.length === 0) return eventsSince<Measurement>(token, "measurement", undefined, 1);
      return evs.reverse();
    },
    [token, rangeS],
  );
  useEffect(() => {
    if (history.data) setSeries((cur) => addPoints(cur, history.data!, Date.now() / 1000 - rangeS));
  }, [history.data]);
  const locations = useLoad("Locations", () => eventsSince<Location>(token, "location", undefined, 200), [token]);
  const [liveLocations, setLiveLocations] = useState<Location[]>([]);
  const alerts = useLoad("Alerts", () => eventsSince<AlertEvent>(token, "alert", undefined, 20), [token]);
  const [liveAlerts, setLiveAlerts] = useState<AlertEvent[]>([]);
  const invocations = useLoad(
    "Invocations (GET /devices/{token}/invocations)",
    () => get<Page<Invocation>>(`/api/v1/devices/${enc(token)}/invocations`, { page_size: 20 }).then((p) => p.items),
    [token],
  );
  const [invs, setInvs] = useState<Invocation[]>([]);
  useEffect(() => setInvs(invocations.data ?? []), [invocations.data]);
  useEffect(() => {
    setSeries(EMPTY);
    setLiveLocations([]);
    setLiveAlerts([]);
  }, [token]);
  const zones = useLoad(
    "Zones",
    async () => {
      const a = await get<Page<{ area: string; active: string; released: string | null }>>("/api/v1/assignments", { device: token, page_size: 20 });
      const area = a.items.find((x) => !x.released && x.area)?.area ?? a.items.find((x) => x.area)?.area;
      if (!area) return [] as Zone[];
      return (await get<Page<Zone>>(`/api/v1/areas/${enc(area)}/zones`, { page_size: 100 })).items;
    },
    [token],
  );

  const upsert = (inv: Invocation) =>
    setInvs((xs) => {
      const i = xs.findIndex((x) => x.id === inv.id);
      if (i < 0) return [inv, ...xs];
      const next = xs.slice();
      if (inv.updated >= xs[i].updated || inv.status !== xs[i].status) next[i] = { ...xs[i], ...inv };
      return next;
    });

  const refreshState = useThrottled(state.reload, 1000);
  useLive(
    (m) => {
      if (m.kind === "dropped") {
        history.reload();
        invocations.reload();
        refreshState();
        return;
      }
      if (m.kind === "invocation") {
        if (m.data.device === token) upsert(m.data);
        return;
      }
      if (m.kind !== "event" || m.data.device !== token) return;
      const ev = m.data;
      if (ev.type === "measurement") setSeries((s) => addPoints(s, [ev], Date.now() / 1000 - rangeS));
      else if (ev.type === "location") setLiveLocations((l) => [...l, ev].slice(-200));
      else if (ev.type === "alert") setLiveAlerts((a) => [ev, ...a].slice(0, 20));
      refreshState();
    },
    [token, rangeS],
  );
  // Presence and link changes also arrive as state_change events; this catches anything else.
  useInterval(state.reload, 5000);

  const points: Point[] = useMemo(() => {
    const seen = new Set<string>();
    const all = [...(locations.data ?? []).slice().reverse(), ...liveLocations].filter((l) => !seen.has(l.id) && (seen.add(l.id), true));
    return all.slice(-200).map((l) => ({ lat: l.lat, lon: l.lon, time: l.event_time }));
  }, [locations.data, liveLocations]);
  const alertList = useMemo(() => {
    const seen = new Set<string>();
    return [...liveAlerts, ...(alerts.data ?? [])].filter((a) => !seen.has(a.id) && (seen.add(a.id), true)).slice(0, 20);
  }, [alerts.data, liveAlerts]);

  if (device.error) {
    return (
      <main class="page">
        <h1>{token}</h1>
        <ErrorNote error={device.error} />
        <p>
          <a href="/devices">Back to the device list</a>
        </p>
      </main>
    );
  }
  const d = device.data;
  const s = state.data;
  const health = healthOf(s);
  const names = Array.from(new Set([...Object.keys(s?.measurements ?? {}), ...Object.keys(series.by)])).sort();

  return (
    <main class="page">
      <p class="crumbs">
        <a href="/devices">Devices</a> › {token}
      </p>
      <div class="title-row">
        <h1>{token}</h1>
        <StateBadge state={health} />
      </div>
      {d && deviceLabel(d) && (
        <p class="device-name" data-testid="device-name">
          {deviceLabel(d)}
        </p>
      )}
      <div class="grid">
        <Card title="State" testid="device-state">
          <ErrorNote error={state.error} />
          <dl class="kv">
            <dt>type</dt>
            <dd>{d?.device_type ?? "…"}</dd>
            <dt>state</dt>
            <dd data-testid="device-health">{health}</dd>
            <dt>presence</dt>
            <dd>{s ? `${s.presence} since ${fmtTime(s.presence_changed)}` : "no state yet"}</dd>
            <dt>last seen</dt>
            <dd>{s ? `${fmtTime(s.last_seen)} (${ago(s.last_seen)})` : "—"}</dd>
            <dt>raised rules</dt>
            <dd>{s && s.raised_rules.length ? s.raised_rules.join(", ") : "none"}</dd>
            {d?.created && (
              <>
                <dt>registered</dt>
                <dd>{fmtTime(d.created)}</dd>
              </>
            )}
          </dl>
        </Card>
        <Card title="Link health" testid="link-health">
          {s?.link ? (
            <dl class="kv">
              <dt>edge link</dt>
              <dd>
                <span class={`badge link-${s.link.status}`}>{s.link.status}</span>
              </dd>
              <dt>adapter</dt>
              <dd>{s.link.adapter || "—"}</dd>
              <dt>since</dt>
              <dd>{fmtTime(s.link.time)}</dd>
            </dl>
          ) : (
            <p class="muted">The edge has reported no link status for this device.</p>
          )}
        </Card>
        <Card title="QR label">
          <QrLabel token={token} />
        </Card>
      </div>

      <Card title="Measurements" testid="measurements">
        <div class="range" role="group" aria-label="time range">
          {RANGES.map(([label, secs]) => (
            <button key={label} type="button" class={secs === rangeS ? "active" : ""} aria-pressed={secs === rangeS} onClick={() => setRangeS(secs)}>
              {label}
            </button>
          ))}
        </div>
        <ErrorNote error={history.error} />
        {names.length === 0 && <p class="muted">No measurements yet.</p>}
        <div class="charts">
          {names.map((n) => {
            const ser = series.by[n] ?? { xs: [], ys: [] };
            const last = ser.ys.length ? ser.ys[ser.ys.length - 1] : s?.measurements[n]?.value;
            const lastT = ser.xs.length ? new Date(ser.xs[ser.xs.length - 1] * 1000).toISOString() : s?.measurements[n]?.time;
            const unit = series.units[n]?.unit ?? "";
            return (
              <div class="chart-box" key={n} data-measurement={n}>
                <div class="chart-head">
                  <strong data-testid="chart-title">{unit ? `${n} (${unit})` : n}</strong>
                  <span data-testid="last-value">{fmtValue(last, unit)}</span>
                  <span class="muted small">
                    at {fmtTime(lastT)} · <span data-testid="point-count">{ser.xs.length}</span> point{ser.xs.length === 1 ? "" : "s"}
                  </span>
                </div>
                <MeasurementChart name={n} unit={unit} xs={ser.xs} ys={ser.ys} rangeS={rangeS} />
              </div>
            );
          })}
        </div>
      </Card>

      <div class="grid two">
        <Card title="Commands" testid="commands">
          <ErrorNote error={dtype.error} />
          {dtype.data && <CommandForm device={token} commands={dtype.data.commands} onSent={upsert} />}
          <h3>History</h3>
          <ErrorNote error={invocations.error} />
          <InvocationTable items={invs} />
        </Card>
        <Card title="Last locations" testid="locations">
          <ErrorNote error={locations.error} />
          {points.length === 0 ? (
            <p class="muted">This device has reported no location.</p>
          ) : (
            <>
              <DeviceMap points={points} zones={zones.data ?? []} />
              <p class="muted small">
                {points.length} location{points.length === 1 ? "" : "s"}, newest in red
                {zones.data && zones.data.length > 0 ? `; ${zones.data.length} zone(s) of its area` : ""}. No map tiles: positions only.
              </p>
            </>
          )}
        </Card>
      </div>

      <Card title="Alerts" testid="device-alerts">
        <ErrorNote error={alerts.error} />
        {alertList.length === 0 ? (
          <p class="muted">No alerts.</p>
        ) : (
          <TableWrap>
            <table>
              <thead>
                <tr>
                  <th>time</th>
                  <th>level</th>
                  <th>type</th>
                  <th>message</th>
                  <th>state</th>
                </tr>
              </thead>
              <tbody>
                {alertList.map((a) => (
                  <tr key={a.id}>
                    <td class="nowrap">{fmtTime(a.event_time)}</td>
                    <td>
                      <LevelBadge level={a.level} />
                    </td>
                    <td>{a.alert_type}</td>
                    <td>{a.message}</td>
                    <td>{a.metadata?.alert_state ?? a.source}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </TableWrap>
        )}
      </Card>
    </main>
  );
}
