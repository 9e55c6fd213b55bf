"""Embedded durable bus: an append-only log in one SQLite file (WAL) for one machine.

This is the one-machine implementation of :class:`fieldgate.cloud.bus.Bus`; Kafka replaces
it when a deployment outgrows one process. It keeps Kafka's semantics where stages rely on
them, and documents where it is simpler:

* **Topics** are ``fieldgate.tenant.<tenant>.<stage>``, created on first publish, each with
  one partition (0). Offsets count from 0 per topic, without gaps.
* **publish** returns once the records are committed with ``synchronous=FULL`` (durable across
  a crash or power loss). One writer task group-commits whatever publishes and offset commits
  are waiting into one transaction, so concurrent stages share an fsync. The write queue is
  bounded (``write_queue_size`` calls); when it is full publishers wait (policy *block*,
  counted in ``stats.publish_waits``) — backpressure, not memory.
* **Consumers** subscribe by stage across all tenants, including topics created later. A
  new group starts at the earliest record still stored. ``poll`` returns records after the
  consumer's position (the group's committed offset, then its own uncommitted reads) and waits
  on an in-process notification, never by polling the disk. ``commit`` stores the next
  offset to read (highest committed + 1) per topic; ``seek`` moves the position for replay.
* **Group membership** is the simple kind: several consumers of one group and stage in one
  process form a queue; the first to enter is the active member and gets every record, the
  others wait idle (their polls return nothing) and the next one takes over from the committed
  offsets when the active member leaves. That mirrors Kafka with more members than partitions.
  The embedded bus is for one process: two processes must not open the same file.
* **Retention**: :meth:`EmbeddedBus.trim` deletes records that every group known to subscribe
  to that stage has committed past (groups are remembered on disk from their first consumer;
  :meth:`EmbeddedBus.delete_group` forgets one). With ``retention_ms`` set, records older
  than that go too, consumed or not (Kafka's time retention). Records of a stage no group has
  ever subscribed to (e.g. [persisted] before any downstream consumer exists) are kept for
  ``unsubscribed_retention_ms`` (default one hour) so that a consumer started a little later
  still finds them, then dropped. ``start`` runs ``trim`` every ``trim_interval_s``.
* **Replay**: :meth:`EmbeddedBus.reset_offsets` moves a group's committed offset for one
  tenant's topic to an offset or to the first record at/after a time; live members of that
  group pick it up on their next poll.

All SQLite work runs in one worker thread (:class:`~fieldgate.cloud.sqlite_worker.SqliteWorker`);
the event loop only keeps the small in-memory index (topics, their end offsets, committed
offsets) that lets consumers decide without touching the disk whether anything is new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from fieldgate.cloud.bus import STAGES, Message, Record, parse_topic, topic_name
from fieldgate.cloud.errors import BusError
from fieldgate.cloud.sqlite_worker import SqliteWorker, Synchronous, transaction
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    end_offset INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS records (
    topic_id INTEGER NOT NULL,
    off INTEGER NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (topic_id, off)
);
CREATE TABLE IF NOT EXISTS groups (
    grp TEXT NOT NULL,
    stage TEXT NOT NULL,
    PRIMARY KEY (grp, stage)
);
CREATE TABLE IF NOT EXISTS offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
);
"""

_RecordRow = tuple[int, int, bytes, bytes, int]  # topic_id, off, key, value, timestamp_ms
_OffsetRow = tuple[str, str, int, int]  # group, topic, partition, next_offset


@dataclass
class BusStats:
    """Counters of the embedded bus (exported as metrics by whoever owns the bus)."""

    published_records: int = 0
    publish_calls: int = 0
    write_transactions: int = 0
    # Publishers that found the write queue full and waited (overflow policy: block).
    publish_waits: int = 0
    polled_records: int = 0
    offset_commits: int = 0
    trimmed_records: int = 0
    trim_failures: int = 0
    write_failures: int = 0


@dataclass
class _Topic:
    id: int
    name: str
    tenant: str
    stage: str
    end: int  # next offset to be written
    start: int  # first offset still stored


@dataclass
class _WriteOp:
    """One caller's share of a group-committed write transaction."""

    future: asyncio.Future[None]
    topic: str | None = None
    messages: Sequence[tuple[bytes, bytes]] = ()
    offsets: Sequence[_OffsetRow] = ()
    group_stage: tuple[str, str] | None = None
    trim_below: dict[str, int] = field(default_factory=dict)
    drop: Sequence[str] = ()  # topics to delete with their records and committed offsets


@dataclass
class _Plan:
    """What the worker thread writes in one transaction; built on the loop side."""

    new_topics: list[tuple[int, str]] = field(default_factory=list)
    records: list[_RecordRow] = field(default_factory=list)
    topic_ends: dict[int, int] = field(default_factory=dict)
    offsets: list[_OffsetRow] = field(default_factory=list)
    groups: list[tuple[str, str]] = field(default_factory=list)
    trims: list[tuple[int, int]] = field(default_factory=list)  # topic_id, delete below offset
    drops: list[str] = field(default_factory=list)  # topic names, applied after the inserts


class EmbeddedBus:
    """Implements :class:`fieldgate.cloud.bus.Bus` on one SQLite file.

    ``path`` is the database file (``<data_dir>/bus.db`` is a good choice); an existing
    directory is taken to mean ``<path>/bus.db``. ``start`` is called implicitly by the first
    publish or consumer, but ``stop`` must be called (or use ``async with``).
    """

    def __init__(
        self,
        path: Path,
        *,
        prefix: str = "fieldgate",
        synchronous: Synchronous = "FULL",
        retention_ms: int | None = None,
        unsubscribed_retention_ms: int | None = 3_600_000,
        trim_interval_s: float | None = 5.0,
        write_queue_size: int = 256,
        max_poll_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._path = path / "bus.db" if path.is_dir() else path
        self._prefix = prefix
        self._retention_ms = retention_ms
        self._unsubscribed_retention_ms = unsubscribed_retention_ms
        self._trim_interval_s = trim_interval_s
        self._max_poll_bytes = max_poll_bytes
        self._worker = SqliteWorker("embedded-bus", error=BusError, synchronous=synchronous)
        self._queue: asyncio.Queue[_WriteOp | None] = asyncio.Queue(maxsize=write_queue_size)
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        self._trimmer: asyncio.Task[None] | None = None
        # In-memory index, owned by the event loop; the disk is written only by the writer task.
        self._topics: dict[str, _Topic] = {}
        self._by_stage: dict[str, dict[str, _Topic]] = {}
        self._next_topic_id = 1
        self._committed: dict[tuple[str, str], int] = {}  # (group, topic) -> next offset
        self._groups: dict[str, set[str]] = {}  # stage -> groups subscribed to it
        self._members: dict[tuple[str, str], list[EmbeddedConsumer]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}  # stage -> event set on new records
        self.stats = BusStats()

    @property
    def path(self) -> Path:
        return self._path

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise BusError("embedded bus was stopped; create a new one")
            topics, starts, groups, offsets = await self._worker.run(self._load)
            for tid, name, end in topics:
                self._add_topic(tid, name, end, starts.get(tid, end))
            for grp, stage in groups:
                self._groups.setdefault(stage, set()).add(grp)
            for grp, topic, _partition, nxt in offsets:
                self._committed[(grp, topic)] = nxt
            self._writer = asyncio.create_task(self._write_loop(), name="embedded-bus-writer")
            if self._trim_interval_s is not None:
                self._trimmer = asyncio.create_task(self._trim_loop(), name="embedded-bus-trim")
            self._started = True
            log.info("embedded bus at %s: %d topics, %d groups", self._path, len(self._topics), len(groups))

    async def stop(self) -> None:
        """Finish queued writes, wake waiting consumers (their next poll raises), close."""
        async with self._start_lock:
            if self._closed:
                return
            self._closed = True
            if not self._started:
                return
            await cancel_and_wait(self._trimmer)
            await self._queue.put(None)
            if self._writer is not None:
                await self._writer
            # Publishers that were blocked on a full queue got in behind the sentinel.
            while not self._queue.empty():
                op = self._queue.get_nowait()
                if op is not None and not op.future.done():
                    op.future.set_exception(BusError("embedded bus is stopped"))
            for stage in list(self._wakeups):
                self._wake(stage)
            await self._worker.stop()

    async def ping(self) -> None:
        """Readiness: the log file answers a read (raises BusError when stopped or unreadable)."""
        if self._closed or not self._started:
            raise BusError("embedded bus is not running")
        await self._worker.run(lambda: self._conn().execute("SELECT 1").fetchone())

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ---------------------------------------------------------------- producing

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Append ``messages`` to ``topic`` (created on first use); returns once durable."""
        try:
            parse_topic(topic, self._prefix)
        except ValueError as err:
            raise BusError(str(err)) from err
        if not messages:
            return
        rows = [(bytes(m.key), bytes(m.value)) for m in messages]
        await self._submit(_WriteOp(self._new_future(), topic=topic, messages=rows))
        self.stats.publish_calls += 1
        self.stats.published_records += len(rows)

    # ---------------------------------------------------------------- consuming

    def consumer(self, group: str, stage: str, *, tail: bool = False) -> EmbeddedConsumer:
        """A consumer of ``stage`` across all tenants (enter it with ``async with``).
        ``tail``: see :meth:`fieldgate.cloud.bus.Bus.consumer` (not remembered on disk)."""
        if not group:
            raise BusError("consumer group must not be empty")
        return EmbeddedConsumer(self, group, stage, tail=tail)

    # ---------------------------------------------------------------- admin

    async def reset_offsets(
        self,
        group: str,
        stage: str,
        tenant: str,
        *,
        to_offset: int | None = None,
        to_time_ms: int | None = None,
    ) -> dict[int, int]:
        """Move ``group``'s committed offset of ``tenant``'s ``stage`` topic (replay or skip).

        Give exactly one of ``to_offset`` (clamped to the topic's range) or ``to_time_ms``
        (the first record stamped at or after it; the end if none). Live members of the group
        continue from there on their next poll. Returns ``{0: new committed offset}`` (one
        partition; a topic not written yet is reset to 0).
        """
        if (to_offset is None) == (to_time_ms is None):
            raise BusError("give exactly one of to_offset or to_time_ms")
        await self.start()
        name = topic_name(tenant, stage, self._prefix)
        topic = self._topics.get(name)
        end = topic.end if topic is not None else 0
        if to_offset is not None:
            target = min(max(to_offset, 0), end)
        elif topic is None:
            target = 0
        else:
            assert to_time_ms is not None
            first = await self._worker.run(self._first_offset_at, topic.id, to_time_ms)
            target = end if first is None else first
        await self._submit(_WriteOp(self._new_future(), offsets=[(group, name, 0, target)]))
        self._committed[(group, name)] = target
        for member in self._members.get((group, stage), []):
            member._positions.pop(name, None)
            member._read_high.pop(name, None)
        self._wake(stage)
        return {0: target}

    async def ensure_tenant_topics(self, tenant: str) -> list[str]:
        """The tenant's topic names (one per stage). Nothing to create here: an embedded topic
        is created by its first publish, and consumers of a stage see it at once."""
        return [topic_name(tenant, stage, self._prefix) for stage in STAGES]

    async def delete_tenant_topics(self, tenant: str) -> list[str]:
        """Delete every topic of ``tenant`` with its records and every group's committed
        offsets (one write transaction, in order with the publishes queued before it); the
        topics that existed. A later publish creates a topic again from offset 0."""
        await self.start()
        names = [topic_name(tenant, stage, self._prefix) for stage in STAGES]
        existed = [n for n in names if n in self._topics]
        await self._submit(_WriteOp(self._new_future(), drop=names))
        return existed

    def forget_tenant(self, tenant: str) -> None:
        """Nothing to forget: one process owns the embedded bus, and deletes its topics itself."""

    async def delete_group(self, group: str) -> None:
        """Forget ``group`` (its committed offsets and subscriptions) so it no longer holds
        back retention. Do not call while it has live consumers."""
        await self.start()
        await self._worker.run(self._delete_group, group)
        for groups in self._groups.values():
            groups.discard(group)
        for key in [k for k in self._committed if k[0] == group]:
            del self._committed[key]

    async def trim(self) -> int:
        """Delete records every subscribed group has committed past (and, with
        ``retention_ms``, records older than that). Returns how many were deleted."""
        await self.start()
        now = now_ms()
        below: dict[str, int] = {}
        for topic in list(self._topics.values()):
            groups = self._groups.get(topic.stage, set())
            low = topic.start
            cutoff_ms = None if self._retention_ms is None else now - self._retention_ms
            if groups:
                low = min(self._committed.get((g, topic.name), topic.start) for g in groups)
            elif self._unsubscribed_retention_ms is not None:
                orphan_cutoff = now - self._unsubscribed_retention_ms
                cutoff_ms = orphan_cutoff if cutoff_ms is None else max(cutoff_ms, orphan_cutoff)
            if cutoff_ms is not None and topic.end > topic.start:
                aged = await self._worker.run(self._first_offset_at, topic.id, cutoff_ms)
                low = max(low, topic.end if aged is None else aged)
            if low > topic.start:
                below[topic.name] = low
        if not below:
            return 0
        before = sum(t.end - t.start for t in self._topics.values())
        await self._submit(_WriteOp(self._new_future(), trim_below=below))
        deleted = before - sum(t.end - t.start for t in self._topics.values())
        self.stats.trimmed_records += deleted
        return deleted

    def end_offsets(self, stage: str) -> dict[str, int]:
        """``{topic: next offset to be written}`` of every topic of ``stage`` (lag checks)."""
        return {name: t.end for name, t in self._by_stage.get(stage, {}).items()}

    async def topic_end_offsets(self, topic: str) -> dict[int, int]:
        """``{0: next offset to be written}`` of ``topic``; {} if it does not exist."""
        await self.start()
        t = self._topics.get(topic)
        return {} if t is None else {0: t.end}

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """``{0: the group's committed offset (next to read)}`` of ``topic``; {} if none."""
        offset = self.committed_offset(group, topic)
        return {} if offset is None else {0: offset}

    def committed_offset(self, group: str, topic: str) -> int | None:
        """The group's committed offset (next to read) of ``topic``, if any; synchronous (the
        embedded bus keeps its offsets in memory), for tests that check it in a condition."""
        return self._committed.get((group, topic))

    # ---------------------------------------------------------------- internals (loop side)

    def _new_future(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, op: _WriteOp) -> None:
        if not self._started:
            await self.start()
        if self._closed:
            raise BusError("embedded bus is stopped")
        if self._queue.full():
            self.stats.publish_waits += 1
        await self._queue.put(op)
        await op.future

    def _add_topic(self, tid: int, name: str, end: int, start: int) -> _Topic:
        tenant, stage = parse_topic(name, self._prefix)
        topic = _Topic(tid, name, tenant, stage, end, start)
        self._topics[name] = topic
        self._by_stage.setdefault(stage, {})[name] = topic
        self._next_topic_id = max(self._next_topic_id, tid + 1)
        return topic

    def _wake(self, stage: str) -> None:
        event = self._wakeups.pop(stage, None)
        if event is not None:
            event.set()

    def _wakeup_event(self, stage: str) -> asyncio.Event:
        event = self._wakeups.get(stage)
        if event is None:
            event = self._wakeups[stage] = asyncio.Event()
        return event

    async def _write_loop(self) -> None:
        """The single writer: drain everything queued into one transaction, repeat."""
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                return
            ops = [first]
            while not self._queue.empty() and len(ops) < 1024:
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                ops.append(nxt)
            await self._write(ops)

    async def _write(self, ops: list[_WriteOp]) -> None:
        plan = _Plan()
        ends: dict[str, int] = {}
        new: dict[str, int] = {}
        next_id = self._next_topic_id
        ts = now_ms()
        for op in ops:
            if op.topic is not None:
                topic = self._topics.get(op.topic)
                if topic is not None:
                    tid, end = topic.id, ends.get(op.topic, topic.end)
                elif op.topic in new:
                    tid, end = new[op.topic], ends[op.topic]
                else:
                    tid, end = next_id, 0
                    next_id += 1
                    new[op.topic] = tid
                    plan.new_topics.append((tid, op.topic))
                for key, value in op.messages:
                    plan.records.append((tid, end, key, value, ts))
                    end += 1
                ends[op.topic] = end
                plan.topic_ends[tid] = end
            plan.offsets.extend(op.offsets)
            if op.group_stage is not None:
                plan.groups.append(op.group_stage)
            for name, below in op.trim_below.items():
                if name in self._topics:
                    plan.trims.append((self._topics[name].id, below))
            plan.drops.extend(op.drop)
        dropped = set(plan.drops)
        try:
            await self._worker.run(self._apply, plan)
        except asyncio.CancelledError:
            for op in ops:
                op.future.cancel()
            raise
        except Exception as err:  # the writer task's top: fail these callers, keep writing
            self.stats.write_failures += 1
            log.exception("embedded bus write failed")
            failure = err if isinstance(err, BusError) else BusError(f"write failed: {err!r}")
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(failure)
            return
        self.stats.write_transactions += 1
        stages: set[str] = set()
        for name, end in ends.items():
            if name in dropped:
                continue
            topic = self._topics.get(name)
            if topic is None:
                topic = self._add_topic(new[name], name, end, 0)
            topic.end = end
            stages.add(topic.stage)
        for grp, topic_name_, _partition, nxt in plan.offsets:
            self._committed[(grp, topic_name_)] = nxt
        for grp, stage in plan.groups:
            self._groups.setdefault(stage, set()).add(grp)
        for op in ops:
            for name, below in op.trim_below.items():
                trimmed = self._topics.get(name)
                if trimmed is not None:
                    trimmed.start = max(trimmed.start, min(below, trimmed.end))
        for name in dropped:
            self._forget_topic(name)
        for op in ops:
            if not op.future.done():
                op.future.set_result(None)
        for stage in stages:
            self._wake(stage)

    def _forget_topic(self, name: str) -> None:
        """Drop a deleted topic from the index, the committed offsets and every member's
        position (a topic created again under that name starts from offset 0)."""
        topic = self._topics.pop(name, None)
        if topic is not None:
            self._by_stage.get(topic.stage, {}).pop(name, None)
        for key in [k for k in self._committed if k[1] == name]:
            del self._committed[key]
        for members in self._members.values():
            for member in members:
                member._positions.pop(name, None)
                member._read_high.pop(name, None)

    async def _trim_loop(self) -> None:
        assert self._trim_interval_s is not None
        while True:
            await asyncio.sleep(self._trim_interval_s)
            try:
                deleted = await self.trim()
            except BusError as err:
                self.stats.trim_failures += 1
                log.warning("embedded bus trim failed: %s", err)
            else:
                if deleted:
                    log.debug("embedded bus trimmed %d records", deleted)

    # ---------------------------------------------------------------- internals (worker thread)

    def _conn(self) -> sqlite3.Connection:
        conn = self._worker.connect(self._path, _SCHEMA)
        assert conn is not None
        return conn

    def _load(
        self,
    ) -> tuple[list[tuple[int, str, int]], dict[int, int], list[tuple[str, str]], list[_OffsetRow]]:
        conn = self._conn()
        topics = conn.execute("SELECT id, name, end_offset FROM topics").fetchall()
        starts = dict(conn.execute("SELECT topic_id, min(off) FROM records GROUP BY topic_id").fetchall())
        groups = conn.execute("SELECT grp, stage FROM groups").fetchall()
        offsets = conn.execute("SELECT grp, topic, partition, next_offset FROM offsets").fetchall()
        return topics, starts, groups, offsets

    def _apply(self, plan: _Plan) -> None:
        with transaction(self._conn()) as conn:
            if plan.new_topics:
                conn.executemany("INSERT INTO topics (id, name) VALUES (?, ?)", plan.new_topics)
            if plan.records:
                conn.executemany(
                    "INSERT INTO records (topic_id, off, key, value, timestamp_ms) VALUES (?, ?, ?, ?, ?)",
                    plan.records,
                )
            if plan.topic_ends:
                conn.executemany(
                    "UPDATE topics SET end_offset = ? WHERE id = ?",
                    [(end, tid) for tid, end in plan.topic_ends.items()],
                )
            if plan.offsets:
                conn.executemany(
                    "INSERT INTO offsets (grp, topic, partition, next_offset) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (grp, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                    plan.offsets,
                )
            if plan.groups:
                conn.executemany("INSERT OR IGNORE INTO groups (grp, stage) VALUES (?, ?)", plan.groups)
            if plan.trims:
                conn.executemany("DELETE FROM records WHERE topic_id = ? AND off < ?", plan.trims)
            for name in plan.drops:
                conn.execute(
                    "DELETE FROM records WHERE topic_id IN (SELECT id FROM topics WHERE name = ?)", (name,)
                )
                conn.execute("DELETE FROM topics WHERE name = ?", (name,))
                conn.execute("DELETE FROM offsets WHERE topic = ?", (name,))

    def _first_offset_at(self, topic_id: int, time_ms: int) -> int | None:
        # Walks the topic in offset order and stops at the first match (timestamps grow
        # with offsets), rather than min() over every record.
        row = (
            self._conn()
            .execute(
                "SELECT off FROM records WHERE topic_id = ? AND timestamp_ms >= ? ORDER BY off LIMIT 1",
                (topic_id, time_ms),
            )
            .fetchone()
        )
        return None if row is None else int(row[0])

    def _delete_group(self, group: str) -> None:
        with transaction(self._conn()) as conn:
            conn.execute("DELETE FROM groups WHERE grp = ?", (group,))
            conn.execute("DELETE FROM offsets WHERE grp = ?", (group,))

    def _read(self, wanted: list[tuple[_Topic, int]], max_records: int) -> list[Record]:
        conn = self._conn()
        out: list[Record] = []
        size = 0
        for topic, position in wanted:
            limit = max_records - len(out)
            if limit <= 0:
                break
            cur = conn.execute(
                "SELECT off, key, value, timestamp_ms FROM records"
                " WHERE topic_id = ? AND off >= ? ORDER BY off LIMIT ?",
                (topic.id, position, limit),
            )
            for off, key, value, ts in cur:
                out.append(Record(topic.name, 0, off, key, value, ts))
                size += len(value) + len(key)
                if size >= self._max_poll_bytes:
                    cur.close()
                    return out
        return out


class EmbeddedConsumer:
    """A member of consumer group ``group`` reading every tenant's topic of ``stage``.

    Obtain it from :meth:`EmbeddedBus.consumer` and use it as an async context manager. Only
    the group's active member (the earliest to enter that is still inside) receives records.
    """

    def __init__(self, bus: EmbeddedBus, group: str, stage: str, *, tail: bool = False) -> None:
        self._bus = bus
        self.group = group
        self.stage = stage
        self.tail = tail
        self._entered = False
        self._closed = False
        self._positions: dict[str, int] = {}  # topic -> next offset this member will read
        # topic -> the offset after the highest record this member has read of the topic as it
        # exists now (a seek back does not lower it; deleting or resetting the topic drops it).
        self._read_high: dict[str, int] = {}
        self._rotate = 0

    async def __aenter__(self) -> Self:
        if self._entered:
            raise BusError("consumer already entered")
        bus = self._bus
        if self.tail:  # ephemeral: no group on disk (retention ignores it), start at the ends
            await bus.start()
            for name, topic in bus._by_stage.get(self.stage, {}).items():
                self._positions[name] = topic.end
        else:
            await bus._submit(_WriteOp(bus._new_future(), group_stage=(self.group, self.stage)))
        bus._members.setdefault((self.group, self.stage), []).append(self)
        self._entered = True
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        members = self._bus._members.get((self.group, self.stage), [])
        if self in members:
            was_active = members[0] is self
            members.remove(self)
            if was_active:
                self._bus._wake(self.stage)  # a standby member takes over

    @property
    def active(self) -> bool:
        """True when this member is the one receiving the group's records."""
        members = self._bus._members.get((self.group, self.stage), [])
        return bool(members) and members[0] is self

    def _check(self) -> None:
        if not self._entered or self._closed:
            raise BusError("consumer is not open (use 'async with bus.consumer(...)')")
        if self._bus._closed:
            raise BusError("embedded bus is stopped")

    def _position(self, topic: _Topic) -> int:
        pos = self._positions.get(topic.name)
        if pos is None:
            pos = self._bus._committed.get((self.group, topic.name), topic.start)
            self._positions[topic.name] = pos
        return max(pos, topic.start)

    def _ready(self) -> list[tuple[_Topic, int]]:
        topics = list(self._bus._by_stage.get(self.stage, {}).values())
        if not topics:
            return []
        # Rotate the starting topic so that one busy tenant cannot starve the others.
        self._rotate = (self._rotate + 1) % len(topics)
        topics = topics[self._rotate :] + topics[: self._rotate]
        out = []
        for topic in topics:
            pos = self._position(topic)
            if topic.end > pos:
                out.append((topic, pos))
        return out

    async def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records (fewer if they pass the bus's byte limit); waits up
        to ``timeout_s`` for the first. An idle (standby) member always gets ``[]``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        while True:
            self._check()
            # Take the wake-up event before looking, so that a publish after the look wakes us.
            wakeup = self._bus._wakeup_event(self.stage)
            if self.active:
                ready = self._ready()
                if ready:
                    expected = {topic.name: self._positions.get(topic.name) for topic, _ in ready}
                    records = await self._bus._worker.run(self._bus._read, ready, max(max_records, 1))
                    # A seek or offset reset during the read wins over what we read.
                    if records and not self._closed:
                        fresh = [r for r in records if self._positions.get(r.topic) == expected[r.topic]]
                        for rec in fresh:
                            self._positions[rec.topic] = rec.offset + 1
                            self._read_high[rec.topic] = max(
                                self._read_high.get(rec.topic, 0), rec.offset + 1
                            )
                        self._bus.stats.polled_records += len(fresh)
                        if fresh:
                            return fresh
                    # Nothing usable (a seek raced the read): wait below; the seek's wake-up
                    # makes that wait return at once, and nothing here can spin.
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel (fieldgate.tasks).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await wakeup.wait()

    async def commit(self, records: Sequence[Record]) -> None:
        """Persist, per topic, the offset after the highest of ``records`` (at most this
        member's position: see below)."""
        self._check()
        if self.tail:
            return  # a tail reader keeps its position in memory only
        highest: dict[str, int] = {}
        for rec in records:
            if rec.partition != 0:
                raise BusError(f"embedded bus topics have only partition 0, got {rec.partition}")
            highest[rec.topic] = max(highest.get(rec.topic, -1), rec.offset)
        # Never past what this member has read of the topic: records of a topic deleted since
        # (a deleted tenant's, committed late) must not move the offset of the topic created
        # again under that name, or its first records would be skipped. What it has read, not
        # where it reads now: after a seek back (a connector noticed late reads records again)
        # the records read before the seek may still be committed.
        rows = []
        for topic, off in highest.items():
            high = self._read_high.get(topic)
            if high is not None:
                rows.append((self.group, topic, 0, min(off + 1, high)))
        if not rows:
            return
        await self._bus._submit(_WriteOp(self._bus._new_future(), offsets=rows))
        self._bus.stats.offset_commits += 1

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        """The next poll of ``topic`` starts at ``offset`` (uncommitted until ``commit``)."""
        self._check()
        if partition != 0:
            raise BusError(f"embedded bus topics have only partition 0, got {partition}")
        try:
            _tenant, stage = parse_topic(topic, self._bus._prefix)
        except ValueError as err:
            raise BusError(str(err)) from err
        if stage != self.stage:
            raise BusError(f"topic {topic!r} is not of this consumer's stage {self.stage!r}")
        self._positions[topic] = max(offset, 0)
        self._bus._wake(self.stage)
