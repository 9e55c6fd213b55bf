import { useEffect, useState } from "preact/hooks";
import { get } from "../api";
import { ErrorNote, Pager, StateBadge, TableWrap } from "../components/common";
import type { Device, DeviceState, DeviceType, Named, Page } from "../types";
import { ago, healthOf, useInterval, useLive, useLoad, useThrottled } from "../util";

const PAGE_SIZE = 25;

export function deviceLabel(d: Device): string {
  return d.metadata?.name || d.comments || "";
}

function useOptions(path: string): Named[] {
  const [items, setItems] = useState<Named[]>([]);
  useEffect(() => {
    get<Page<Named>>(path, { page_size: 1000 }).then(
      (p) => setItems(p.items),
      () => setItems([]),
    );
  }, [path]);
  return items;
}

function Select({ label, value, onChange, options }: { label: string; value: string; onChange: (v: string) => void; options: [string, string][] }) {
  return (
    <label class="filter">
      {label}
      <select value={value} onChange={(e) => onChange(e.currentTarget.value)}>
        <option value="">any</option>
        {options.map(([v, text]) => (
          <option key={v} value={v}>
            {text}
          </option>
        ))}
      </select>
    </label>
  );
}

export function DevicesPage() {
  const [search, setSearch] = useState("");
  const [typed, setTyped] = useState("");
  const [type, setType] = useState("");
  const [state, setState] = useState("");
  const [group, setGroup] = useState("");
  const [area, setArea] = useState("");
  const [page, setPage] = useState(1);
  useEffect(() => {
    const t = setTimeout(() => setSearch(typed.trim()), 300);
    return () => clearTimeout(t);
  }, [typed]);
  useEffect(() => setPage(1), [search, type, state, group, area]);
  const types = useOptions("/api/v1/device-types");
  const groups = useOptions("/api/v1/device-groups");
  const areas = useOptions("/api/v1/areas");

  const devices = useLoad(
    "Devices",
    () =>
      get<Page<Device>>("/api/v1/devices", {
        search,
        device_type: type,
        presence: state,
        group,
        area,
        page,
        page_size: PAGE_SIZE,
      }),
    [search, type, state, group, area, page],
  );
  const states = useLoad(
    "Device states",
    async () => {
      const p = await get<Page<DeviceState>>("/api/v1/device-states", { page_size: 1000 });
      return new Map(p.items.map((s) => [s.device, s]));
    },
    [],
  );
  const refresh = useThrottled(() => {
    devices.reload();
    states.reload();
  }, 3000);
  useLive(
    (m) => {
      if (m.kind === "dropped") refresh();
      if (m.kind !== "event") return;
      const known = devices.data?.items.some((d) => d.token === m.data.device);
      if (!known || m.data.type === "state_change") refresh();
    },
    [devices.data],
  );
  useInterval(() => states.reload(), 15000);

  const p = devices.data;
  const named = (xs: Named[]): [string, string][] => xs.map((x) => [x.token, x.name ? `${x.name} (${x.token})` : x.token]);
  return (
    <main class="page">
      <h1>Devices</h1>
      <form class="filters" onSubmit={(e) => e.preventDefault()} role="search">
        <label class="filter grow">
          Search
          <input type="search" placeholder="token or name" value={typed} onInput={(e) => setTyped(e.currentTarget.value)} data-testid="device-search" />
        </label>
        <Select label="Type" value={type} onChange={setType} options={named(types)} />
        <Select
          label="State"
          value={state}
          onChange={setState}
          options={[
            ["online", "online"],
            ["offline", "offline"],
            ["missing", "missing"],
            ["present", "present"],
          ]}
        />
        <Select label="Group" value={group} onChange={setGroup} options={named(groups)} />
        <Select label="Area" value={area} onChange={setArea} options={named(areas)} />
      </form>
      <ErrorNote error={devices.error} />
      {!p && !devices.error && <p class="muted">Loading…</p>}
      {p && (
        <>
          <TableWrap>
            <table class="devices" data-testid="device-table">
              <thead>
                <tr>
                  <th>device</th>
                  <th>name</th>
                  <th>type</th>
                  <th>state</th>
                  <th>last seen</th>
                </tr>
              </thead>
              <tbody>
                {p.items.length === 0 && (
                  <tr>
                    <td colSpan={5} class="muted">
                      No device matches.
                    </td>
                  </tr>
                )}
                {p.items.map((d) => {
                  const s = states.data?.get(d.token);
                  return (
                    <tr key={d.token} data-device={d.token}>
                      <td data-label="device">
                        <a href={`/devices/${encodeURIComponent(d.token)}`}>{d.token}</a>
                      </td>
                      <td data-label="name" class="device-name">
                        {deviceLabel(d)}
                      </td>
                      <td data-label="type">{d.device_type}</td>
                      <td data-label="state">
                        <StateBadge state={healthOf(s)} />
                      </td>
                      <td data-label="last seen" class="nowrap">
                        {s ? ago(s.last_seen) : "—"}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </TableWrap>
          <Pager page={p.page} pageSize={p.page_size} total={p.total} onPage={setPage} />
        </>
      )}
    </main>
  );
}
