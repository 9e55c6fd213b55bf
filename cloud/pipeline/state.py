"""Device state and presence, and the rules that turn events into alerts: [persisted] → state.

Consumes ``[persisted]`` (consumer group ``state``): the events the event store has just
stored, so each event is seen once in the usual case (replays of [enriched] announce nothing
new), the state agrees with what the event API shows, and the alerts and presence changes this
stage emits come back to it *after* they are stored (which is how the device's last alert
becomes the stored alert). For every device of a batch it reads the stored
:class:`~fieldgate.cloud.store.state.DeviceState`, folds the events in — last location, last
value and time of each measurement, last alert, last seen (event and received time), the
edge's last link-health report, the assignment — evaluates the tenant's rules
(:mod:`fieldgate.cloud.domain.rules`), publishes what fired, then stores the state and commits.

Emitted events go to the tenant's ``[enriched]`` (with their cloud id and the device's
assignment, as inbound would give them), so persistence stores them and they appear in the
device's events. Their alternate ids are deterministic — ``rule:<rule>:raised:<trigger alternate
id>``, ``presence:missing:<last received ms>``, ``presence:present:<trigger alternate id>`` — so a
replay, a retry after a crash, or two replicas emitting the same change store it once.

Presence: a device not heard from (received time) within its presence interval — the
tenant's rule configuration's ``presence_intervals[device type]``, else the tenant's
``presence_interval_s`` (300 s) — becomes ``missing`` (a PRESENCE StateChange present →
missing), and ``present`` again with the next event it sends. A clock task checks every
``tick_s`` a bounded number of devices (``max_checks_per_tick``) whose check is due, taken
from an in-memory schedule (a heap) fed by the events this process handled and by the stored
states — read at start, and again whenever what the due times are computed from changes (an
interval, the tenant's default, a ``missing_data`` rule: :meth:`DeviceStateStage._basis`), so
a cut interval reaches devices that are silent already; a rebuild only moves checks earlier.
Each candidate is re-read from the store before anything is sent, so a
replica whose schedule is stale (the device now belongs to another replica's partition) sends
nothing wrong. The missing change is applied to the stored state only by the device's owner,
when the StateChange comes back on ``[persisted]`` and the device has not spoken since (its
``last_seen_ms`` metadata). ``missing_data`` rules are checked by the same task the same way.

Events this stage made are recognised by their metadata ``origin`` (``presence`` or
``rule``): they update presence and the last alert but never count as the device speaking.
The edge's own link-health events (PRESENCE state changes ``connected``/``disconnected``) are
kept as ``link`` and do not count either.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fieldgate.cloud.bus import ENRICHED, PERSISTED, Bus, Record, topic_name
from fieldgate.cloud.domain.rules.engine import (
    Firing,
    PolygonSource,
    apply_own_alert,
    due_ms,
    evaluate_clock,
    evaluate_event,
)
from fieldgate.cloud.domain.rules.model import MissingDataRule, RuleSet
from fieldgate.cloud.errors import CloudError
from fieldgate.cloud.ids import event_id
from fieldgate.cloud.pipeline.rules import RuleBook
from fieldgate.cloud.pipeline.stage import (
    ConsumerStage,
    StageSettings,
    decode_batch,
    messages_by_device,
    tenant_of,
)
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.store.state import (
    MISSING,
    PRESENT,
    AlertValue,
    DeviceState,
    DeviceStateStore,
    LinkValue,
    LocationValue,
    MeasurementValue,
)
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb

if TYPE_CHECKING:
    from fieldgate.cloud.zk.models import TenantSettingsRegistry

GROUP = "state"
DEFAULT_PRESENCE_INTERVAL_S = 300
ORIGIN = "origin"  # metadata key of the events this stage emits

log = logging.getLogger(__name__)

_LEVELS = {
    "info": pb.ALERT_LEVEL_INFO,
    "warning": pb.ALERT_LEVEL_WARNING,
    "error": pb.ALERT_LEVEL_ERROR,
    "critical": pb.ALERT_LEVEL_CRITICAL,
}
_LEVEL_NAMES = {v: k for k, v in _LEVELS.items()}
_ALERT_STATES = {pb.ALERT_STATE_RAISED: "raised", pb.ALERT_STATE_CLEARED: "cleared"}


@dataclass(slots=True)
class StateStats:
    events_in: int = 0
    devices_updated: int = 0
    alerts_raised: int = 0
    alerts_cleared: int = 0
    presence_missing: int = 0  # missing changes sent by the clock check
    presence_present: int = 0  # present-again changes sent
    clock_checks: int = 0  # devices re-read by the clock check
    clock_errors: int = 0
    schedule_evicted: int = 0  # devices dropped from the clock schedule (over max_tracked)
    schedule_rebuilds: int = 0  # tenant schedules (re)built from the stored states


# What a tenant's due times are computed from besides each device's state (DeviceStateStage._basis).
_Basis = tuple[tuple[tuple[str, int], ...], int | None, tuple[MissingDataRule, ...]]


class _Schedule:
    """Per tenant: device → when its clock check is due, with a heap for the earliest
    (lazy deletion: a popped entry counts only if it matches the map). Bounded: over
    ``max_entries`` the entry due last is dropped (counted)."""

    def __init__(self, max_entries: int) -> None:
        self._max = max(1, max_entries)
        self.due: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self.evicted = 0

    def set(self, device: str, due: int | None) -> None:
        if due is None:
            self.due.pop(device, None)
            return
        if self.due.get(device) == due:
            return
        self.due[device] = due
        heapq.heappush(self._heap, (due, device))
        if len(self._heap) > 4 * self._max:
            self._heap = [(d, k) for k, d in self.due.items()]
            heapq.heapify(self._heap)
        if len(self.due) > self._max:
            latest = max(self.due, key=lambda k: self.due[k])
            del self.due[latest]
            self.evicted += 1

    def set_earlier(self, device: str, due: int | None) -> None:
        """Schedule ``device`` at ``due`` unless it is already due sooner. Checking a device too
        early costs one store read (the check re-reads it and schedules it again); checking it
        too late is the defect, so a schedule rebuilt from possibly stale reads only ever moves
        checks earlier."""
        if due is None:
            return
        have = self.due.get(device)
        if have is None or due < have:
            self.set(device, due)

    def pop_due(self, now: int, limit: int) -> list[str]:
        out: list[str] = []
        while self._heap and len(out) < limit and self._heap[0][0] <= now:
            due, device = heapq.heappop(self._heap)
            if self.due.get(device) == due:
                del self.due[device]
                out.append(device)
        return out


class DeviceStateStage:
    """The device state stage (consumer group ``state``; see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        store: DeviceStateStore,
        registry: Registry,
        rules: RuleBook,
        *,
        topic_prefix: str = "fieldgate",
        settings: StageSettings | None = None,
        tenant_settings: TenantSettingsRegistry | None = None,
        tick_s: float = 1.0,
        max_checks_per_tick: int = 500,
        max_tracked: int = 100_000,
        polygons: PolygonSource | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.stats = StateStats()
        self._bus = bus
        self._store = store
        self._registry = registry
        self._rules = rules
        self._prefix = topic_prefix
        self._live = tenant_settings
        self._tick_s = tick_s
        self._max_checks = max(1, max_checks_per_tick)
        self._max_tracked = max_tracked
        self._polygons = polygons
        self._clock = clock
        self._schedules: dict[str, _Schedule] = {}
        # Per tenant: the settings its schedule's due times were computed with (see _basis).
        self._bases: dict[str, _Basis] = {}
        self._tick_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.stage = ConsumerStage(
            "state",
            bus,
            group=GROUP,
            stage=PERSISTED,
            handler=self._handle,
            settings=settings,
            topic_prefix=topic_prefix,
        )

    async def start(self) -> None:
        self._stopping.clear()
        await self.stage.start()
        self._tick_task = asyncio.create_task(self._tick_loop(), name="state:clock")

    async def stop(self) -> None:
        self._stopping.set()
        task, self._tick_task = self._tick_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.stage.stop()

    def forget_tenant(self, tenant: str) -> None:
        """The tenant was deleted: drop its clock schedule (its devices' states are gone; a new
        tenant of the token builds its own from the store)."""
        self._schedules.pop(tenant, None)
        self._bases.pop(tenant, None)

    @property
    def clock_running(self) -> bool:
        return self._tick_task is not None and not self._tick_task.done()

    # ------------------------------------------------------------------ settings

    def presence_interval_ms(self, tenant: str, device_type: str, rules: RuleSet) -> int:
        seconds = rules.presence_intervals.get(device_type)
        if seconds is None:
            live = self._live.get(tenant) if self._live is not None else None
            seconds = getattr(live, "presence_interval_s", None) or DEFAULT_PRESENCE_INTERVAL_S
        return int(seconds) * 1000

    def _schedule(self, tenant: str) -> _Schedule:
        sched = self._schedules.get(tenant)
        if sched is None:
            sched = self._schedules[tenant] = _Schedule(self._max_tracked)
        return sched

    def _basis(self, tenant: str, rules: RuleSet) -> _Basis:
        """Everything a due time depends on besides the device's own state: the per-type
        presence intervals, the tenant's default interval and the ``missing_data`` rules. When
        it changes, every due time computed from the old one may be wrong (an interval cut
        from 300 s to 5 s must not wait for the old 300 s), so the clock rebuilds the tenant's
        schedule (:meth:`_load`)."""
        live = self._live.get(tenant) if self._live is not None else None
        return (
            tuple(sorted(rules.presence_intervals.items())),
            getattr(live, "presence_interval_s", None),
            tuple(r for r in rules.rules if isinstance(r, MissingDataRule)),
        )

    def _next_due(self, tenant: str, state: DeviceState, rules: RuleSet) -> int | None:
        dues: list[int] = []
        if state.presence == PRESENT and state.last_received_ms > 0:
            dues.append(state.last_received_ms + self.presence_interval_ms(tenant, state.device_type, rules))
        for rule in rules.rules:
            if isinstance(rule, MissingDataRule) and rule.applies_to(state.device, state.device_type):
                d = due_ms(rule, state.rules.get(rule.id))
                if d is not None:
                    dues.append(d)
        return min(dues) if dues else None

    # ------------------------------------------------------------------ events

    async def _handle(self, records: Sequence[Record]) -> None:
        tenant = tenant_of(records[0], self._prefix)
        by_device: dict[str, list[pb.Event]] = {}
        for r in records:
            for ev in decode_batch(r, tenant, check_events=False).events:
                by_device.setdefault(ev.device, []).append(ev)
        self.stats.events_in += sum(len(v) for v in by_device.values())
        rules = await self._rules.rules(tenant)
        stored = await self._store.get_states(tenant, list(by_device))
        out: list[pb.Event] = []
        states: list[DeviceState] = []
        for device, events in by_device.items():
            state = stored.get(device)
            if state is None:
                known = await self._registry.get_device(tenant, device)
                state = DeviceState(device=device, device_type=known.device_type if known is not None else "")
            new, emitted = self._fold(tenant, state, events, rules)
            states.append(new)
            out.extend(emitted)
        if out:
            await self._bus.publish(topic_name(tenant, ENRICHED, self._prefix), messages_by_device(out))
        merged = await self._store.apply(tenant, states)
        self.stats.devices_updated += len(merged)
        # The rules in force now, not those of the batch's start: a change made meanwhile may
        # already have rebuilt the schedule, which these due times must not undo.
        rules = await self._rules.rules(tenant)
        sched = self._schedule(tenant)
        for m in merged:
            sched.set(m.device, self._next_due(tenant, m, rules))

    def _fold(
        self, tenant: str, state: DeviceState, events: list[pb.Event], rules: RuleSet
    ) -> tuple[DeviceState, list[pb.Event]]:
        """The device's state after ``events`` and the events to emit (pure but for stats)."""
        out: list[pb.Event] = []
        s = state
        rule_states = dict(s.rules)
        applicable = [r for r in rules.rules if r.applies_to(s.device, s.device_type)]
        for ev in events:
            kind = ev.WhichOneof("payload")
            origin = ev.metadata.get(ORIGIN, "")
            t = ev.event_time_ms
            if ev.assignment != s.assignment and t >= s.assignment_ms:
                s = dataclasses.replace(s, assignment=ev.assignment, assignment_ms=t)
            if kind == "state_change" and ev.state_change.kind == pb.STATE_CHANGE_KIND_PRESENCE:
                sc = ev.state_change
                if origin == "presence":
                    s = self._own_presence(s, ev)
                elif sc.current in ("connected", "disconnected"):
                    link = LinkValue(t, sc.current, ev.metadata.get("adapter", ""))
                    if link.newer_than(s.link):
                        s = dataclasses.replace(s, link=link)
                continue
            if kind == "alert":
                a = ev.alert
                alert = AlertValue(
                    t,
                    a.alert_type,
                    _LEVEL_NAMES.get(a.level, "unspecified"),
                    a.message,
                    "system" if a.source == pb.ALERT_SOURCE_SYSTEM else "device",
                    _ALERT_STATES.get(a.state, ""),
                    a.rule,
                    ev.id,
                )
                if alert.newer_than(s.last_alert):
                    s = dataclasses.replace(s, last_alert=alert)
                if origin == "rule":
                    rule = rules.get(a.rule)
                    if rule is not None:
                        rs, firing = apply_own_alert(rule, rule_states.get(rule.id), ev)
                        if rs is not None:
                            rule_states[rule.id] = rs
                        if firing is not None:
                            out.append(self._alert_event(tenant, s, firing))
                    continue
            if origin:
                continue
            # The device spoke.
            received = ev.received_time_ms or t
            heard_anew = received > s.last_received_ms  # not a replay of something older
            s = dataclasses.replace(
                s,
                last_event_ms=max(s.last_event_ms, t),
                last_received_ms=max(s.last_received_ms, received),
            )
            if s.presence == MISSING and heard_anew:
                s = dataclasses.replace(s, presence=PRESENT, presence_ms=max(s.presence_ms, received))
                out.append(self._presence_event(tenant, s, MISSING, PRESENT, f"present:{ev.alternate_id}", t))
                self.stats.presence_present += 1
            elif s.presence_ms == 0:
                s = dataclasses.replace(s, presence_ms=received)
            if kind == "measurement":
                ms = dict(s.measurements)
                for name, value in ev.measurement.values.items():
                    mv = MeasurementValue(t, float(value))
                    if mv.newer_than(ms.get(name)):
                        ms[name] = mv
                s = dataclasses.replace(s, measurements=ms)
            elif kind == "location":
                loc = LocationValue(t, ev.location.latitude, ev.location.longitude, ev.location.elevation)
                if loc.newer_than(s.location):
                    s = dataclasses.replace(s, location=loc)
            for rule in applicable:
                rs, firing = evaluate_event(tenant, rule, rule_states.get(rule.id), ev, self._polygons)
                if rs is not None:
                    rule_states[rule.id] = rs
                if firing is not None:
                    out.append(self._alert_event(tenant, s, firing))
        return dataclasses.replace(s, rules=rule_states), out

    @staticmethod
    def _own_presence(s: DeviceState, ev: pb.Event) -> DeviceState:
        """A presence change this stage sent, back from the pipeline."""
        if ev.state_change.current != MISSING or s.presence == MISSING:
            return s
        try:
            seen = int(ev.metadata.get("last_seen_ms", ""))
        except ValueError:
            return s
        if s.last_received_ms > seen:
            return s  # the device spoke after the check: it stays present
        return dataclasses.replace(s, presence=MISSING, presence_ms=max(ev.event_time_ms, s.presence_ms))

    # ------------------------------------------------------------------ emitted events

    def _event(self, tenant: str, s: DeviceState, alternate_id: str, time_ms: int, origin: str) -> pb.Event:
        ev = pb.Event(
            id=event_id(tenant, s.device, alternate_id),
            alternate_id=alternate_id,
            tenant=tenant,
            device=s.device,
            assignment=s.assignment,
            event_time_ms=time_ms,
            received_time_ms=self._clock(),
        )
        ev.metadata[ORIGIN] = origin
        return ev

    def _presence_event(
        self, tenant: str, s: DeviceState, previous: str, current: str, key: str, time_ms: int
    ) -> pb.Event:
        ev = self._event(tenant, s, f"presence:{key}", time_ms, "presence")
        ev.state_change.kind = pb.STATE_CHANGE_KIND_PRESENCE
        ev.state_change.previous = previous
        ev.state_change.current = current
        ev.metadata["last_seen_ms"] = str(s.last_received_ms)
        return ev

    def _alert_event(self, tenant: str, s: DeviceState, f: Firing) -> pb.Event:
        ev = self._event(tenant, s, f.alternate_id, f.time_ms, "rule")
        ev.alert.alert_type = f.rule.id
        ev.alert.level = _LEVELS[f.rule.level]
        ev.alert.message = f.message
        ev.alert.source = pb.ALERT_SOURCE_SYSTEM
        ev.alert.state = pb.ALERT_STATE_RAISED if f.state == "raised" else pb.ALERT_STATE_CLEARED
        ev.alert.rule = f.rule.id
        ev.metadata["rule"] = f.rule.id
        ev.metadata["alert_state"] = f.state
        for k, v in f.metadata:
            ev.metadata[k] = v
        if f.state == "raised":
            self.stats.alerts_raised += 1
        else:
            self.stats.alerts_cleared += 1
        return ev

    # ------------------------------------------------------------------ the clock

    async def _tick_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except (CloudError, OSError, TimeoutError) as err:  # task top: count, report, next tick
                self.stats.clock_errors += 1
                log.warning("state: clock check failed (%s); retrying at the next tick", err)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick_s):
                    await self._stopping.wait()

    def _tenants(self) -> list[str]:
        known = set(self._schedules)
        if self._live is not None:
            known.update(self._live.tenants())
        return sorted(known)

    async def _load(self, tenant: str, rules: RuleSet, basis: _Basis) -> None:
        """(Re)schedule the stored states of ``tenant`` with ``rules``: at the first tick of
        this process, and again whenever the tenant's :meth:`_basis` changes. Reads at most
        ``max_tracked`` states; an entry already scheduled sooner keeps its time."""
        self._bases[tenant] = basis  # first: a change during the reads triggers another rebuild
        sched = self._schedule(tenant)
        page, read = 1, 0
        while read < self._max_tracked:
            p = await self._store.list_states(tenant, page=page, page_size=500)
            for st in p.items:
                sched.set_earlier(st.device, self._next_due(tenant, st, rules))
            read += len(p.items)
            if page * 500 >= p.total or not p.items:
                break
            page += 1
        self.stats.schedule_rebuilds += 1

    async def tick(self) -> int:
        """One clock check over every tenant; the number of events emitted."""
        emitted = 0
        budget = self._max_checks
        now = self._clock()
        for tenant in self._tenants():
            rules = await self._rules.rules(tenant)
            basis = self._basis(tenant, rules)
            if self._bases.get(tenant) != basis:
                await self._load(tenant, rules, basis)
            sched = self._schedule(tenant)
            devices = sched.pop_due(now, budget)
            if not devices:
                continue
            budget -= len(devices)
            self.stats.clock_checks += len(devices)
            states = await self._store.get_states(tenant, devices)
            out: list[pb.Event] = []
            for device in devices:
                st = states.get(device)
                if st is None:
                    continue
                out.extend(self._clock_check(tenant, st, rules, now))
                nxt = self._next_due(tenant, st, rules)
                if nxt is not None and nxt <= now:
                    # Sent (or not ours to apply): look again after a while, not every tick.
                    nxt = now + min(self.presence_interval_ms(tenant, st.device_type, rules), 30_000)
                sched.set(device, nxt)
            if out:
                await self._bus.publish(topic_name(tenant, ENRICHED, self._prefix), messages_by_device(out))
                emitted += len(out)
            if budget <= 0:
                break
        self.stats.schedule_evicted = sum(s.evicted for s in self._schedules.values())
        return emitted

    def _clock_check(self, tenant: str, st: DeviceState, rules: RuleSet, now: int) -> list[pb.Event]:
        out: list[pb.Event] = []
        interval = self.presence_interval_ms(tenant, st.device_type, rules)
        if st.presence == PRESENT and st.last_received_ms > 0 and now - st.last_received_ms >= interval:
            out.append(
                self._presence_event(tenant, st, PRESENT, MISSING, f"missing:{st.last_received_ms}", now)
            )
            self.stats.presence_missing += 1
        for rule in rules.rules:
            if isinstance(rule, MissingDataRule) and rule.applies_to(st.device, st.device_type):
                firing = evaluate_clock(rule, st.rules.get(rule.id), now)
                if firing is not None:
                    out.append(self._alert_event(tenant, st, firing))
        return out


__all__ = ["GROUP", "DeviceStateStage", "StateStats"]
