import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { get } from "../api";
import { ErrorNote, Pager, StateBadge, TableWrap } from "../components/common";
import type { Device, DeviceState, DeviceType, Named, Page } from "../types";
import { navigate } from "../router";
import { ago, healthOf, useInterval, useLive, useLoad, useThrottled } from "../util";

const PAGE_SIZE = 25;
const STATES = ["online", "offline", "missing", "present"];

/** The list's filters and page, as in the address (/devices?presence=missing&page=2): the
 *  query parameters are the API's own (GET /api/v1/devices). */
interface Filters {
  search: string;
  device_type: string;
  presence: string;
  group: string;
  area: string;
  page: number;
}

export function filtersOf(query: string): Filters {
  const q = new URLSearchParams(query);
  const page = Number.parseInt(q.get("page") ?? "", 10);
  return {
    search: (q.get("search") ?? "").trim(),
    device_type: q.get("device_type") ?? "",
    presence: q.get("presence") ?? "",
    group: q.get("group") ?? "",
    area: q.get("area") ?? "",
    page: Number.isFinite(page) && page > 1 ? page : 1,
  };
}

/** /devices with these filters (empty ones and page 1 left out). */
export function devicesHref(f: Filters): string {
  const q = new URLSearchParams();
  for (const k of ["search", "device_type", "presence", "group", "area"] as const) if (f[k]) q.set(k, f[k]);
  if (f.page > 1) q.set("page", String(f.page));
  const qs = q.toString();
  return qs ? `/devices?${qs}` : "/devices";
}

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
  // A value from the address that is not (or not yet) a choice is still shown as chosen.
  const all: [string, string][] = value && !options.some(([v]) => v === value) ? [...options, [value, value]] : options;
  return (
    <label class="filter">
      {label}
      <select value={value} onChange={(e) => onChange(e.currentTarget.value)}>
        <option value="">any</option>
        {all.map(([v, text]) => (
          <option key={v} value={v}>
            {text}
          </option>
        ))}
      </select>
    </label>
  );
}

export function DevicesPage({ query }: { query: string }) {
  const filters = useMemo(() => filtersOf(query), [query]);
  const { search, device_type: type, presence: state, group, area, page } = filters;
  /** Change filters in the address (back to page 1 unless the page is what changes); from the
   *  address as it is now, so a late search update does not undo a filter chosen meanwhile. */
  const setFilters = (change: Partial<Filters>, replace = false) =>
    navigate(devicesHref({ ...filtersOf(location.search), page: 1, ...change }), { replace, scroll: "page" in change });
  const [typed, setTyped] = useState(search);
  const typedSearch = useRef(search); // the search the box last put into the address
  // The address changed otherwise (a link, back/forward): the search box follows it.
  useEffect(() => {
    if (search !== typedSearch.current) {
      typedSearch.current = search;
      setTyped(search);
    }
  }, [search]);
  // Typing: the address follows, 300 ms after the last key (replacing, not one entry per key).
  useEffect(() => {
    const want = typed.trim();
    if (want === search) return;
    const t = setTimeout(() => {
      typedSearch.current = want;
      setFilters({ search: want }, true);
    }, 300);
    return () => clearTimeout(t);
  }, [typed, search]);
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
        <Select label="Type" value={type} onChange={(v) => setFilters({ device_type: v })} options={named(types)} />
        <Select label="State" value={state} onChange={(v) => setFilters({ presence: v })} options={STATES.map((s) => [s, s])} />
        <Select label="Group" value={group} onChange={(v) => setFilters({ group: v })} options={named(groups)} />
        <Select label="Area" value={area} onChange={(v) => setFilters({ area: v })} options={named(areas)} />
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
          <Pager page={p.page} pageSize={p.page_size} total={p.total} onPage={(n) => setFilters({ page: n })} />
        </>
      )}
    </main>
  );
}
