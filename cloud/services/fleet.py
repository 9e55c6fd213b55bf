"""Dashboard queries over the registry, the device states, the site and the edge directory.

Plain async methods (no web framework), like :mod:`fieldgate.cloud.services.management`, which they
build on for customer scoping. They answer the questions of the dashboard's overview and
device list: device search and filters, counts by state, alerts, edges, a device's
invocations. The filters scan the tenant's devices (at most :data:`MAX_SCAN`): fine for the
fleets of this project's scale, not an index for millions of devices.

A device's *state class* (``online``/``offline``/``missing``/``unknown``) is one of four, so
the counts add up to the number of devices: ``unknown`` without any state yet; ``missing``
when its presence is missing; ``offline`` when present but its edge reports the link
disconnected; ``online`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from fieldgate.cloud.errors import NotFound
from fieldgate.cloud.services.commands import CommandService
from fieldgate.cloud.services.management import MAX_PAGE_SIZE, Management, check_page
from fieldgate.cloud.store import Page
from fieldgate.cloud.store.edges import EdgeDirectory, EdgeRecord
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.store.site import SiteStore
from fieldgate.cloud.store.state import MISSING, AlertValue, DeviceState, DeviceStateStore
from fieldgate.timeutil import now_ms
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc

MAX_SCAN = 50_000
_STATES_PAGE = 1000
DEVICE_ALERT_WINDOW_MS = 3_600_000  # "raised" alerts: device alerts of the last hour

StateClass = Literal["online", "offline", "missing", "unknown"]
PresenceFilter = Literal["present", "missing", "online", "offline"]


def state_class(state: DeviceState | None) -> StateClass:
    if state is None:
        return "unknown"
    if state.presence == MISSING:
        return "missing"
    if state.link is not None and state.link.status == "disconnected":
        return "offline"
    return "online"


def _matches(state: DeviceState | None, presence: PresenceFilter) -> bool:
    cls = state_class(state)
    if presence == "present":
        return cls in ("online", "offline")
    return cls == presence


def device_alerts(s: DeviceState, which: Literal["raised", "all"], now: int) -> list[AlertValue]:
    """A device's alerts as the dashboard shows them. ``raised``: its last alert if that was
    raised by a rule that is still raised, or sent by the device itself (no rule) within the
    last hour (:data:`DEVICE_ALERT_WINDOW_MS`: a device alert has no "cleared"), and an alert
    for each other rule raised now. ``all``: its last alert, whatever it was, and its raised
    rules."""
    raised = {rid: r for rid, r in s.rules.items() if r.raised}
    out: list[AlertValue] = []
    a = s.last_alert
    if a is not None:
        if a.rule:
            keep = which == "all" or a.rule in raised
        else:
            keep = which == "all" or now - a.time_ms <= DEVICE_ALERT_WINDOW_MS
        if keep:
            out.append(a)
    for rid, r in sorted(raised.items()):
        if a is not None and a.rule == rid:
            continue
        out.append(
            AlertValue(
                time_ms=r.since_ms or r.updated_ms,
                alert_type=rid,
                level="warning",
                message=f"rule {rid} is raised",
                source="system",
                state="raised",
                rule=rid,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    search: str | None = None  # substring of the token or the "name" metadata (case-insensitive)
    device_type: str | None = None
    presence: PresenceFilter | None = None
    group: str | None = None
    area: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.search or self.device_type or self.presence or self.group or self.area)


@dataclass(frozen=True, slots=True)
class FleetCounts:
    devices: int
    online: int
    offline: int
    missing: int
    unknown: int
    alerts_raised: int


@dataclass(frozen=True, slots=True)
class AlertItem:
    device: str
    device_type: str
    alert: AlertValue


class FleetQueries:
    def __init__(
        self,
        registry: Registry,
        mgmt: Management,
        commands: CommandService,
        *,
        states: DeviceStateStore | None = None,
        site: SiteStore | None = None,
        edges: EdgeDirectory | None = None,
    ) -> None:
        self._registry = registry
        self._mgmt = mgmt
        self._commands = commands
        self._states = states
        self._site = site
        self._edges = edges

    # -- devices ---------------------------------------------------------------------------

    async def _all_devices(self, tenant: str, customer: str | None) -> list[model.Device]:
        out: list[model.Device] = []
        page = 1
        while len(out) < MAX_SCAN:
            p = await self._mgmt.list_devices(tenant, page, MAX_PAGE_SIZE, customer=customer)
            out.extend(p.items)
            if not p.items or page * MAX_PAGE_SIZE >= p.total:
                break
            page += 1
        return out[:MAX_SCAN]

    async def _states_of(self, tenant: str, tokens: Sequence[str]) -> dict[str, DeviceState]:
        if self._states is None or not tokens:
            return {}
        return await self._states.get_states(tenant, tokens)

    async def list_devices(
        self, tenant: str, f: DeviceFilter, page: int, page_size: int, *, customer: str | None = None
    ) -> Page[model.Device]:
        """The devices matching every filter of ``f``, by token; NotFound for an unknown group,
        area or device type (a typo is not an empty list)."""
        check_page(page, page_size)
        if f.empty:
            return await self._mgmt.list_devices(tenant, page, page_size, customer=customer)
        members: set[str] | None = None
        if f.group:
            if self._site is None:
                raise NotFound(f"device group '{f.group[:140]}' does not exist (no site store)")
            members = set(await self._site.members(tenant, f.group))  # NotFound if unknown
        if f.area and (self._site is None or await self._site.get(tenant, "area", f.area) is None):
            raise NotFound(f"area '{f.area[:140]}' does not exist")
        if f.device_type and await self._registry.get_device_type(tenant, f.device_type) is None:
            raise NotFound(f"device type '{f.device_type[:140]}' does not exist")
        needle = (f.search or "").lower()
        found = []
        for d in await self._all_devices(tenant, customer):
            if members is not None and d.token not in members:
                continue
            if f.device_type and d.device_type != f.device_type:
                continue
            name = d.metadata.get("name", "")
            if needle and needle not in d.token.lower() and needle not in name.lower():
                continue
            found.append(d)
        if f.area:
            kept = []
            for d in found:
                active = await self._registry.active_assignment(tenant, d.token)
                if active is not None and active.area == f.area:
                    kept.append(d)
            found = kept
        if f.presence:
            states = await self._states_of(tenant, [d.token for d in found])
            found = [d for d in found if _matches(states.get(d.token), f.presence)]
        start = (page - 1) * page_size
        return Page(items=found[start : start + page_size], total=len(found), page=page, page_size=page_size)

    # -- overview --------------------------------------------------------------------------

    async def counts(self, tenant: str, *, customer: str | None = None) -> FleetCounts:
        """Devices by state class, and how many have a raised alert: exactly the devices that
        :meth:`alerts` lists for ``raised`` (a rule raised now, or a device-sent alert of the
        last hour), so the overview's number and the alerts page agree."""
        devices = await self._all_devices(tenant, customer)
        states = await self._states_of(tenant, [d.token for d in devices])
        now = now_ms()
        by: dict[StateClass, int] = {"online": 0, "offline": 0, "missing": 0, "unknown": 0}
        raised = 0
        for d in devices:
            s = states.get(d.token)
            by[state_class(s)] += 1
            if s is not None and device_alerts(s, "raised", now):
                raised += 1
        return FleetCounts(len(devices), by["online"], by["offline"], by["missing"], by["unknown"], raised)

    async def alerts(
        self, tenant: str, which: Literal["raised", "all"], *, customer: str | None = None
    ) -> list[AlertItem]:
        """Newest first, the :func:`device_alerts` of every device. (Older alerts are in each
        device's events.)"""
        devices = await self._all_devices(tenant, customer)
        states = await self._states_of(tenant, [d.token for d in devices])
        now = now_ms()
        out: list[AlertItem] = []
        for d in devices:
            s = states.get(d.token)
            if s is None:
                continue
            out.extend(AlertItem(d.token, d.device_type, a) for a in device_alerts(s, which, now))
        out.sort(key=lambda i: (-i.alert.time_ms, i.device))
        return out

    async def edges(self, tenant: str | None) -> list[EdgeRecord]:
        """The edges whose events carried ``tenant`` (None: every edge)."""
        if self._edges is None:
            return []
        found = await self._edges.list_edges()
        return [e for e in found if tenant is None or tenant in e.tenants]

    async def edges_connected(self, tenant: str | None) -> int:
        now = now_ms()
        return sum(1 for e in await self.edges(tenant) if e.connected(now))

    # -- invocations -----------------------------------------------------------------------

    async def device_invocations(
        self, tenant: str, device: str, page: int, page_size: int, *, customer: str | None = None
    ) -> Page[svc.InvocationState]:
        """The device's invocations, newest first, from its command_invocation events (the
        event store keeps them per device) read through the invocation store for the status."""
        events = await self._mgmt.list_events(
            tenant, device, kind="command_invocation", page=page, page_size=page_size, customer=customer
        )
        items = []
        for ev in events.items:
            try:
                items.append(await self._commands.get(tenant, ev.command_invocation.invocation))
            except NotFound:
                continue  # the event outlived its invocation (tenant data partly removed)
        return Page(items=items, total=events.total, page=page, page_size=page_size)

    async def list_devices_all(self, tenant: str, customer: str | None) -> list[str]:
        """Every device token the caller sees (a customer's live stream filter)."""
        return [d.token for d in await self._all_devices(tenant, customer)]
