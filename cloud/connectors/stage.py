"""The connectors stage: [persisted] → every matching connector of the event's tenant.

It consumes ``[persisted]`` in the consumer group ``connectors`` (the group to give
``fieldgate cloud replay --stage persisted --group connectors`` to re-send a time range), and
offers each event to each of the tenant's enabled connectors whose filter matches it
(:mod:`fieldgate.cloud.connectors.runner` queues, retries and dead-letters).

Why it does not use :class:`~fieldgate.cloud.stage.ConsumerStage`: that loop commits a batch
when its handler returns, so a connector that retries for a minute would hold the tenant's
whole pipeline — and every other connector — for a minute. Here the stage keeps reading while
connectors work, and commits per partition up to the **watermark**: the last record before
the first one some connector has not yet delivered or dead-lettered (dead letters are
durable, in the connector store). So:

* nothing is lost: a crash re-reads from the watermark, and every event after it is offered
  again (at-least-once);
* duplicates carry the same idempotency key (the event id, derived from tenant, device and
  alternate id), which receivers de-duplicate on;
* a connector that is down holds the watermark back by at most its retry time (its events
  are dead-lettered after ``max_attempts``, or at once when its queue is full and its policy
  is ``dead_letter``); the others keep delivering meanwhile;
* memory is bounded: each connector's queue is bounded, and at most ``max_in_flight``
  records are tracked — beyond that the stage stops reading until the oldest is done.

Definitions are read from the connector store for every tenant of the registry, and re-read
every ``refresh_s`` seconds, so a connector created, changed, disabled or deleted through
the API (in this process or another) takes effect without a restart. The same loop picks up
dead letters marked for re-drive and queues them again (removed from the dead letters once
delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError as ProtobufDecodeError

from fieldgate.cloud.bus import (
    FAILED_DECODE,
    PERSISTED,
    Bus,
    Consumer,
    Message,
    Record,
    parse_topic,
    topic_name,
)
from fieldgate.cloud.connectors.events import EventContext
from fieldgate.cloud.connectors.models import ConnectorSpec
from fieldgate.cloud.connectors.runner import ConnectorRunner, Item, SinkFactory, build_sink
from fieldgate.cloud.connectors.store import ConnectorStore
from fieldgate.cloud.errors import BusError, NotFound, StoreError
from fieldgate.cloud.stage import TtlLru
from fieldgate.cloud.store import Registry
from fieldgate.cloud.store.site import MAX_DEPTH, Area, SiteStore
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb

GROUP = "connectors"
#: How long a device group's members and an area's parents are cached (filters by group/area).
SITE_TTL_S = 5.0

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConnectorStageSettings:
    refresh_s: float = 2.0
    max_in_flight: int = 10_000
    max_records: int = 200
    poll_timeout_s: float = 0.5
    redrive_batch: int = 100
    retry_s: float = 0.2  # first back-off of a registry/store/bus call that failed (doubles to 5 s)


@dataclass(slots=True)
class ConnectorStageStats:
    records: int = 0
    events: int = 0
    offered: int = 0  # (event, connector) pairs queued
    committed: int = 0  # records committed
    undecodable: int = 0
    waits_in_flight: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    lookup_retries: int = 0
    loop_restarts: int = 0
    last_error: str = ""


class _Tracked:
    """One bus record until every connector is done with its events."""

    __slots__ = ("record", "remaining", "sealed")

    def __init__(self, record: Record) -> None:
        self.record = record
        self.remaining = 0
        self.sealed = False

    @property
    def settled(self) -> bool:
        return self.sealed and self.remaining <= 0

    def done(self) -> None:
        self.remaining -= 1


class ConnectorStage:
    """The ``connectors`` service (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        store: ConnectorStore,
        registry: Registry,
        *,
        topic_prefix: str = "fieldgate",
        settings: ConnectorStageSettings | None = None,
        sink_factory: SinkFactory = build_sink,
        site: SiteStore | None = None,
    ) -> None:
        self.name = "connectors"
        self.stats = ConnectorStageStats()
        self._bus = bus
        self._store = store
        self._registry = registry
        self._prefix = topic_prefix
        self._settings = settings or ConnectorStageSettings()
        self._sink_factory = sink_factory
        self.runners: dict[str, dict[str, ConnectorRunner]] = {}  # tenant -> id -> runner
        self._loaded: set[str] = set()
        self._tracked: dict[tuple[str, int], deque[_Tracked]] = {}
        self._in_flight = 0
        self._settled = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._devices: TtlLru[tuple[str, str], str] = TtlLru(10_000, 30.0)
        self._assignments: TtlLru[tuple[str, str], EventContext] = TtlLru(10_000, 30.0)
        # Filters by device group and area read the site store (none: such filters match nothing
        # beyond an exact area).
        self._site = site
        self._members: TtlLru[tuple[str, str], frozenset[str]] = TtlLru(1_000, SITE_TTL_S)
        self._area_paths: TtlLru[tuple[str, str], frozenset[str]] = TtlLru(10_000, SITE_TTL_S)
        self._sync_lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return bool(self._tasks) and all(not t.done() for t in self._tasks)

    def is_running(self) -> bool:
        """Liveness: both of the stage's tasks are alive."""
        return self.running

    async def start(self) -> None:
        if self._tasks:
            return
        self._stopping.clear()
        with contextlib.suppress(StoreError):  # the refresh loop tries again
            await self.refresh()
        self._tasks = [
            asyncio.create_task(self._run(), name="stage:connectors"),
            asyncio.create_task(self._maintain(), name="connectors:refresh"),
        ]

    async def stop(self) -> None:
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            # The consume loop notices _stopping within one poll and commits what is done.
            await asyncio.wait(tasks[:1], timeout=self._settings.poll_timeout_s + 2.0)
            for task in tasks:
                await cancel_and_wait(task)
        for runners in self.runners.values():
            for runner in runners.values():
                await runner.stop()
        self.runners.clear()
        self._loaded.clear()
        self._tracked.clear()
        self._in_flight = 0

    def runner(self, tenant: str, connector: str) -> ConnectorRunner | None:
        return self.runners.get(tenant, {}).get(connector)

    # -- definitions ---------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read every tenant's connectors and re-drive requests (also every refresh_s)."""
        tenants = {t.token for t in await self._registry.list_tenants()} | self._loaded
        for tenant in sorted(tenants):
            await self._sync(tenant, await self._store.list_connectors(tenant))
            await self._redrive(tenant)
        self.stats.refreshes += 1

    async def _sync(self, tenant: str, specs: Sequence[ConnectorSpec]) -> None:
        async with self._sync_lock:
            runners = self.runners.setdefault(tenant, {})
            wanted = {s.id: s for s in specs}
            for cid in [c for c in runners if c not in wanted]:
                log.info("connector %s/%s deleted", tenant, cid)
                await runners.pop(cid).delete()
            for cid, spec in wanted.items():
                runner = runners.get(cid)
                if runner is None:
                    runner = runners[cid] = ConnectorRunner(
                        tenant, spec, self._store, sink_factory=self._sink_factory
                    )
                    runner.start()
                    log.info("connector %s/%s (%s) running", tenant, cid, spec.kind)
                elif runner.spec != spec:
                    await runner.reconfigure(spec)
                    log.info("connector %s/%s reconfigured", tenant, cid)
            self._loaded.add(tenant)

    async def _redrive(self, tenant: str) -> None:
        for runner in list(self.runners.get(tenant, {}).values()):
            if not runner.accepting or runner.room == 0:
                continue
            limit = min(runner.room, self._settings.redrive_batch)
            letters = await self._store.redrive_batch(tenant, runner.id, limit + len(runner.redriving))
            for letter in letters:
                if letter.event_id in runner.redriving or runner.room == 0:
                    continue
                try:
                    ev = pb.Event.FromString(letter.event)
                except ProtobufDecodeError:
                    log.error(
                        "connector %s/%s: dead letter %s is not an event; removed",
                        tenant,
                        runner.id,
                        letter.event_id,
                    )
                    await self._store.remove_dead_letters(tenant, runner.id, [letter.event_id])
                    continue
                runner.redriving.add(letter.event_id)
                await runner.offer(Item(ev, redrive=True))

    async def _maintain(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.refresh_s):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            try:
                await self.refresh()
            except StoreError as err:
                self.stats.refresh_failures += 1
                self.stats.last_error = str(err)[:500]
                log.warning("connectors: cannot refresh the definitions: %s", err)

    async def _runners_for(self, tenant: str) -> list[ConnectorRunner]:
        if tenant not in self._loaded:
            specs = await self._retry(lambda: self._store.list_connectors(tenant))
            await self._sync(tenant, specs)
        return [r for r in self.runners.get(tenant, {}).values() if r.accepting]

    # -- consuming -----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._settings.retry_s
        while not self._stopping.is_set():
            try:
                async with self._bus.consumer(GROUP, PERSISTED) as consumer:
                    await self._consume(consumer)
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:  # task top: count, log, back off, re-open the consumer
                self.stats.loop_restarts += 1
                self.stats.last_error = f"{type(err).__name__}: {err}"[:500]
                log.exception("connectors: consumer failed; re-opening in %.1fs", delay)
                self._tracked.clear()  # the new consumer starts from the committed offsets
                self._in_flight = 0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                delay = min(delay * 2, 5.0)

    async def _consume(self, consumer: Consumer) -> None:
        s = self._settings
        try:
            while not self._stopping.is_set():
                while self._in_flight >= s.max_in_flight and not self._stopping.is_set():
                    self.stats.waits_in_flight += 1
                    await self._commit(consumer)
                    self._settled.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(s.poll_timeout_s):
                            await self._settled.wait()
                records = await consumer.poll(s.max_records, s.poll_timeout_s)
                for record in records:
                    if self._stopping.is_set():
                        break
                    await self._handle(record)
                await self._commit(consumer)
        finally:
            # Stopping (or a failure): commit what the connectors finished, once more.
            with contextlib.suppress(BusError):
                await self._commit(consumer)

    async def _handle(self, record: Record) -> None:
        key = (record.topic, record.partition)
        queue = self._tracked.setdefault(key, deque())
        if queue and record.offset <= queue[-1].record.offset:
            # Re-delivered from an older position (a rebalance gave the partition back): what
            # was tracked of it is re-offered from here, so forget it.
            self._in_flight -= len(queue)
            queue.clear()
        tracked = _Tracked(record)
        queue.append(tracked)
        self._in_flight += 1
        self.stats.records += 1
        try:
            await self._offer(record, tracked)
        finally:
            tracked.sealed = True

    async def _offer(self, record: Record, tracked: _Tracked) -> None:
        try:
            tenant, _ = parse_topic(record.topic, self._prefix)
            batch = pb.EventBatch.FromString(record.value)
        except (ValueError, ProtobufDecodeError) as err:
            await self._undecodable(record, str(err))
            return
        runners = await self._runners_for(tenant)
        if not runners:
            return
        for ev in batch.events:
            if ev.tenant != tenant:
                await self._undecodable(record, f"event of tenant {ev.tenant!r} in the topic of {tenant!r}")
                return
        self.stats.events += len(batch.events)
        for ev in batch.events:
            for runner in runners:
                f = runner.filter
                ctx = await self._context(tenant, ev, f.needs_device, f.needs_assignment, f.groups)
                if not f.matches(ev, ctx):
                    continue
                tracked.remaining += 1

                def done(t: _Tracked = tracked) -> None:
                    t.done()
                    if t.settled:
                        self._settled.set()

                self.stats.offered += 1
                await runner.offer(Item(ev, done))

    async def _undecodable(self, record: Record, reason: str) -> None:
        self.stats.undecodable += 1
        log.error("connectors: record %s@%d skipped: %s", record.topic, record.offset, reason)
        try:
            tenant, _ = parse_topic(record.topic, self._prefix)
        except ValueError:
            return
        failed = pb.FailedDecode(
            tenant=tenant,
            source=f"{GROUP}:{record.topic}[{record.partition}]@{record.offset}",
            reason=reason,
            payload=record.value,
            received_time_ms=now_ms(),
        )
        msg = [Message(key=record.key, value=failed.SerializeToString())]
        await self._retry(lambda: self._bus.publish(topic_name(tenant, FAILED_DECODE, self._prefix), msg))

    async def _context(
        self, tenant: str, ev: pb.Event, device: bool, assignment: bool, groups: Sequence[str] = ()
    ) -> EventContext:
        if not device and not assignment and not groups:
            return EventContext()
        device_type = ""
        if device:
            cached = self._devices.get((tenant, ev.device))
            if cached is None:
                found = await self._retry(lambda: self._registry.get_device(tenant, ev.device))
                cached = found.device_type if found is not None else ""
                self._devices.put((tenant, ev.device), cached)
            device_type = cached
        area = customer = ""
        if assignment and ev.assignment:
            ctx = self._assignments.get((tenant, ev.assignment))
            if ctx is None:
                a = await self._retry(lambda: self._registry.get_assignment(tenant, ev.assignment))
                ctx = EventContext(area=a.area, customer=a.customer) if a is not None else EventContext()
                self._assignments.put((tenant, ev.assignment), ctx)
            area, customer = ctx.area, ctx.customer
        areas = await self._area_path(tenant, area) if area else frozenset()
        member_of = frozenset([g for g in groups if ev.device in await self._group_members(tenant, g)])
        return EventContext(
            device_type=device_type, area=area, customer=customer, areas=areas, groups=member_of
        )

    async def _group_members(self, tenant: str, group: str) -> frozenset[str]:
        """The group's devices (nested groups included); empty for an unknown group."""
        if self._site is None:
            return frozenset()
        site = self._site
        cached = self._members.get((tenant, group))
        if cached is None:

            async def read() -> frozenset[str]:
                try:
                    return frozenset(await site.members(tenant, group))
                except NotFound:
                    return frozenset()

            cached = await self._retry(read)
            self._members.put((tenant, group), cached)
        return cached

    async def _area_path(self, tenant: str, area: str) -> frozenset[str]:
        """``area`` and the areas above it (just ``area`` without the site store)."""
        if self._site is None:
            return frozenset([area])
        site = self._site
        cached = self._area_paths.get((tenant, area))
        if cached is None:
            path = [area]
            current = area
            while len(path) <= MAX_DEPTH:
                rec = await self._retry(functools.partial(site.get, tenant, "area", current))
                if not isinstance(rec, Area) or not rec.parent or rec.parent in path:
                    break
                current = rec.parent
                path.append(current)
            cached = frozenset(path)
            self._area_paths.put((tenant, area), cached)
        return cached

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, retried with back-off while the store or bus is unavailable."""
        delay = self._settings.retry_s
        while True:
            try:
                return await call()
            except (StoreError, BusError, OSError) as err:
                self.stats.lookup_retries += 1
                self.stats.last_error = str(err)[:500]
                log.warning("connectors: %s; retrying in %.1fs", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _commit(self, consumer: Consumer) -> None:
        """Commit each partition up to its watermark (see the module docstring)."""
        heads: list[Record] = []
        count = 0
        for queue in self._tracked.values():
            last: Record | None = None
            while queue and queue[0].settled:
                last = queue.popleft().record
                self._in_flight -= 1
                count += 1
            if last is not None:
                heads.append(last)
        if heads:
            await consumer.commit(heads)
            self.stats.committed += count
