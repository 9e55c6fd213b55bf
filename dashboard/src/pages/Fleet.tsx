import { useState } from "preact/hooks";
import { get } from "../api";
import { Card, ErrorNote, TableWrap } from "../components/common";
import { describeEvent } from "../describe";
import { fmtValue } from "../format";
import type { DeviceEvent, Fleet } from "../types";
import { useInterval, useLive, useLoad, useThrottled } from "../util";

/** One figure; with `href` a link to the list behind it (e.g. the missing devices). */
function Stat({ label, value, cls, testid, href }: { label: string; value: string | number; cls?: string; testid?: string; href?: string }) {
  const body = (
    <>
      <span class="value">{value}</span>
      <span class="label">{label}</span>
    </>
  );
  return href ? (
    <a class={`stat link ${cls ?? ""}`} data-testid={testid} href={href}>
      {body}
    </a>
  ) : (
    <div class={`stat ${cls ?? ""}`} data-testid={testid}>
      {body}
    </div>
  );
}

export function FleetPage({ admin }: { admin: boolean }) {
  const fleet = useLoad("Fleet summary (GET /api/v1/fleet)", () => get<Fleet>("/api/v1/fleet"), []);
  const [recent, setRecent] = useState<DeviceEvent[]>([]);
  const refresh = useThrottled(fleet.reload, 2000);
  useLive((m) => {
    if (m.kind === "event") {
      setRecent((r) => [m.data, ...r].slice(0, 15));
      refresh();
    } else if (m.kind === "dropped") refresh();
  }, []);
  useInterval(fleet.reload, 10000);
  const f = fleet.data;
  return (
    <main class="page">
      <h1>Fleet</h1>
      <ErrorNote error={fleet.error} />
      {!f && !fleet.error && <p class="muted">Loading…</p>}
      {f && (
        <div class="stats" data-testid="fleet-stats">
          <Stat label="devices" value={f.devices} testid="fleet-devices" href="/devices" />
          <Stat label="online" value={f.online} cls="state-online" testid="fleet-online" href="/devices?presence=online" />
          <Stat label="offline" value={f.offline} cls="state-offline" testid="fleet-offline" href="/devices?presence=offline" />
          <Stat label="missing" value={f.missing} cls="state-missing" testid="fleet-missing" href="/devices?presence=missing" />
          {f.unknown > 0 && <Stat label="no state yet" value={f.unknown} cls="state-unknown" />}
          <Stat label="events / s (last 10 s)" value={fmtValue(f.events_per_s)} testid="fleet-eps" />
          <Stat label="events last minute" value={f.events_last_minute} />
          <Stat label="failed decodes (1 h)" value={f.failed_decodes_last_hour} cls={f.failed_decodes_last_hour > 0 ? "warn" : ""} />
          <Stat
            label="devices with raised alerts"
            value={f.alerts_raised}
            cls={f.alerts_raised > 0 ? "warn" : ""}
            testid="fleet-alerts"
            href="/alerts"
          />
          <Stat label="edges connected" value={f.edges_connected} testid="fleet-edges" />
        </div>
      )}
      {f && admin && f.tenants && (
        <Card title="Tenants">
          <ul class="chips" data-testid="fleet-tenants">
            {f.tenants.map((t) => (
              <li key={t}>{t}</li>
            ))}
          </ul>
        </Card>
      )}
      <Card title="Just happened" testid="recent-events">
        {recent.length === 0 ? (
          <p class="muted">Live events of the tenant appear here as they arrive.</p>
        ) : (
          <TableWrap>
            <table>
              <thead>
                <tr>
                  <th>time</th>
                  <th>device</th>
                  <th>type</th>
                  <th>what</th>
                </tr>
              </thead>
              <tbody>
                {recent.map((e) => (
                  <tr key={e.id}>
                    <td class="nowrap">{new Date(e.event_time).toLocaleTimeString(undefined, { hour12: false })}</td>
                    <td>
                      <a href={`/devices/${encodeURIComponent(e.device)}`}>{e.device}</a>
                    </td>
                    <td>{e.type}</td>
                    <td>{describeEvent(e)}</td>
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
