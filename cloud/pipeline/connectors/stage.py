"""The connectors stage: [persisted] → every matching connector of the event's tenant.

It consumes ``[persisted]`` in the consumer group ``connectors`` (the group to give
``fieldgate cloud replay --stage persisted --group connectors`` to re-send a time range), and
offers each event to each of the tenant's enabled connectors whose filter matches it
(:mod:`fieldgate.cloud.pipeline.connectors.runner` queues, retries and dead-letters).

Why it does not use :class:`~fieldgate.cloud.pipeline.stage.ConsumerStage`: that loop commits a batch
when its handler returns, so a connector that retries for a minute would hold the tenant's
whole pipeline — and every other connector — for a minute. Here the stage keeps reading while
connectors work, and commits per partition up to the **watermark**: the last record before
the first one some connector has not yet delivered or dead-lettered (dead letters are
durable, in the connector store). So:

* nothing is lost: a crash re-reads from the watermark, and every event after it is offered
  again (at-least-once) — but only to the connectors that had not finished it: each
  connector's **position** per partition (:mod:`~fieldgate.cloud.pipeline.connectors.progress`) is
  kept in the connector store (at most every ``position_interval_s``, and at stop), so one
  dead webhook holding the watermark back does not make a healthy connector re-send;
* duplicates carry the same idempotency key (the event id, derived from tenant, device and
  alternate id), which receivers de-duplicate on;
* a connector that is down holds the watermark back by at most its retry time (its events
  are dead-lettered after ``max_attempts``, or at once when its queue is full and its policy
  is ``dead_letter``); the others keep delivering meanwhile;
* memory is bounded: each connector's queue is bounded, and at most ``max_in_flight``
  records are tracked — beyond that the stage stops reading until the oldest is done.

**A new connector starts where it was created**: the API records the end of the tenant's
``[persisted]`` topic with it (cloud/services/connectors.py). When the stage first sees it — up
to ``refresh_s`` later, or after a restart — and has already read past that point, it seeks
the partition back there and reads again: the new connector gets those records, the others
pass over them (their positions are beyond). The same happens whenever a record shows that
some connector's position is behind what the stage reads (a partition that comes back from
another replica is first checked against the stored positions). Records the bus no longer
has (retention) are skipped with a warning after two seeks that did not bring them back.

**Replay**: ``fieldgate cloud replay --group connectors`` moves the group's offsets back. The
stage keeps its own last commit with the positions (owner ``STAGE_OWNER``), so a record below
it that its own seeks do not explain is a replay: every connector of the tenant is offered
again from there (docs/connectors.md).

Definitions are read from the connector store for every tenant of the registry, and re-read
every ``refresh_s`` seconds, so a connector created, changed, disabled or deleted through
the API (in this process or another) takes effect without a restart. The same loop picks up
dead letters marked for re-drive and queues them again (removed from the dead letters once
delivered). Connections go only where the operator's
:class:`~fieldgate.cloud.domain.connectors.targets.TargetPolicy` allows.

**Tenant incarnations** (cloud/services/tenants.py): a tenant deleted and created again under the same
token must never have its events delivered to the old tenant's connectors, which this stage
may still hold — in a process nobody told of the deletion, for up to ``refresh_s``. So after
every poll the stage reads the record of each tenant the polled records belong to (one read
per tenant and poll) and compares its ``created_ms`` with the one its connectors were loaded
for: a tenant that is gone has its connectors and positions dropped and its records skipped; a
new incarnation has them dropped and loaded again from the store. The records were produced
before the poll, so a record checked this way is never newer than the incarnation it is
delivered for; records older than the incarnation's creation (an earlier tenant's, still on
the bus) are skipped too (counted in ``stats.skipped_other_incarnation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
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
from fieldgate.cloud.domain.connectors.events import EventContext
from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.domain.connectors.targets import TargetPolicy
from fieldgate.cloud.errors import BusError, NotFound, StoreError
from fieldgate.cloud.pipeline.connectors.progress import ConnectorProgress
from fieldgate.cloud.pipeline.connectors.runner import ConnectorRunner, Item, SinkFactory, build_sink
from fieldgate.cloud.pipeline.stage import TtlLru
from fieldgate.cloud.store.connectors import STAGE_OWNER, ConnectorStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.store.site import MAX_DEPTH, Area, SiteStore
from fieldgate.retry import Backoff
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb

GROUP = "connectors"
#: How long a device group's members and an area's parents are cached (filters by group/area).
SITE_TTL_S = 5.0
# The back-off of a failed registry/store/bus call or consumer doubles from retry_s up to this.
_RETRY_MAX_S = 5.0

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
    # How often the connectors' positions are written to the store (and at stop): what a
    # crash (not a stop) may make a healthy connector send twice.
    position_interval_s: float = 1.0


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
    seeks: int = 0  # partitions read again for a connector behind the stage (a new one)
    replays: int = 0  # the group's offsets moved back by someone else (a replay)
    gone: int = 0  # records a connector should have had that the bus no longer keeps
    position_failures: int = 0
    skipped_other_incarnation: int = 0  # records of a deleted tenant, or of an earlier one of its token
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
        sink_factory: SinkFactory | None = None,
        site: SiteStore | None = None,
        targets: TargetPolicy | None = None,
    ) -> None:
        self.name = "connectors"
        self.stats = ConnectorStageStats()
        self._bus = bus
        self._store = store
        self._registry = registry
        self._prefix = topic_prefix
        self._settings = settings or ConnectorStageSettings()
        # Where connectors may connect (None: no inside address at all).
        self.targets = targets or TargetPolicy()
        self._sink_factory: SinkFactory = sink_factory or functools.partial(build_sink, targets=self.targets)
        self.runners: dict[str, dict[str, ConnectorRunner]] = {}  # tenant -> id -> runner
        self._progress: dict[tuple[str, str], ConnectorProgress] = {}  # (tenant, id) -> place
        # The stage's own last commit per tenant and partition (from the store, then ours).
        self._committed: dict[str, dict[int, int]] = {}
        self._committed_saved: dict[str, dict[int, int]] = {}
        self._loaded: set[str] = set()
        # tenant -> created_ms of the record its runners were loaded for (module docstring)
        self._incarnations: dict[str, int] = {}
        self._tracked: dict[tuple[str, int], deque[_Tracked]] = {}
        self._in_flight = 0
        # This consumer session: the offset after the last record read per partition, seeks
        # asked for (applied between polls) and made (until the first record after them).
        self._read_next: dict[tuple[str, int], int] = {}
        self._seek_to: dict[tuple[str, int], int] = {}
        self._sought: dict[tuple[str, int], int] = {}
        self._seek_attempts: dict[tuple[str, int], tuple[int, int]] = {}  # tp -> (target, seeks)
        self._saved_at = 0.0
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
        # What the runners finished after the consume loop's last commit.
        with contextlib.suppress(StoreError):
            await self._save_positions(force=True)
        self.runners.clear()
        self._progress.clear()
        self._committed.clear()
        self._committed_saved.clear()
        self._loaded.clear()
        self._tracked.clear()
        self._in_flight = 0
        self._forget_session()

    def runner(self, tenant: str, connector: str) -> ConnectorRunner | None:
        return self.runners.get(tenant, {}).get(connector)

    # -- definitions ---------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read every tenant's connectors and re-drive requests (also every refresh_s)."""
        records = {t.token: t.created_ms for t in await self._registry.list_tenants()}
        for tenant in sorted(set(records) | self._loaded):
            await self._incarnation(tenant, records.get(tenant))
            if tenant not in records:
                continue  # deleted: what the stage held of it is gone
            await self._sync(tenant, await self._store.list_connectors(tenant))
            await self._redrive(tenant)
        self.stats.refreshes += 1

    async def _incarnation(self, tenant: str, created_ms: int | None) -> None:
        """The tenant's record says ``created_ms`` (None: it has none): drop its connectors and
        their positions if they were loaded for another incarnation (module docstring)."""
        if created_ms is None:
            self._incarnations.pop(tenant, None)
        elif self._incarnations.setdefault(tenant, created_ms) == created_ms:
            return
        else:
            self._incarnations[tenant] = created_ms
        if tenant not in self._loaded and not self.runners.get(tenant):
            return
        async with self._sync_lock:
            for cid, runner in list(self.runners.pop(tenant, {}).items()):
                log.info("connector %s/%s dropped: its tenant was deleted", tenant, cid)
                self._progress.pop((tenant, cid), None)
                await runner.delete()
            self._committed.pop(tenant, None)
            self._committed_saved.pop(tenant, None)
            self._loaded.discard(tenant)
            topic = topic_name(tenant, PERSISTED, self._prefix)
            for session in (self._read_next, self._seek_to, self._sought, self._seek_attempts):
                for tp in [tp for tp in session if tp[0] == topic]:
                    session.pop(tp, None)
        for cache in (self._devices, self._assignments, self._members, self._area_paths):
            cache.clear()

    async def _check_incarnations(self, records: Sequence[Record]) -> None:
        """Read the record of each tenant of ``records`` (after they were polled)."""
        tenants: set[str] = set()
        for record in records:
            with contextlib.suppress(ValueError):
                tenants.add(parse_topic(record.topic, self._prefix)[0])
        for tenant in sorted(tenants):
            found = await self._retry(functools.partial(self._registry.get_tenant, tenant))
            await self._incarnation(tenant, found.created_ms if found is not None else None)

    def _of_this_incarnation(self, tenant: str, record: Record) -> bool:
        created_ms = self._incarnations.get(tenant)
        if created_ms is None or record.timestamp_ms < created_ms:
            self.stats.skipped_other_incarnation += 1  # a deleted tenant's, or an earlier one's
            return False
        return True

    async def _sync(self, tenant: str, specs: Sequence[ConnectorSpec]) -> None:
        async with self._sync_lock:
            runners = self.runners.setdefault(tenant, {})
            wanted = {s.id: s for s in specs}
            for cid in [c for c in runners if c not in wanted]:
                log.info("connector %s/%s deleted", tenant, cid)
                self._progress.pop((tenant, cid), None)
                await runners.pop(cid).delete()
            new = [cid for cid in wanted if cid not in runners]
            stored = await self._store.positions(tenant) if new or tenant not in self._loaded else {}
            if tenant not in self._committed:
                self._committed[tenant] = dict(stored.get(STAGE_OWNER, {}))
                self._committed_saved[tenant] = dict(self._committed[tenant])
            for cid, spec in wanted.items():
                runner = runners.get(cid)
                if runner is None:
                    self._progress[(tenant, cid)] = progress = ConnectorProgress(stored.get(cid))
                    runner = runners[cid] = ConnectorRunner(
                        tenant, spec, self._store, sink_factory=self._sink_factory
                    )
                    runner.start()
                    log.info("connector %s/%s (%s) running", tenant, cid, spec.kind)
                    self._rewind_for(tenant, cid, progress)
                elif runner.spec != spec:
                    await runner.reconfigure(spec)
                    log.info("connector %s/%s reconfigured", tenant, cid)
            self._loaded.add(tenant)

    def _rewind_for(self, tenant: str, cid: str, progress: ConnectorProgress) -> None:
        """A connector the stage sees for the first time: where the stage has already read past
        its start, read those partitions again (the consume loop seeks between polls)."""
        topic = topic_name(tenant, PERSISTED, self._prefix)
        for (t, partition), reading in list(self._read_next.items()):
            if t != topic:
                continue
            start = progress.next(partition, reading)
            if start < reading:
                log.info(
                    "connector %s/%s starts at %s[%d]@%d, before the stage's %d: reading it again",
                    tenant,
                    cid,
                    topic,
                    partition,
                    start,
                    reading,
                )
                tp = (topic, partition)
                self._seek_to[tp] = min(start, self._seek_to.get(tp, start))

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
        """Every runner of ``tenant``, disabled ones too (they pass over records)."""
        if tenant not in self._loaded:

            async def load() -> None:
                await self._sync(tenant, await self._store.list_connectors(tenant))

            await self._retry(load)
        return list(self.runners.get(tenant, {}).values())

    # -- consuming -----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self._settings.retry_s, _RETRY_MAX_S, jitter=True)
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
                delay = backoff.next_delay()
                log.exception("connectors: consumer failed; re-opening in %.1fs", delay)
                self._tracked.clear()  # the new consumer starts from the committed offsets
                self._in_flight = 0
                self._forget_session()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()

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
                await self._check_incarnations(records)
                for record in records:
                    if self._stopping.is_set():
                        break
                    if (record.topic, record.partition) in self._seek_to:
                        continue  # read again after the seek
                    await self._handle(record)
                await self._apply_seeks(consumer)
                await self._commit(consumer)
        finally:
            # Stopping (or a failure): commit what the connectors finished, once more.
            with contextlib.suppress(BusError, StoreError):
                await self._commit(consumer, force_save=True)

    def _forget_session(self) -> None:
        self._read_next.clear()
        self._seek_to.clear()
        self._sought.clear()
        self._seek_attempts.clear()

    async def _apply_seeks(self, consumer: Consumer) -> None:
        seeks, self._seek_to = self._seek_to, {}
        for (topic, partition), offset in seeks.items():
            await consumer.seek(topic, partition, offset)
            self._sought[(topic, partition)] = offset
            self._read_next.pop((topic, partition), None)
            self.stats.seeks += 1

    def _notice_replay(
        self, tenant: str, record: Record, sought: int | None, runners: Sequence[ConnectorRunner]
    ) -> None:
        """A record below the stage's own last commit that neither the stage's reading order
        nor its own seek explains: the group's offsets were moved back (a replay, or the
        tenant's topic was made anew). The tenant's connectors are offered from there again,
        and the stage's commits may go down to it."""
        p, o = record.partition, record.offset
        expected = self._read_next.get((record.topic, p))
        committed = self._committed.get(tenant, {}).get(p)
        if sought is not None or committed is None or o >= committed:
            return
        if expected is not None and o >= expected:
            return
        log.info(
            "connectors: %s[%d] is read again from %d, below the stage's last commit %d "
            "(a replay): the tenant's connectors are offered those records again",
            record.topic,
            p,
            o,
            committed,
        )
        self.stats.replays += 1
        for runner in runners:
            self._place(tenant, runner.id).rewind(p, o)
        self._committed[tenant][p] = o

    async def _in_place(
        self, tenant: str, record: Record, sought: int | None, runners: Sequence[ConnectorRunner]
    ) -> bool:
        """Whether ``record`` is where every connector of ``tenant`` expects the stage to read;
        False when the partition must be read again from further back for one of them (a seek
        is asked for, the record dropped)."""
        tp = (record.topic, record.partition)
        p, o = record.partition, record.offset
        behind = self._behind(tenant, runners, p, o)
        if behind:
            # Another replica may have moved them on while it owned the partition.
            stored = await self._retry(lambda: self._store.positions(tenant))
            for cid in behind:
                self._place(tenant, cid).catch_up(stored.get(cid, {}))
            behind = self._behind(tenant, runners, p, o)
        if not behind:
            self._seek_attempts.pop(tp, None)
            return True
        target = min(behind.values())
        last_target, seeks = self._seek_attempts.get(tp, (target, 0))
        if last_target != target:
            seeks = 0
        if sought is not None and sought <= target and seeks >= 2:
            log.warning(
                "connectors: %d record(s) of %s[%d] from %d on are no longer on the bus: "
                "connector(s) %s skip them",
                o - target,
                record.topic,
                p,
                target,
                ", ".join(sorted(behind)),
            )
            self.stats.gone += o - target
            for cid in behind:
                self._place(tenant, cid).passed(p, o - 1)
            self._seek_attempts.pop(tp, None)
            return True
        self._seek_attempts[tp] = (target, seeks + 1)
        self._seek_to[tp] = min(target, self._seek_to.get(tp, target))
        return False

    def _behind(self, tenant: str, runners: Sequence[ConnectorRunner], p: int, o: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for runner in runners:
            nxt = self._place(tenant, runner.id).next(p, o)
            if nxt < o:
                out[runner.id] = nxt
        return out

    def _place(self, tenant: str, cid: str) -> ConnectorProgress:
        progress = self._progress.get((tenant, cid))
        if progress is None:  # a runner made before its progress (cannot happen; be safe)
            progress = self._progress[(tenant, cid)] = ConnectorProgress()
        return progress

    async def _handle(self, record: Record) -> None:
        key = (record.topic, record.partition)
        try:
            tenant: str | None = parse_topic(record.topic, self._prefix)[0]
        except ValueError:
            tenant = None
        sought = self._sought.pop(key, None)
        runners: list[ConnectorRunner] = []
        if tenant is not None and self._of_this_incarnation(tenant, record):
            runners = await self._runners_for(tenant)
            self._notice_replay(tenant, record, sought, runners)
            if runners and not await self._in_place(tenant, record, sought, runners):
                return
        self._read_next[key] = record.offset + 1
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
            await self._offer(record, tracked, tenant, runners)
        finally:
            tracked.sealed = True

    async def _offer(
        self, record: Record, tracked: _Tracked, tenant: str | None, runners: Sequence[ConnectorRunner]
    ) -> None:
        p, o = record.partition, record.offset
        # Each runner takes the record once: those whose next offset it is (others had it
        # already, or wait for a seek back to where they are).
        due = [r for r in runners if self._place(tenant or "", r.id).next(p, o) == o]
        try:
            if tenant is None:
                raise ValueError(f"not a topic of prefix {self._prefix!r}")
            batch = pb.EventBatch.FromString(record.value)
        except (ValueError, ProtobufDecodeError) as err:
            self._pass(tenant, due, p, o)
            await self._undecodable(record, str(err))
            return
        if not runners:
            return
        for ev in batch.events:
            if ev.tenant != tenant:
                self._pass(tenant, due, p, o)
                await self._undecodable(record, f"event of tenant {ev.tenant!r} in the topic of {tenant!r}")
                return
        self.stats.events += len(batch.events)
        for runner in due:
            progress = self._place(tenant, runner.id)
            progress.passed(p, o)
            if not runner.accepting:
                continue  # disabled: passes over the record
            f = runner.filter
            matched = []
            for ev in batch.events:
                ctx = await self._context(tenant, ev, f.needs_device, f.needs_assignment, f.groups)
                if f.matches(ev, ctx):
                    matched.append(ev)
            if not matched:
                continue
            tracked.remaining += len(matched)
            progress.add_pending(p, o, len(matched))

            def done(t: _Tracked = tracked, progress: ConnectorProgress = progress) -> None:
                t.done()
                progress.settle(p, o)
                if t.settled:
                    self._settled.set()

            for ev in matched:
                self.stats.offered += 1
                if runner.accepting:
                    await runner.offer(Item(ev, done))
                else:  # deleted while the record was being offered
                    done()

    def _pass(self, tenant: str | None, runners: Sequence[ConnectorRunner], p: int, o: int) -> None:
        if tenant is not None:
            for runner in runners:
                self._place(tenant, runner.id).passed(p, o)

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
        backoff = Backoff(self._settings.retry_s, _RETRY_MAX_S, jitter=True)
        while True:
            try:
                return await call()
            except (StoreError, BusError, OSError) as err:
                self.stats.lookup_retries += 1
                self.stats.last_error = str(err)[:500]
                delay = backoff.next_delay()
                log.warning("connectors: %s; retrying in %.1fs", err, delay)
                await asyncio.sleep(delay)

    async def _commit(self, consumer: Consumer, *, force_save: bool = False) -> None:
        """Commit each partition up to its watermark (see the module docstring) — never below
        what the stage committed before (a seek back for a new connector reads records again,
        it does not move the group back) — then store the positions that moved."""
        heads: list[Record] = []
        count = 0
        for (topic, partition), queue in self._tracked.items():
            last: Record | None = None
            while queue and queue[0].settled:
                last = queue.popleft().record
                self._in_flight -= 1
                count += 1
            if last is None:
                continue
            try:
                tenant = parse_topic(topic, self._prefix)[0]
            except ValueError:
                heads.append(last)
                continue
            committed = self._committed.get(tenant)
            if committed is not None and last.offset + 1 <= committed.get(partition, -1):
                continue
            heads.append(last)
            if committed is not None:
                committed[partition] = last.offset + 1
        if heads:
            await consumer.commit(heads)
            self.stats.committed += count
        await self._save_positions(force=force_save)

    async def _save_positions(self, *, force: bool = False) -> None:
        """Store the connectors' positions and the stage's commits that changed, at most every
        ``position_interval_s`` (``force``: now). A failure is counted and tried again later."""
        now = time.monotonic()
        if not force and now - self._saved_at < self._settings.position_interval_s:
            return
        self._saved_at = now
        try:
            for (tenant, cid), progress in list(self._progress.items()):
                changed = progress.unsaved()
                if changed:
                    await self._store.save_positions(tenant, cid, changed)
                    progress.saved(changed)
            for tenant, committed in self._committed.items():
                if not self.runners.get(tenant):
                    continue  # nothing to tell a replay from a restart for
                saved = self._committed_saved.setdefault(tenant, {})
                changed = {p: o for p, o in committed.items() if saved.get(p) != o}
                if changed:
                    await self._store.save_positions(tenant, STAGE_OWNER, changed)
                    saved.update(changed)
        except StoreError as err:
            self.stats.position_failures += 1
            self.stats.last_error = str(err)[:500]
            log.warning("connectors: cannot store the positions: %s", err)
