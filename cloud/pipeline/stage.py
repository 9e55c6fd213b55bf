"""The consume → process → commit loop that every bus-driven pipeline stage shares.

A stage (inbound processing, registration, persistence, command delivery) is a handler
``async (records) -> None`` plus this loop. The loop polls the stage's topic for all tenants,
splits what it got into per-(topic, partition) groups (one tenant each, in offset order),
runs up to ``concurrency`` groups at a time and commits a group only after its handler
returned — so a crash or an error means the records are seen again (at-least-once), and
every handler's effect must be idempotent (events are keyed by their alternate id).

Failures are sorted into three kinds, because each needs a different answer:

* **Transient** (:data:`TRANSIENT_ERRORS`: the bus or a store is unavailable, an OS error):
  nothing is committed, the group is rewound with ``seek`` and retried after a capped
  exponential back-off, forever. An outage must never dead-letter healthy traffic.
* **Poison, known** (:class:`PoisonRecord`, e.g. a value that is not an ``EventBatch``): the
  record is published at once to the tenant's ``[failed-decode]`` topic (a
  :class:`~fieldgate.v1.events_pb2.FailedDecode` carrying the reason and the original bytes)
  and the group is re-run without it.
* **Anything else** (a bug, an unexpected value): the group is retried record by record; a
  record that fails ``max_attempts`` times in a row is dead-lettered the same way and the
  stage commits past it. One bad record never stops a tenant's pipeline.

The small record helpers at the bottom (decode an ``EventBatch``/``Event`` from a record, one
outgoing message per device) are the bus record format of the event stages, kept here so
that the stages agree on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError as ProtobufDecodeError

from fieldgate.cloud.bus import FAILED_DECODE, Bus, Consumer, Message, Record, parse_topic, topic_name
from fieldgate.cloud.errors import BusError, CloudError, StoreError
from fieldgate.retry import Backoff
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb

# Failures of infrastructure rather than of a record: retried forever, never dead-lettered.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (BusError, StoreError, OSError, TimeoutError)

# Events per outgoing bus message; larger device batches are split (keeps records small
# enough for any backend's message size limit and bounds the memory of one record).
MAX_EVENTS_PER_MESSAGE = 5000

Handler = Callable[[Sequence[Record]], Awaitable[None]]

log = logging.getLogger(__name__)


class PoisonRecord(CloudError):
    """Raised by a handler for a record that can never be processed (it is dead-lettered)."""

    def __init__(self, record: Record, reason: str) -> None:
        super().__init__(reason)
        self.record = record
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StageSettings:
    max_records: int = 200  # per poll
    poll_timeout_s: float = 0.5
    concurrency: int = 4  # topic-partitions (≈ tenants) processed at once
    max_attempts: int = 3  # failures of one record before it is dead-lettered
    retry_backoff_s: float = 0.05  # first back-off; doubles up to max_backoff_s
    max_backoff_s: float = 5.0
    stop_timeout_s: float = 5.0  # how long stop() lets the current batch finish


@dataclass(slots=True)
class StageStats:
    """Counters of one stage loop (plain attributes; read them for metrics)."""

    polls: int = 0  # polls that returned records
    records: int = 0  # records processed and committed (including dead-lettered ones)
    failures: int = 0  # handler attempts that raised a non-transient error
    transient_failures: int = 0  # attempts that hit an unavailable bus/store (retried)
    dead_lettered: int = 0  # records published to [failed-decode] and committed past
    loop_restarts: int = 0  # the consumer itself failed and was re-opened
    last_error: str = ""


def _describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= 500 else text[:497] + "..."


class ConsumerStage:
    """Runs ``handler`` over one stage's records of every tenant (see the module docstring)."""

    def __init__(
        self,
        name: str,
        bus: Bus,
        *,
        group: str,
        stage: str,
        handler: Handler,
        settings: StageSettings | None = None,
        topic_prefix: str = "fieldgate",
    ) -> None:
        self.name = name
        self.stats = StageStats()
        self._bus = bus
        self._group = group
        self._stage = stage
        self._handler = handler
        self._settings = settings or StageSettings()
        self._prefix = topic_prefix
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._limit = asyncio.Semaphore(max(1, self._settings.concurrency))
        # Re-opening the consumer and retrying a failed group (every replica's stages hit the
        # same bus and store: jittered, so they do not come back in lockstep).
        self._backoff = Backoff(self._settings.retry_backoff_s, self._settings.max_backoff_s, jitter=True)
        self._polling = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"stage:{self.name}")

    async def stop(self) -> None:
        """Let the batch in hand finish (bounded by ``stop_timeout_s``), then cancel."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        if self._polling:
            task.cancel()  # waiting for records: nothing in hand, no need to wait for the poll
        done, _ = await asyncio.wait({task}, timeout=self._settings.stop_timeout_s)
        if not done:
            log.warning(
                "stage %s: batch did not finish within %.1fs; cancelling",
                self.name,
                self._settings.stop_timeout_s,
            )
        await cancel_and_wait(task)  # returns at once if it finished; else cancels until done

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                async with self._bus.consumer(self._group, self._stage) as consumer:
                    await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # task top: count, log, back off and re-open the consumer
                self.stats.loop_restarts += 1
                self.stats.last_error = _describe(err)
                delay = self._backoff.next_delay()
                log.exception("stage %s: consumer failed, re-opening after %.2fs", self.name, delay)
                await self._pause(delay)

    async def _consume(self, consumer: Consumer) -> None:
        s = self._settings
        while not self._stopping.is_set():
            self._polling = True
            try:
                records = await consumer.poll(s.max_records, s.poll_timeout_s)
            finally:
                self._polling = False
            if not records:
                continue
            self.stats.polls += 1
            groups = _group_by_partition(records)
            results = await asyncio.gather(*(self._process_group(g) for g in groups))
            done = [r for group, ok in zip(groups, results, strict=True) if ok for r in group]
            if done:
                await consumer.commit(done)
                self.stats.records += len(done)
            failed = [group for group, ok in zip(groups, results, strict=True) if not ok]
            for group in failed:
                await consumer.seek(group[0].topic, group[0].partition, group[0].offset)
            if failed:
                await self._pause(self._backoff.next_delay())
            else:
                self._backoff.reset()

    async def _pause(self, delay: float) -> None:
        """Sleep for ``delay`` (the back-off), woken early by stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()

    async def _process_group(self, group: list[Record]) -> bool:
        """True when the whole group may be committed; False to rewind and retry it."""
        async with self._limit:
            remaining = group
            try:
                while remaining:
                    try:
                        await self._handler(remaining)
                        return True
                    except PoisonRecord as err:
                        await self._dead_letter(err.record, err.reason)
                        remaining = [r for r in remaining if r is not err.record]
                    except TRANSIENT_ERRORS:
                        raise
                    except Exception as err:  # unknown failure: find the record that causes it
                        self._count_failure(err)
                        log.exception("stage %s: handler failed; retrying record by record", self.name)
                        await self._isolate(remaining)
                        return True
                return True
            except TRANSIENT_ERRORS as err:
                self.stats.transient_failures += 1
                self.stats.last_error = _describe(err)
                log.warning(
                    "stage %s: %s unavailable (%s); retrying %s from offset %d",
                    self.name,
                    "bus" if isinstance(err, BusError) else "store",
                    _describe(err),
                    group[0].topic,
                    group[0].offset,
                )
                return False

    async def _isolate(self, records: list[Record]) -> None:
        """Handle ``records`` one by one; dead-letter each that fails ``max_attempts`` times."""
        for record in records:
            attempt = 0
            backoff = Backoff(self._settings.retry_backoff_s, self._settings.max_backoff_s)
            while True:
                try:
                    await self._handler([record])
                    break
                except PoisonRecord as err:
                    await self._dead_letter(record, err.reason)
                    break
                except TRANSIENT_ERRORS:
                    raise
                except Exception as err:  # a record's failure: counted, retried, then dead-lettered
                    self._count_failure(err)
                    log.exception(
                        "stage %s: record %s@%d failed (attempt %d)",
                        self.name,
                        record.topic,
                        record.offset,
                        attempt,
                    )
                    attempt += 1
                    if attempt >= self._settings.max_attempts:
                        await self._dead_letter(record, _describe(err))
                        break
                    await backoff.sleep()

    def _count_failure(self, err: BaseException) -> None:
        self.stats.failures += 1
        self.stats.last_error = _describe(err)

    async def _dead_letter(self, record: Record, reason: str) -> None:
        tenant = tenant_of(record, self._prefix)
        failed = pb.FailedDecode(
            tenant=tenant,
            source=f"{self._group}:{record.topic}[{record.partition}]@{record.offset}",
            reason=reason,
            payload=record.value,
            received_time_ms=now_ms(),
        )
        await self._bus.publish(
            topic_name(tenant, FAILED_DECODE, self._prefix),
            [Message(key=record.key, value=failed.SerializeToString())],
        )
        self.stats.dead_lettered += 1
        log.error("stage %s: dead-lettered %s: %s", self.name, failed.source, reason)


def _group_by_partition(records: Sequence[Record]) -> list[list[Record]]:
    groups: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        groups.setdefault((r.topic, r.partition), []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: r.offset)
    return list(groups.values())


# -- record format of the event stages ------------------------------------------------------


def tenant_of(record: Record, prefix: str = "fieldgate") -> str:
    """The tenant whose topic ``record`` came from (topics are per tenant)."""
    try:
        return parse_topic(record.topic, prefix)[0]
    except ValueError as err:
        raise PoisonRecord(record, f"record from a topic that is not a fieldgate topic: {err}") from err


def decode_batch(record: Record, tenant: str, *, check_events: bool = True) -> pb.EventBatch:
    """The record's ``EventBatch``; PoisonRecord if it is not one or (``check_events``) one of
    its events names another tenant or lacks a device or an alternate id.

    The checks guard tenant isolation where records enter the pipeline from outside a stage
    (``[decoded]``, ``[unregistered]``); stages reading what a previous stage of ours
    validated may skip them (they cost as much as the parse).
    """
    try:
        batch = pb.EventBatch.FromString(record.value)
    except ProtobufDecodeError as err:
        raise PoisonRecord(record, f"value is not an EventBatch: {err}") from err
    if not check_events:
        return batch
    for ev in batch.events:
        if ev.tenant != tenant:
            raise PoisonRecord(record, f"event of tenant {ev.tenant!r} in the topic of tenant {tenant!r}")
        if not ev.device or not ev.alternate_id:
            raise PoisonRecord(record, "event without device or alternate id")
    return batch


def decode_event(record: Record, tenant: str) -> pb.Event:
    """The record's single ``Event`` (the [command-invocations] format)."""
    try:
        ev = pb.Event.FromString(record.value)
    except ProtobufDecodeError as err:
        raise PoisonRecord(record, f"value is not an Event: {err}") from err
    if ev.tenant != tenant:
        raise PoisonRecord(record, f"event of tenant {ev.tenant!r} in the topic of tenant {tenant!r}")
    return ev


def messages_by_device(events: Iterable[pb.Event]) -> list[Message]:
    """One bus message per device (key = device token), at most MAX_EVENTS_PER_MESSAGE each."""
    by_device: dict[str, list[pb.Event]] = {}
    for ev in events:
        by_device.setdefault(ev.device, []).append(ev)
    out: list[Message] = []
    for device, evs in by_device.items():
        key = device.encode()
        for i in range(0, len(evs), MAX_EVENTS_PER_MESSAGE):
            chunk = evs[i : i + MAX_EVENTS_PER_MESSAGE]
            out.append(Message(key=key, value=pb.EventBatch(events=chunk).SerializeToString()))
    return out


# -- small bounded caches -----------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class TtlLru(Generic[K, V]):
    """A bounded LRU map whose entries expire after ``ttl_s`` (overflow: evict least recent).

    Used for lookups that may be slightly stale (a device's active assignment) but must not
    grow without bound or stay stale for more than a few seconds.
    """

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self._max = max(1, max_entries)
        self._ttl = ttl_s
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.evicted = 0

    def get(self, key: K) -> V | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = (time.monotonic() + self._ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)
            self.evicted += 1

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


class LruSet(Generic[K]):
    """A bounded set that forgets its least recently added members (overflow: evict oldest)."""

    def __init__(self, max_entries: int) -> None:
        self._max = max(1, max_entries)
        self._data: OrderedDict[K, None] = OrderedDict()
        self.evicted = 0

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def add(self, key: K) -> None:
        self._data[key] = None
        self._data.move_to_end(key)
        if len(self._data) > self._max:
            self._data.popitem(last=False)
            self.evicted += 1

    def __len__(self) -> int:
        return len(self._data)
