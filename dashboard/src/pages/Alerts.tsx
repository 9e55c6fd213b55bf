import { useState } from "preact/hooks";
import { get } from "../api";
import { ErrorNote, LevelBadge, Pager, TableWrap } from "../components/common";
import type { Alert, Page } from "../types";
import { fmtTime, useInterval, useLive, useLoad, useThrottled } from "../util";

const PAGE_SIZE = 50;

export function AlertsPage() {
  const [which, setWhich] = useState<"raised" | "all">("raised");
  const [page, setPage] = useState(1);
  const alerts = useLoad(
    "Alerts (GET /api/v1/alerts)",
    () => get<Page<Alert>>("/api/v1/alerts", { state: which, page, page_size: PAGE_SIZE }),
    [which, page],
  );
  const refresh = useThrottled(alerts.reload, 2000);
  useLive((m) => {
    if (m.kind === "dropped" || (m.kind === "event" && (m.data.type === "alert" || m.data.type === "state_change"))) refresh();
  }, []);
  useInterval(alerts.reload, 15000);
  const p = alerts.data;
  return (
    <main class="page">
      <h1>Alerts</h1>
      <div class="range" role="group" aria-label="which alerts">
        {(["raised", "all"] as const).map((w) => (
          <button
            key={w}
            type="button"
            class={w === which ? "active" : ""}
            aria-pressed={w === which}
            onClick={() => {
              setWhich(w);
              setPage(1);
            }}
          >
            {w === "raised" ? "Raised now / last hour" : "All"}
          </button>
        ))}
      </div>
      <ErrorNote error={alerts.error} />
      {!p && !alerts.error && <p class="muted">Loading…</p>}
      {p && (
        <>
          <TableWrap>
            <table data-testid="alerts-table">
              <thead>
                <tr>
                  <th>time</th>
                  <th>device</th>
                  <th>level</th>
                  <th>alert</th>
                  <th>message</th>
                  <th>rule</th>
                  <th>state</th>
                </tr>
              </thead>
              <tbody>
                {p.items.length === 0 && (
                  <tr>
                    <td colSpan={7} class="muted">
                      {which === "raised" ? "Nothing is raised: all quiet." : "No alerts."}
                    </td>
                  </tr>
                )}
                {p.items.map((a, i) => (
                  <tr key={`${a.device}-${a.time_ms}-${i}`}>
                    <td class="nowrap">{fmtTime(a.time)}</td>
                    <td>
                      <a href={`/devices/${encodeURIComponent(a.device)}`}>{a.device}</a>
                    </td>
                    <td>
                      <LevelBadge level={a.level} />
                    </td>
                    <td>{a.alert_type}</td>
                    <td>{a.message}</td>
                    <td>{a.rule || "—"}</td>
                    <td>{a.state || a.source}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </TableWrap>
          <Pager page={p.page} pageSize={p.page_size} total={p.total} onPage={setPage} />
        </>
      )}
    </main>
  );
}
