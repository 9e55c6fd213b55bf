"""Rule evaluation as pure functions: no I/O, no clock of its own, no global state.

:func:`evaluate_event` takes one rule, that rule's :class:`RuleState`
for the device (None the first time) and one event, and returns the new state and at most one
:class:`Firing` (an alert to raise or clear). :func:`evaluate_clock` does the same for the one
time-driven kind, ``missing_data``, given the current time. The device state stage keeps the
state with the device and turns firings into Alert events.

Order tolerance: an event older than the last one a rule evaluated for the device (event
time), or that same event again (its alternate id), changes nothing — so a replay after a
restart, or the edge re-sending a batch, never fires twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from fieldgate.cloud.domain.rules.model import (
    GeofenceRule,
    MissingDataRule,
    Operator,
    Point,
    RateOfChangeRule,
    Rule,
    ThresholdRule,
)
from fieldgate.v1 import events_pb2 as pb

MAX_RATE_SAMPLES = 64  # per device and rule: the newest samples within the window are kept


@dataclass(frozen=True, slots=True)
class RuleState:
    """One rule's evaluation state for one device (the state store keeps it with the
    device's state, cloud/store/state.py)."""

    updated_ms: int = 0  # event time of the last event evaluated (older ones are skipped)
    last_alternate_id: str = ""  # ... and its alternate id (a replay of it is skipped too)
    raised: bool = False
    since_ms: int | None = None  # threshold/rate: when the condition started to hold
    samples: tuple[tuple[int, float], ...] = ()  # rate_of_change: (event time, value) in the window
    seen_ms: int = 0  # missing_data: received time the measurement was last seen (or tracking began)

    def newer_than(self, other: RuleState | None) -> bool:
        return other is None or self.updated_ms >= other.updated_ms


FiringState = Literal["raised", "cleared"]


@dataclass(frozen=True, slots=True)
class Firing:
    rule: Rule
    state: FiringState
    message: str
    time_ms: int  # event time of the alert
    key: str  # makes the alert's alternate id: rule:<id>:<state>:<key> (deterministic)
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def alternate_id(self) -> str:
        return f"rule:{self.rule.id}:{self.state}:{self.key}"


class PolygonSource(Protocol):
    """Where a geofence rule's polygon comes from (inline, or a zone: cloud/pipeline/zones.py).
    Empty: unknown for now (the rule's state is left as it is)."""

    def polygon(self, tenant: str, rule: GeofenceRule) -> Sequence[Point]: ...


class InlinePolygons:
    """The polygon given in the rule itself."""

    def polygon(self, tenant: str, rule: GeofenceRule) -> Sequence[Point]:
        return rule.polygon


def point_in_polygon(lat: float, lon: float, polygon: Sequence[Point]) -> bool:
    """Ray casting on (lon, lat) as plane coordinates (fine for fences of a few km; the
    polygon must not cross the antimeridian). Points on an edge may fall either way."""
    inside = False
    n = len(polygon)
    for i in range(n):
        lat1, lon1 = polygon[i]
        lat2, lon2 = polygon[(i + 1) % n]
        if (lat1 > lat) != (lat2 > lat):
            cross = lon1 + (lat - lat1) * (lon2 - lon1) / (lat2 - lat1)
            if lon < cross:
                inside = not inside
    return inside


def compare(op: Operator, x: float, v: float) -> bool:
    if op == ">":
        return x > v
    if op == ">=":
        return x >= v
    if op == "<":
        return x < v
    return x <= v


def still_on(op: Operator, x: float, v: float, hysteresis: float) -> bool:
    """Whether a raised condition still holds: the value must get past ``v`` by more than
    ``hysteresis`` (downwards for > and >=, upwards for < and <=) to clear."""
    return compare(op, x, v - hysteresis if op in (">", ">=") else v + hysteresis)


def _stale(rs: RuleState | None, ev: pb.Event) -> bool:
    if rs is None:
        return False
    t = ev.event_time_ms
    return t < rs.updated_ms or (t == rs.updated_ms and ev.alternate_id == rs.last_alternate_id)


def _stamp(rs: RuleState, ev: pb.Event) -> RuleState:
    return dataclasses.replace(rs, updated_ms=ev.event_time_ms, last_alternate_id=ev.alternate_id)


def _level_crossing(
    rule: ThresholdRule | RateOfChangeRule,
    rs: RuleState,
    x: float,
    t: int,
    for_ms: int,
    what: str,
    key: str,
) -> tuple[RuleState, Firing | None]:
    op, v, h = rule.operator, rule.value, rule.hysteresis
    if rs.raised:
        if still_on(op, x, v, h):
            return rs, None
        back = v - h if op in (">", ">=") else v + h
        msg = f"cleared: {what} = {x:g}, back past {back:g}"
        return dataclasses.replace(rs, raised=False, since_ms=None), Firing(rule, "cleared", msg, t, key)
    if not compare(op, x, v):
        return dataclasses.replace(rs, since_ms=None), None
    since = rs.since_ms if rs.since_ms is not None and rs.since_ms <= t else t
    if t - since < for_ms:
        return dataclasses.replace(rs, since_ms=since), None
    held = f" for {(t - since) / 1000:g} s" if for_ms else ""
    msg = rule.message or f"{what} = {x:g} {op} {v:g}{held}"
    return dataclasses.replace(rs, raised=True, since_ms=since), Firing(rule, "raised", msg, t, key)


def evaluate_event(
    tenant: str,
    rule: Rule,
    rs: RuleState | None,
    ev: pb.Event,
    polygons: PolygonSource | None = None,
) -> tuple[RuleState | None, Firing | None]:
    """The rule's new state for the device after ``ev``, and what it fires (see the module
    docstring). Returns ``rs`` itself when the event does not concern the rule."""
    if _stale(rs, ev):
        return rs, None
    kind = ev.WhichOneof("payload")
    t = ev.event_time_ms
    if isinstance(rule, MissingDataRule):
        received = ev.received_time_ms or t
        base = rs or RuleState(seen_ms=received)
        if kind != "measurement" or rule.measurement not in ev.measurement.values:
            return (base if rs is None else rs), None
        seen = max(base.seen_ms, received)
        new = _stamp(dataclasses.replace(base, seen_ms=seen), ev)
        if base.raised:
            msg = f"cleared: {rule.measurement} received again"
            return dataclasses.replace(new, raised=False), Firing(rule, "cleared", msg, t, ev.alternate_id)
        return new, None
    if isinstance(rule, GeofenceRule):
        if kind != "location":
            return rs, None
        poly = (polygons or InlinePolygons()).polygon(tenant, rule)
        if not poly:  # a zone not loaded yet, or gone: nothing to judge by
            return rs, None
        inside = point_in_polygon(ev.location.latitude, ev.location.longitude, poly)
        alarm = inside if rule.on == "enter" else not inside
        new = _stamp(rs or RuleState(), ev)
        where = f"({ev.location.latitude:g}, {ev.location.longitude:g})"
        if alarm and not new.raised:
            word = "entered" if rule.on == "enter" else "left"
            msg = rule.message or f"{word} the geofence at {where}"
            return dataclasses.replace(new, raised=True), Firing(rule, "raised", msg, t, ev.alternate_id)
        if not alarm and new.raised:
            word = "left" if rule.on == "enter" else "back inside"
            msg = f"cleared: {word} the geofence at {where}"
            return dataclasses.replace(new, raised=False), Firing(rule, "cleared", msg, t, ev.alternate_id)
        return new, None
    # threshold and rate_of_change: measurements carrying the rule's name
    if kind != "measurement" or rule.measurement not in ev.measurement.values:
        return rs, None
    x = float(ev.measurement.values[rule.measurement])
    new = _stamp(rs or RuleState(), ev)
    if isinstance(rule, ThresholdRule):
        return _level_crossing(rule, new, x, t, int(rule.for_s * 1000), rule.measurement, ev.alternate_id)
    window_start = t - int(rule.window_s * 1000)
    older = [(ts, val) for ts, val in new.samples if window_start <= ts < t]
    samples = (*older, (t, x))[-MAX_RATE_SAMPLES:]
    new = dataclasses.replace(new, samples=samples)
    if not older:
        return new, None  # nothing to compare with yet
    t0, x0 = older[0]
    rate = (x - x0) / ((t - t0) / 1000)
    return _level_crossing(rule, new, rate, t, 0, f"{rule.measurement} rate {rate:g}/s", ev.alternate_id)


def evaluate_clock(rule: MissingDataRule, rs: RuleState | None, now_ms: int) -> Firing | None:
    """The raise of a ``missing_data`` rule that is due at ``now_ms`` (None if not due). The
    state is not changed here: the alert goes through the pipeline and :func:`apply_own_alert`
    records it when the device's owner sees it."""
    if rs is None or rs.raised or rs.seen_ms <= 0:
        return None
    if now_ms - rs.seen_ms < rule.after_s * 1000:
        return None
    msg = rule.message or f"no {rule.measurement} received for {rule.after_s:g} s"
    return Firing(rule, "raised", msg, now_ms, f"missing:{rs.seen_ms}", (("seen_ms", str(rs.seen_ms)),))


def due_ms(rule: MissingDataRule, rs: RuleState | None) -> int | None:
    """When :func:`evaluate_clock` would next fire for this state (None: nothing pending)."""
    if rs is None or rs.raised or rs.seen_ms <= 0:
        return None
    return rs.seen_ms + int(rule.after_s * 1000)


def apply_own_alert(rule: Rule, rs: RuleState | None, ev: pb.Event) -> tuple[RuleState | None, Firing | None]:
    """A ``missing_data`` raise sent by a clock check, seen back from the pipeline: the rule
    is now raised — unless the measurement arrived meanwhile, in which case the alert is
    cleared at once (so no raise stays open in the device's events)."""
    if not isinstance(rule, MissingDataRule) or ev.alert.state != pb.ALERT_STATE_RAISED:
        return rs, None
    try:
        seen = int(ev.metadata.get("seen_ms", ""))
    except ValueError:
        return rs, None
    if rs is None or rs.raised:
        return rs, None
    if rs.seen_ms > seen:
        msg = f"cleared: {rule.measurement} received again"
        return rs, Firing(rule, "cleared", msg, ev.event_time_ms, ev.alternate_id)
    return dataclasses.replace(rs, raised=True), None
