import { get } from "../api";
import { ErrorNote, TableWrap } from "../components/common";
import type { Edge } from "../types";
import { ago, fmtTime, useInterval, useLoad } from "../util";

function lag(ms: number | null): string {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${ms} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

export function EdgesPage() {
  const edges = useLoad("Edges (GET /api/v1/edges)", () => get<{ items: Edge[] }>("/api/v1/edges").then((r) => r.items), []);
  useInterval(edges.reload, 5000);
  const items = edges.data;
  return (
    <main class="page">
      <h1>Edges</h1>
      <p class="muted">Edge agents that carried this tenant's events. Refreshed every 5 s.</p>
      <ErrorNote error={edges.error} />
      {!items && !edges.error && <p class="muted">Loading…</p>}
      {items && (
        <TableWrap>
          <table data-testid="edges-table">
            <thead>
              <tr>
                <th>edge</th>
                <th>link</th>
                <th>connected since</th>
                <th>last seen</th>
                <th>buffer depth</th>
                <th>uplink lag</th>
                <th>failed decodes</th>
                <th>version</th>
              </tr>
            </thead>
            <tbody>
              {items.length === 0 && (
                <tr>
                  <td colSpan={8} class="muted">
                    No edge has connected yet.
                  </td>
                </tr>
              )}
              {items.map((e) => (
                <tr key={e.edge_id} data-edge={e.edge_id}>
                  <td>
                    <strong>{e.edge_id}</strong>
                  </td>
                  <td>
                    <span class={`badge ${e.connected ? "state-online" : "state-offline"}`}>{e.connected ? "connected" : "disconnected"}</span>
                  </td>
                  <td class="nowrap">{fmtTime(e.connected_since)}</td>
                  <td class="nowrap">
                    {fmtTime(e.last_seen)} <span class="muted small">{ago(e.last_seen)}</span>
                  </td>
                  <td>{e.buffer_depth ?? "—"}</td>
                  <td>{lag(e.uplink_lag_ms)}</td>
                  <td>{e.failed_decodes ?? "—"}</td>
                  <td>{e.version || "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      )}
    </main>
  );
}
