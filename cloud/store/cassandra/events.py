"""Cassandra event store: a keyspace per tenant, tables shaped by the API's queries.

The distributed implementation of :class:`fieldgate.cloud.store.events.EventStore` (cassandra-driver).
Schema and design notes are in docs/operations/cassandra.md; in short, per tenant keyspace
``fg_<tenant>`` (:func:`keyspace_name`):

* ``events_by_device`` — partition ``(device, day)``, clustering ``(event_time_ms DESC,
  received_time_ms DESC, key DESC)``: a device's events by time range, newest first. ``day``
  (event time // 1 day) bounds partitions.
* ``events_by_device_kind`` — the same with ``kind`` in the partition key: a kind filter reads
  only that kind's rows instead of filtering a partition that is mostly measurements (Cassandra
  cannot index a clustering range *and* a non-key column without ``ALLOW FILTERING``, which
  would scan). The price is a second write per event; Cassandra writes are appends.
* ``device_days`` — ``(device), kind, day``: which day partitions exist, so a listing visits
  only those (``kind = '*'`` for the all-kinds table).
* ``events_by_key`` — ``key`` (16 bytes of the deterministic event id, :mod:`fieldgate.cloud.ids`)
  → event: :meth:`get_event` and the idempotency check. ``event_aliases`` maps ids that are not
  the derived one (command invocation events carry the invocation id) to their key.
* ``events_by_invocation`` — ``(invocation), event_time_ms, key``: an invocation and its responses
  (those of its own device: a response inbound processing refused is not written there).
* ``events_by_assignment``, ``events_by_assignment_kind``, ``assignment_days`` (schema version 2)
  — the three device tables again, keyed by the assignment token the event carries
  (``pb.Event.assignment``, stamped by inbound enrichment): an assignment's events by time range
  and kind. Events without an assignment are not written there.
* ``schema_version`` — migrations applied to this keyspace (the service migrates at start or
  on a tenant's first use).

Idempotency. The key of every row is the deterministic id, so storing an event again is an
upsert of the same rows: re-delivery can never store twice. :meth:`add` must also say which
events are *new* (so persistence does not re-announce duplicates). Two ways, chosen with
``dedupe``:

* ``"read"`` (default): read ``events_by_key`` for the batch's keys (single-partition reads,
  concurrent), write the new events' rows, then their ``events_by_key`` row *last* — so a key
  that is present means every other row is too, and a crash between writes just makes the
  retry write again. Two writers racing on the same event could both call it new; the bus
  keys records by device, so one consumer owns a device at a time (except during a
  rebalance, where the worst case is one duplicate announcement, never a duplicate row).
* ``"lwt"``: ``INSERT ... IF NOT EXISTS`` on ``events_by_key`` after the other rows: exact under
  races, but a Paxos round per event (measured several times slower; see the docs).

Writes go through ``execute_async``; the driver's future is bridged to asyncio with
``loop.call_soon_threadsafe`` (:class:`~fieldgate.cloud.store.cassandra.session.CassandraSession`, which
a process's Cassandra stores may share: ``session=``) and at most ``max_concurrency`` requests of
this store are in flight (a semaphore). Per-tenant TTL (``USING TTL``) applies to every row of an event, the idempotency
row included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cassandra.query import BatchStatement, BatchType

from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.ids import completed_event, event_key
from fieldgate.cloud.store import Page
from fieldgate.cloud.store.cassandra.keyspace import PreparedKeyspaces
from fieldgate.cloud.store.cassandra.session import (
    KEYSPACE_PREFIX,
    CassandraSession,
    Migration,
    keyspace_name,
    table_names,
)
from fieldgate.cloud.store.cassandra.session import TENANT_RE as _TENANT_RE
from fieldgate.cloud.store.events import MAX_INVOCATION_EVENTS, AssignmentEventQuery, EventQuery
from fieldgate.v1 import events_pb2 as pb

__all__ = ["EVENT_KINDS", "SCHEMA_VERSION", "CassandraEventStore", "keyspace_name"]

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
_ALL = "*"  # the kind of device_days rows that describe events_by_device
_MIN_BIGINT, _MAX_BIGINT = -(2**63), 2**63 - 1
_MIN_INT, _MAX_INT = -(2**31), 2**31 - 1
_MAX_PAGE_SIZE = 10_000
# Rows of one partition are sent as one UNLOGGED batch (a single mutation on the replica) up
# to this many bytes of event data; Cassandra fails batches above 50 KiB by default.
_BATCH_BYTES = 24 * 1024

EVENT_KINDS: frozenset[str] = frozenset(f.name for f in pb.Event.DESCRIPTOR.oneofs_by_name["payload"].fields)

Dedupe = Literal["read", "lwt"]
_By = Literal["device", "assignment"]


def _migrations(ks: str, replication: int) -> list[Migration]:
    """Schema versions of a tenant keyspace, oldest first. Append, never edit."""
    order = "WITH CLUSTERING ORDER BY (event_time_ms DESC, received_time_ms DESC, key DESC)"
    return [
        (
            1,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.events_by_key ("
                " key blob PRIMARY KEY, id text, device text, data blob)",
                f"CREATE TABLE IF NOT EXISTS {ks}.event_aliases (id text PRIMARY KEY, key blob)",
                f"CREATE TABLE IF NOT EXISTS {ks}.events_by_device ("
                " device text, day int, event_time_ms bigint, received_time_ms bigint, key blob, data blob,"
                " PRIMARY KEY ((device, day), event_time_ms, received_time_ms, key)) " + order,
                f"CREATE TABLE IF NOT EXISTS {ks}.events_by_device_kind ("
                " device text, kind text, day int, event_time_ms bigint, received_time_ms bigint,"
                " key blob, data blob,"
                " PRIMARY KEY ((device, kind, day), event_time_ms, received_time_ms, key)) " + order,
                f"CREATE TABLE IF NOT EXISTS {ks}.device_days ("
                " device text, kind text, day int, PRIMARY KEY ((device), kind, day))"
                " WITH CLUSTERING ORDER BY (kind ASC, day DESC)",
                f"CREATE TABLE IF NOT EXISTS {ks}.events_by_invocation ("
                " invocation text, event_time_ms bigint, key blob, data blob,"
                " PRIMARY KEY ((invocation), event_time_ms, key))",
            ],
        ),
        (
            2,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.events_by_assignment ("
                " assignment text, day int, event_time_ms bigint, received_time_ms bigint, key blob,"
                " data blob, PRIMARY KEY ((assignment, day), event_time_ms, received_time_ms, key)) " + order,
                f"CREATE TABLE IF NOT EXISTS {ks}.events_by_assignment_kind ("
                " assignment text, kind text, day int, event_time_ms bigint, received_time_ms bigint,"
                " key blob, data blob,"
                " PRIMARY KEY ((assignment, kind, day), event_time_ms, received_time_ms, key)) " + order,
                f"CREATE TABLE IF NOT EXISTS {ks}.assignment_days ("
                " assignment text, kind text, day int, PRIMARY KEY ((assignment), kind, day))"
                " WITH CLUSTERING ORDER BY (kind ASC, day DESC)",
            ],
        ),
    ]


def _statements(ks: str) -> dict[str, str]:
    """The prepared statements of a tenant keyspace, by the field names of :class:`_Tenant`."""
    ttl = "USING TTL ?"
    return {
        "ins_key": f"INSERT INTO {ks}.events_by_key (key, id, device, data) VALUES (?, ?, ?, ?) {ttl}",
        "ins_key_lwt": f"INSERT INTO {ks}.events_by_key (key, id, device, data) VALUES (?, ?, ?, ?)"
        f" IF NOT EXISTS {ttl}",
        "sel_key": f"SELECT id, data FROM {ks}.events_by_key WHERE key = ?",
        "sel_key_exists": f"SELECT key FROM {ks}.events_by_key WHERE key = ?",
        "ins_alias": f"INSERT INTO {ks}.event_aliases (id, key) VALUES (?, ?) {ttl}",
        "sel_alias": f"SELECT key FROM {ks}.event_aliases WHERE id = ?",
        "ins_device": f"INSERT INTO {ks}.events_by_device"
        f" (device, day, event_time_ms, received_time_ms, key, data) VALUES (?, ?, ?, ?, ?, ?) {ttl}",
        "ins_device_kind": f"INSERT INTO {ks}.events_by_device_kind"
        " (device, kind, day, event_time_ms, received_time_ms, key, data)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?) {ttl}",
        "ins_day": f"INSERT INTO {ks}.device_days (device, kind, day) VALUES (?, ?, ?) {ttl}",
        "ins_invocation": f"INSERT INTO {ks}.events_by_invocation (invocation, event_time_ms, key, data)"
        f" VALUES (?, ?, ?, ?) {ttl}",
        "sel_invocation": f"SELECT data FROM {ks}.events_by_invocation WHERE invocation = ? LIMIT ?",
        "sel_days": f"SELECT day FROM {ks}.device_days WHERE device = ? AND kind = ? AND day >= ? AND day <= ?",
        "count_device": f"SELECT count(*) FROM {ks}.events_by_device WHERE device = ? AND day = ?"
        " AND event_time_ms >= ? AND event_time_ms <= ?",
        "count_device_kind": f"SELECT count(*) FROM {ks}.events_by_device_kind WHERE device = ?"
        " AND kind = ? AND day = ? AND event_time_ms >= ? AND event_time_ms <= ?",
        "page_device": f"SELECT data FROM {ks}.events_by_device WHERE device = ? AND day = ?"
        " AND event_time_ms >= ? AND event_time_ms <= ? LIMIT ?",
        "page_device_kind": f"SELECT data FROM {ks}.events_by_device_kind WHERE device = ? AND kind = ?"
        " AND day = ? AND event_time_ms >= ? AND event_time_ms <= ? LIMIT ?",
        "ins_assignment": f"INSERT INTO {ks}.events_by_assignment"
        " (assignment, day, event_time_ms, received_time_ms, key, data) VALUES (?, ?, ?, ?, ?, ?)"
        f" {ttl}",
        "ins_assignment_kind": f"INSERT INTO {ks}.events_by_assignment_kind"
        " (assignment, kind, day, event_time_ms, received_time_ms, key, data)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?) {ttl}",
        "ins_assignment_day": f"INSERT INTO {ks}.assignment_days (assignment, kind, day) VALUES (?, ?, ?)"
        f" {ttl}",
        "sel_assignment_days": f"SELECT day FROM {ks}.assignment_days WHERE assignment = ? AND kind = ?"
        " AND day >= ? AND day <= ?",
        "count_assignment": f"SELECT count(*) FROM {ks}.events_by_assignment WHERE assignment = ?"
        " AND day = ? AND event_time_ms >= ? AND event_time_ms <= ?",
        "count_assignment_kind": f"SELECT count(*) FROM {ks}.events_by_assignment_kind"
        " WHERE assignment = ? AND kind = ? AND day = ? AND event_time_ms >= ? AND event_time_ms <= ?",
        "page_assignment": f"SELECT data FROM {ks}.events_by_assignment WHERE assignment = ? AND day = ?"
        " AND event_time_ms >= ? AND event_time_ms <= ? LIMIT ?",
        "page_assignment_kind": f"SELECT data FROM {ks}.events_by_assignment_kind WHERE assignment = ?"
        " AND kind = ? AND day = ? AND event_time_ms >= ? AND event_time_ms <= ? LIMIT ?",
    }


SCHEMA_VERSION = 2


@dataclass(slots=True)
class _Tenant:
    """A tenant's keyspace and its prepared statements."""

    keyspace: str
    ins_key: Any
    ins_key_lwt: Any
    sel_key: Any
    sel_key_exists: Any
    ins_alias: Any
    sel_alias: Any
    ins_device: Any
    ins_device_kind: Any
    ins_day: Any
    ins_invocation: Any
    sel_invocation: Any
    sel_days: Any
    count_device: Any
    count_device_kind: Any
    page_device: Any
    page_device_kind: Any
    ins_assignment: Any
    ins_assignment_kind: Any
    ins_assignment_day: Any
    sel_assignment_days: Any
    count_assignment: Any
    count_assignment_kind: Any
    page_assignment: Any
    page_assignment_kind: Any

    def lister(self, by: _By) -> _Lister:
        """The statements that list events by ``"device"`` or by ``"assignment"``."""
        if by == "device":
            return _Lister(
                self.sel_days,
                self.count_device,
                self.count_device_kind,
                self.page_device,
                self.page_device_kind,
            )
        return _Lister(
            self.sel_assignment_days,
            self.count_assignment,
            self.count_assignment_kind,
            self.page_assignment,
            self.page_assignment_kind,
        )


@dataclass(frozen=True, slots=True)
class _Lister:
    """Prepared statements of one "events by X" table family: X's day partitions, counts and pages
    (all-kinds table and per-kind table). Parameters start with X (then the kind, if any)."""

    sel_days: Any
    count_all: Any
    count_kind: Any
    page_all: Any
    page_kind: Any


def _invocation_of(event: pb.Event, kind: str) -> str:
    """The invocation the event is filed under: a command_invocation's own, a command_response's
    unless inbound processing refused it (``refused``: not its device's invocation)."""
    if kind == "command_response":
        return "" if event.command_response.refused else event.command_response.invocation
    if kind == "command_invocation":
        return event.command_invocation.invocation
    return ""


def _partition_batches(rows: list[tuple[Any, tuple[Any, ...], int]]) -> list[Any]:
    """UNLOGGED batches of rows of ONE partition (one mutation each, no batch log)."""
    batches: list[Any] = []
    batch: Any = None
    size = 0
    for stmt, params, n in rows:
        if batch is None or size + n > _BATCH_BYTES:
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            batches.append(batch)
            size = 0
        batch.add(stmt, params)
        size += n
    return batches


class CassandraEventStore:
    """Implements :class:`fieldgate.cloud.store.events.EventStore` on Cassandra (one keyspace per tenant).

    ``tenants`` are migrated at :meth:`start`; any other tenant on its first write. Reads of a
    tenant whose keyspace does not exist return nothing and create nothing.
    """

    def __init__(
        self,
        session: CassandraSession,
        *,
        replication: int = 1,
        ttl_s_by_tenant: Mapping[str, int] | None = None,
        max_concurrency: int = 64,
        dedupe: Dedupe = "read",
        tenants: Iterable[str] = (),
        keyspace_prefix: str = KEYSPACE_PREFIX,
    ) -> None:
        self._replication = replication
        self._ttl: dict[str, int] = dict(ttl_s_by_tenant or {})
        self._max_concurrency = max_concurrency
        self._dedupe: Dedupe = dedupe
        self._initial_tenants = list(tenants)
        keyspace_name("x", keyspace_prefix)  # validates the prefix
        self._prefix = keyspace_prefix
        self._db = session  # shared with the process's other Cassandra stores, or its own
        self._ks = PreparedKeyspaces(
            session,
            "events",
            what="cassandra event store",
            tenant=(self._migrations, _statements),
            keyspace_prefix=keyspace_prefix,
            replication=replication,
            max_concurrency=max_concurrency,
        )
        self._tenants: dict[str, _Tenant] = {}  # the statements of PreparedKeyspaces, as fields

    # ------------------------------------------------------------------ lifecycle

    def _migrations(self, ks: str) -> list[Migration]:
        return _migrations(ks, self._replication)

    async def start(self) -> None:
        await self._ks.start()
        try:
            for tenant in self._initial_tenants:
                await self._open(tenant, create=True)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        self._tenants.clear()
        await self._ks.stop()

    async def ensure_tenant(self, tenant: str) -> None:
        """Create and migrate the tenant's keyspace (every event table) now."""
        await self._open(tenant, create=True)

    async def delete_tenant(self, tenant: str) -> bool:
        """Empty the event tables of the tenant's keyspace (every event); False if it had none.
        The keyspace itself, shared with the tenant's other stores, is the registry's to drop
        (a creation purges leftovers with this, after the registry made a fresh keyspace)."""
        self.forget_tenant(tenant)
        if not _TENANT_RE.match(tenant):
            return False
        ks = keyspace_name(tenant, self._prefix)
        return await self._ks.empty(tenant, table_names(self._migrations(ks), ks))

    def forget_tenant(self, tenant: str) -> None:
        """Forget the tenant's prepared statements (its keyspace was dropped)."""
        self._tenants.pop(tenant, None)
        self._ks.forget(tenant)

    def set_ttl(self, tenant: str, ttl_s: int | None) -> None:
        """Change a tenant's event TTL for later writes (e.g. from ZooKeeper settings)."""
        if ttl_s:
            self._ttl[tenant] = ttl_s
        else:
            self._ttl.pop(tenant, None)

    # ------------------------------------------------------------------ driver bridge

    async def _run(self, statement: Any, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Execute asynchronously, at most ``max_concurrency`` requests of this store in flight."""
        return await self._ks.run(statement, params)

    async def _gather(self, calls: Iterable[Any]) -> list[list[tuple[Any, ...]]]:
        return await self._db.gather(calls)

    # ------------------------------------------------------------------ schema

    async def _open(self, tenant: str, *, create: bool) -> _Tenant | None:
        """The tenant's prepared statements; creates and migrates the keyspace if ``create``."""
        ctx = self._tenants.get(tenant)
        if ctx is not None:
            return ctx
        ks = keyspace_name(tenant, self._prefix)  # validates the token
        statements = await self._ks.tenant(tenant, create=create)
        if statements is None:
            return None
        ctx = self._tenants[tenant] = _Tenant(keyspace=ks, **statements)
        return ctx

    # ------------------------------------------------------------------ writes

    async def add(self, tenant: str, events: Sequence[pb.Event]) -> list[pb.Event]:
        """Store ``events``; returns those not stored before, in input order (with ids).

        Raises InvalidRequest for an event of another tenant or without a device.
        """
        keyspace_name(tenant, self._prefix)  # validates the token
        if not events:
            return []
        batch: dict[bytes, pb.Event] = {}
        for raw in events:
            ev = completed_event(tenant, raw)
            batch.setdefault(event_key(tenant, ev.device, ev.alternate_id), ev)
        ctx = await self._open(tenant, create=True)
        assert ctx is not None
        ttl = self._ttl.get(tenant, 0)

        if self._dedupe == "read":
            found = await self._gather(self._run(ctx.sel_key_exists, (key,)) for key in batch)
            todo = {k: ev for (k, ev), rows in zip(batch.items(), found, strict=True) if not rows}
        else:
            todo = batch
        if not todo:
            return []

        writes: list[Any] = []
        days: set[tuple[str, str, int]] = set()
        assignment_days: set[tuple[str, str, int]] = set()
        # Keyed by (table, partition key...): rows of one partition go out as one batch.
        partitions: dict[tuple[str | int, ...], list[tuple[Any, tuple[Any, ...], int]]] = {}
        for key, ev in todo.items():
            kind = ev.WhichOneof("payload") or ""
            day = ev.event_time_ms // DAY_MS
            data = ev.SerializeToString()
            t, r = ev.event_time_ms, ev.received_time_ms
            partitions.setdefault(("d", ev.device, day), []).append(
                (ctx.ins_device, (ev.device, day, t, r, key, data, ttl), len(data))
            )
            partitions.setdefault(("dk", ev.device, kind, day), []).append(
                (ctx.ins_device_kind, (ev.device, kind, day, t, r, key, data, ttl), len(data))
            )
            days.add((ev.device, _ALL, day))
            days.add((ev.device, kind, day))
            if ev.assignment:
                a = ev.assignment
                partitions.setdefault(("a", a, day), []).append(
                    (ctx.ins_assignment, (a, day, t, r, key, data, ttl), len(data))
                )
                partitions.setdefault(("ak", a, kind, day), []).append(
                    (ctx.ins_assignment_kind, (a, kind, day, t, r, key, data, ttl), len(data))
                )
                assignment_days.add((a, _ALL, day))
                assignment_days.add((a, kind, day))
            invocation = _invocation_of(ev, kind)
            if invocation:
                writes.append(self._run(ctx.ins_invocation, (invocation, t, key, data, ttl)))
            if ev.id != key.hex():
                writes.append(self._run(ctx.ins_alias, (ev.id, key, ttl)))
        writes.extend(self._run(ctx.ins_day, (*d, ttl)) for d in days)
        writes.extend(self._run(ctx.ins_assignment_day, (*d, ttl)) for d in assignment_days)
        writes.extend(self._run(b) for rows in partitions.values() for b in _partition_batches(rows))
        await self._gather(writes)

        # The idempotency row last: once it exists, every other row of the event does.
        if self._dedupe == "read":
            await self._gather(
                self._run(ctx.ins_key, (k, ev.id, ev.device, ev.SerializeToString(), ttl))
                for k, ev in todo.items()
            )
            return list(todo.values())
        results = await self._gather(
            self._run(ctx.ins_key_lwt, (k, ev.id, ev.device, ev.SerializeToString(), ttl))
            for k, ev in todo.items()
        )
        return [ev for ev, rows in zip(todo.values(), results, strict=True) if rows and rows[0][0]]

    # ------------------------------------------------------------------ reads

    async def list_device_events(self, query: EventQuery) -> Page[pb.Event]:
        """A device's events, newest first (event time, received time, then id), with the total."""
        return await self._list_events("device", query.device, query)

    async def list_assignment_events(self, query: AssignmentEventQuery) -> Page[pb.Event]:
        """An assignment's events, newest first (event time, received time, then id), with the total."""
        return await self._list_events("assignment", query.assignment, query)

    async def _list_events(
        self, by: _By, subject: str, query: EventQuery | AssignmentEventQuery
    ) -> Page[pb.Event]:
        """Visits ``subject``'s day partitions from the newest: counts each (for ``total``), skips
        whole days that fall before the page, reads ``offset-in-day + page_size`` rows of the rest.
        """
        if query.page < 1 or not 1 <= query.page_size <= _MAX_PAGE_SIZE:
            raise InvalidRequest(f"page must be >= 1 and page_size in 1..{_MAX_PAGE_SIZE}")
        if query.kind is not None and query.kind not in EVENT_KINDS:
            raise InvalidRequest(f"unknown event kind {query.kind!r}; expected one of {sorted(EVENT_KINDS)}")
        empty: Page[pb.Event] = Page([], 0, query.page, query.page_size)
        if not _TENANT_RE.match(query.tenant) or not subject:
            return empty
        ctx = await self._open(query.tenant, create=False)
        if ctx is None:
            return empty
        lo = _MIN_BIGINT if query.since_ms is None else query.since_ms
        hi = _MAX_BIGINT if query.until_ms is None else query.until_ms
        if lo > hi:
            return empty
        lo_day = _MIN_INT if query.since_ms is None else max(_MIN_INT, lo // DAY_MS)
        hi_day = _MAX_INT if query.until_ms is None else min(_MAX_INT, hi // DAY_MS)
        stmts = ctx.lister(by)
        kind = query.kind or _ALL
        days = [int(r[0]) for r in await self._run(stmts.sel_days, (subject, kind, lo_day, hi_day))]

        def part(day: int) -> tuple[Any, ...]:
            return (subject, day) if query.kind is None else (subject, query.kind, day)

        count_stmt = stmts.count_all if query.kind is None else stmts.count_kind
        page_stmt = stmts.page_all if query.kind is None else stmts.page_kind
        counts = [
            int(rows[0][0]) if rows else 0
            for rows in await self._gather(self._run(count_stmt, (*part(d), lo, hi)) for d in days)
        ]
        total = sum(counts)
        skip = (query.page - 1) * query.page_size
        need = query.page_size
        items: list[pb.Event] = []
        for day, n in zip(days, counts, strict=True):
            if need <= 0:
                break
            if skip >= n:
                skip -= n
                continue
            rows = await self._run(page_stmt, (*part(day), lo, hi, skip + need))
            got = [pb.Event.FromString(r[0]) for r in rows[skip:]]
            items.extend(got)
            need -= len(got)
            skip = 0
        return Page(items, total, query.page, query.page_size)

    async def get_event(self, tenant: str, event_id: str) -> pb.Event | None:
        if not _TENANT_RE.match(tenant):
            return None
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return None
        if len(event_id) == 32:
            try:
                key = bytes.fromhex(event_id)
            except ValueError:
                key = b""
            if key:
                rows = await self._run(ctx.sel_key, (key,))
                if rows and rows[0][0] == event_id:
                    return pb.Event.FromString(rows[0][1])
        alias = await self._run(ctx.sel_alias, (event_id,))
        if not alias:
            return None
        rows = await self._run(ctx.sel_key, (alias[0][0],))
        return pb.Event.FromString(rows[0][1]) if rows else None

    async def events_for_invocation(
        self, tenant: str, invocation: str, limit: int = MAX_INVOCATION_EVENTS
    ) -> list[pb.Event]:
        """The command invocation and response events of ``invocation``, oldest first (one
        partition of ``events_by_invocation``)."""
        if not 1 <= limit <= _MAX_INT:
            raise InvalidRequest(f"limit must be between 1 and {_MAX_INT}, got {limit}")
        if not _TENANT_RE.match(tenant) or not invocation:
            return []
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return []
        rows = await self._run(ctx.sel_invocation, (invocation, limit))
        return [pb.Event.FromString(r[0]) for r in rows]

    async def keyspace_exists(self, tenant: str) -> bool:
        """Whether ``tenant`` has a keyspace (for isolation checks and operations)."""
        rows = await self._run(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
            (keyspace_name(tenant, self._prefix),),
        )
        return bool(rows)
