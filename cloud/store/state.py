"""Device state: what the cloud last knew of each device, and where it is kept.

:class:`DeviceState` is one device's last-known picture — last location, the last value (and
its time) of every measurement name, the last alert, when it was last heard from (event time
and received time), its presence (``present``/``missing``), the last link health its edge
reported, its assignment — plus the evaluation state of the rules that watch it
(:class:`RuleState`: duration timers, raised flags, rate windows), so that a restart or a replay
neither forgets a pending condition nor raises an alert twice.

:func:`merge` is how a store combines what it holds with a newer observation: field by field,
the value with the later event time wins, so an older event replayed or delivered late never
overwrites newer state (the stores are idempotent and order-tolerant by construction). Both
backends (:mod:`.sqlite.state`, :mod:`.cassandra.state`) implement :class:`DeviceStateStore`
with this one function, through :class:`StateStoreBase`, which holds the rules (a batch merged
in order, each device once; page checks; the result order) over the backends' row primitives.

The store also keeps each tenant's rule configuration (:meth:`DeviceStateStore.get_rules`):
one JSON document per rule, plus the per-device-type presence intervals.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from fieldgate.cloud.domain.rules.engine import RuleState
from fieldgate.cloud.store import Page, TenantOwned
from fieldgate.cloud.store.validators import check_page

Presence = Literal["present", "missing"]
PRESENT: Presence = "present"
MISSING: Presence = "missing"


@dataclass(frozen=True, slots=True)
class Timed:
    """A value and the event time it is from."""

    time_ms: int

    def newer_than(self, other: Timed | None) -> bool:
        return other is None or self.time_ms >= other.time_ms


@dataclass(frozen=True, slots=True)
class MeasurementValue(Timed):
    value: float


@dataclass(frozen=True, slots=True)
class LocationValue(Timed):
    lat: float
    lon: float
    ele: float = 0.0


@dataclass(frozen=True, slots=True)
class AlertValue(Timed):
    alert_type: str
    level: str
    message: str
    source: str = "device"  # device | system
    state: str = ""  # raised | cleared for rule alerts
    rule: str = ""
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class LinkValue(Timed):
    """The edge's last link-health report of the device (connected/disconnected)."""

    status: str
    adapter: str = ""


@dataclass(frozen=True, slots=True)
class DeviceState:
    device: str
    device_type: str = ""
    assignment: str = ""
    assignment_ms: int = 0  # event time of the event that carried ``assignment``
    last_event_ms: int = 0  # last seen: newest event time of the device's own events
    last_received_ms: int = 0  # last seen: newest received time
    presence: Presence = PRESENT
    presence_ms: int = 0  # when presence last changed (event time of the change)
    location: LocationValue | None = None
    measurements: Mapping[str, MeasurementValue] = field(default_factory=dict)
    last_alert: AlertValue | None = None
    link: LinkValue | None = None
    rules: Mapping[str, RuleState] = field(default_factory=dict)

    # ------------------------------------------------------------------ (de)serialisation

    def to_json(self) -> str:
        return json.dumps(_dump(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> DeviceState:
        return _load(json.loads(text))


def _dump(s: DeviceState) -> dict[str, Any]:
    def timed(v: Any) -> Any:
        if v is None:
            return None
        return {k: getattr(v, k) for k in v.__slots__} | {"time_ms": v.time_ms}

    return {
        "device": s.device,
        "device_type": s.device_type,
        "assignment": s.assignment,
        "assignment_ms": s.assignment_ms,
        "last_event_ms": s.last_event_ms,
        "last_received_ms": s.last_received_ms,
        "presence": s.presence,
        "presence_ms": s.presence_ms,
        "location": timed(s.location),
        "measurements": {k: [v.time_ms, v.value] for k, v in s.measurements.items()},
        "last_alert": timed(s.last_alert),
        "link": timed(s.link),
        "rules": {
            k: {
                "updated_ms": r.updated_ms,
                "last_alternate_id": r.last_alternate_id,
                "raised": r.raised,
                "since_ms": r.since_ms,
                "samples": [list(x) for x in r.samples],
                "seen_ms": r.seen_ms,
            }
            for k, r in s.rules.items()
        },
    }


def _load(d: Mapping[str, Any]) -> DeviceState:
    loc, alert, link = d.get("location"), d.get("last_alert"), d.get("link")
    return DeviceState(
        device=str(d["device"]),
        device_type=str(d.get("device_type", "")),
        assignment=str(d.get("assignment", "")),
        assignment_ms=int(d.get("assignment_ms", 0)),
        last_event_ms=int(d.get("last_event_ms", 0)),
        last_received_ms=int(d.get("last_received_ms", 0)),
        presence=MISSING if d.get("presence") == MISSING else PRESENT,
        presence_ms=int(d.get("presence_ms", 0)),
        location=LocationValue(**loc) if loc else None,
        measurements={
            k: MeasurementValue(int(t), float(v)) for k, (t, v) in d.get("measurements", {}).items()
        },
        last_alert=AlertValue(**alert) if alert else None,
        link=LinkValue(**link) if link else None,
        rules={
            k: RuleState(
                updated_ms=int(r.get("updated_ms", 0)),
                last_alternate_id=str(r.get("last_alternate_id", "")),
                raised=bool(r.get("raised", False)),
                since_ms=None if r.get("since_ms") is None else int(r["since_ms"]),
                samples=tuple((int(t), float(v)) for t, v in r.get("samples", ())),
                seen_ms=int(r.get("seen_ms", 0)),
            )
            for k, r in d.get("rules", {}).items()
        },
    )


def _newer(a: Any, b: Any) -> Any:
    """The one of two timed values with the later time (``a`` on a tie: the newer write)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a.time_ms >= b.time_ms else b


def merge(old: DeviceState | None, new: DeviceState) -> DeviceState:
    """``new`` applied over ``old``: every field keeps the value with the later event time.

    Idempotent (``merge(merge(o, n), n) == merge(o, n)``) and order-tolerant: applying an
    older observation after a newer one changes nothing the newer one set.
    """
    if old is None:
        return new
    measurements = dict(old.measurements)
    for name, value in new.measurements.items():
        measurements[name] = _newer(value, measurements.get(name))
    rules = dict(old.rules)
    for rule_id, rs in new.rules.items():
        have = rules.get(rule_id)
        rules[rule_id] = rs if rs.newer_than(have) else have  # type: ignore[assignment]
    newer_assignment = new.assignment_ms >= old.assignment_ms
    newer_presence = new.presence_ms >= old.presence_ms
    return replace(
        old,
        device_type=new.device_type or old.device_type,
        assignment=new.assignment if newer_assignment else old.assignment,
        assignment_ms=max(new.assignment_ms, old.assignment_ms),
        last_event_ms=max(new.last_event_ms, old.last_event_ms),
        last_received_ms=max(new.last_received_ms, old.last_received_ms),
        presence=new.presence if newer_presence else old.presence,
        presence_ms=max(new.presence_ms, old.presence_ms),
        location=_newer(new.location, old.location),
        measurements=measurements,
        last_alert=_newer(new.last_alert, old.last_alert),
        link=_newer(new.link, old.link),
        rules=rules,
    )


class DeviceStateStore(TenantOwned, Protocol):
    """Device states and rule configuration (rules, presence intervals), per tenant (a database
    or keyspace each); ``delete_tenant`` removes all three."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def get_states(self, tenant: str, devices: Sequence[str]) -> dict[str, DeviceState]:
        """The stored states of ``devices`` (those with none are absent from the result)."""

    async def apply(self, tenant: str, states: Sequence[DeviceState]) -> list[DeviceState]:
        """Merge each of ``states`` into what is stored (:func:`merge`); the results."""

    async def list_states(
        self, tenant: str, *, presence: Presence | None = None, page: int = 1, page_size: int = 100
    ) -> Page[DeviceState]:
        """States in device token order, optionally only those ``present`` or ``missing``."""

    async def delete_state(self, tenant: str, device: str) -> bool:
        """Forget a (deleted) device's state; True if there was one."""

    async def get_rules(self, tenant: str) -> dict[str, str]:
        """The tenant's rule rows: id → JSON document (cloud/domain/rules/model.py ``to_documents``)."""

    async def put_rule(self, tenant: str, rule_id: str, document: str) -> None: ...

    async def delete_rule(self, tenant: str, rule_id: str) -> bool:
        """True when a row was deleted."""

    async def replace_rules(self, tenant: str, documents: Mapping[str, str]) -> None:
        """Make the tenant's rule rows exactly ``documents``."""


def merge_batch(stored: Mapping[str, DeviceState], states: Sequence[DeviceState]) -> dict[str, DeviceState]:
    """Each device's stored state with its observations in ``states`` merged over it in order
    (a device seen twice in one batch gets both); only the devices of ``states``."""
    merged: dict[str, DeviceState] = {}
    for s in states:
        merged[s.device] = merge(merged.get(s.device) or stored.get(s.device), s)
    return merged


#: What :meth:`StateStoreBase.apply` makes of the stored states it is given (by device).
Change = Callable[[dict[str, DeviceState]], dict[str, DeviceState]]


class StateStoreBase:
    """The device-state rules of :class:`DeviceStateStore` over a backend's row primitives (a
    state row per device, listed by presence then device); the rule rows are primitives
    themselves (``get_rules``, ``put_rule``, ``delete_rule``, ``replace_rules`` in the
    backends)."""

    # --- primitives (backends) -----------------------------------------------------------------

    async def _read_states(self, tenant: str, devices: Sequence[str]) -> dict[str, DeviceState]:
        """The stored states of ``devices`` (each once); {} if the tenant has no tables (a read
        creates nothing)."""
        raise NotImplementedError

    async def _update_states(
        self, tenant: str, devices: Sequence[str], change: Change
    ) -> dict[str, DeviceState]:
        """Read the stored states of ``devices`` (each once), store ``change(stored)`` and return
        it — in one transaction where the backend has them (creates the tenant's tables)."""
        raise NotImplementedError

    async def _states_page(
        self, tenant: str, presence: Presence | None, limit: int, offset: int
    ) -> tuple[list[DeviceState], int] | None:
        """One page of states in device token order (only ``presence`` if given) and the count
        of all that match; None if the tenant has no tables."""
        raise NotImplementedError

    # --- the rules -----------------------------------------------------------------------------

    async def get_states(self, tenant: str, devices: Sequence[str]) -> dict[str, DeviceState]:
        return await self._read_states(tenant, list(dict.fromkeys(devices)))

    async def apply(self, tenant: str, states: Sequence[DeviceState]) -> list[DeviceState]:
        devices = list(dict.fromkeys(s.device for s in states))
        merged = await self._update_states(tenant, devices, lambda stored: merge_batch(stored, states))
        return [merged[s.device] for s in states]

    async def list_states(
        self, tenant: str, *, presence: Presence | None = None, page: int = 1, page_size: int = 100
    ) -> Page[DeviceState]:
        limit, offset = check_page(page, page_size)
        found = await self._states_page(tenant, presence, limit, offset)
        if found is None:
            return Page([], 0, page, page_size)
        rows, total = found
        return Page(rows, total, page, page_size)
