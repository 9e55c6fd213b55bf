"""SQLite event store: one database per tenant, ``<data_dir>/events-<tenant>.db``.

The embedded implementation of :class:`fieldgate.cloud.store.events.EventStore` (Cassandra takes
its place later). A tenant's events live in their own file, so no query can reach another
tenant's rows; a read for a tenant that never stored anything creates no file.

Each event is kept whole as its serialized ``pb.Event`` beside the columns that queries need:
``id``, ``device``, ``alternate_id``, ``kind`` (the payload oneof name), ``event_time_ms``,
``received_time_ms``, ``assignment`` and ``invocation`` (set for command invocations and
for command responses that inbound processing linked; a refused one is stored unfiled).

Idempotency: every row carries ``key``, the 16 bytes of
``uuid5(NAMESPACE_URL, "<tenant>/<device>/<alternate_id>")`` — the contract's event id, from
:mod:`fieldgate.cloud.ids` like the id inbound processing stamps — under
a UNIQUE index, so :meth:`add` stores an event at most once per (device, alternate id) and
returns only the events that were new (what the persistence stage forwards downstream).
An event without an id gets that derived id. Events whose id is something else (command
invocation events carry the invocation id) are also listed in the small ``event_ids`` table
so that :meth:`get_event` finds them. One random-key index, not two, and a 16-byte blob rather
than 32 hex characters: random B-tree inserts are what limits SQLite's insert rate here
(raw inserts into a 200k-row table at 1000 per transaction, 2-core machine: two uuid text
indexes ~30k events/s, this layout ~90k; through :meth:`add` ~50-70k events/s). Events
without an alternate id (the edge should never send one) use their id, or a fresh uuid4.

:meth:`add` tries the whole batch with one ``executemany``; only when some rows turn out to be
duplicates (a retry) does it roll back to a savepoint and insert row by row to learn which.

Queries go through ``(device, event_time_ms, received_time_ms)`` and, for the kinds other
than measurements, ``(device, kind, event_time_ms, received_time_ms)``; both grow at their right
end as time passes. Measurements — the bulk — stay out of the kind index (a partial index): a
query for measurements walks the device's time index, where nearly every row matches anyway.
An assignment's events use the same pair of indexes on ``assignment`` instead of ``device``
(partial: only events that carry an assignment); an invocation's events use a partial index on
``invocation``. Indexes are created with ``IF NOT EXISTS`` when a database is opened, so a
database written by an older version gains the assignment indexes (built from its rows) on
first open.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from fieldgate.cloud.errors import InvalidRequest, StoreError
from fieldgate.cloud.ids import completed_event, event_id, event_key
from fieldgate.cloud.sqlite_worker import SqliteWorker, Synchronous, transaction
from fieldgate.cloud.store import Page
from fieldgate.cloud.store.events import MAX_INVOCATION_EVENTS, AssignmentEventQuery, EventQuery
from fieldgate.cloud.store.validators import check_page, require_tenant, valid_tenant
from fieldgate.v1 import events_pb2 as pb

# event_id/event_key are re-exported: callers of the store use them to predict ids.
__all__ = ["EVENT_KINDS", "SqliteEventStore", "event_id", "event_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,
    id TEXT NOT NULL,
    device TEXT NOT NULL,
    alternate_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    event_time_ms INTEGER NOT NULL,
    received_time_ms INTEGER NOT NULL,
    assignment TEXT NOT NULL,
    invocation TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_device_time
    ON events (device, event_time_ms, received_time_ms);
CREATE INDEX IF NOT EXISTS events_by_device_rare_kind_time
    ON events (device, kind, event_time_ms, received_time_ms) WHERE kind != 'measurement';
CREATE INDEX IF NOT EXISTS events_by_invocation ON events (invocation) WHERE invocation != '';
CREATE INDEX IF NOT EXISTS events_by_assignment_time
    ON events (assignment, event_time_ms, received_time_ms) WHERE assignment != '';
CREATE INDEX IF NOT EXISTS events_by_assignment_rare_kind_time
    ON events (assignment, kind, event_time_ms, received_time_ms)
    WHERE assignment != '' AND kind != 'measurement';
CREATE TABLE IF NOT EXISTS event_ids (
    id TEXT PRIMARY KEY,
    key BLOB NOT NULL
) WITHOUT ROWID;
"""

_INSERT = (
    "INSERT OR IGNORE INTO events (key, id, device, alternate_id, kind, event_time_ms, received_time_ms,"
    " assignment, invocation, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ALIAS = "INSERT OR IGNORE INTO event_ids (id, key) VALUES (?, ?)"

#: Valid values of ``EventQuery.kind``: the names of pb.Event's payload fields.
EVENT_KINDS: frozenset[str] = frozenset(f.name for f in pb.Event.DESCRIPTOR.oneofs_by_name["payload"].fields)


def _invocation_of(event: pb.Event, kind: str) -> str:
    """The invocation the event is filed under: a command_invocation's own, a command_response's
    unless inbound processing refused it (``refused``: not its device's invocation)."""
    if kind == "command_response":
        return "" if event.command_response.refused else event.command_response.invocation
    if kind == "command_invocation":
        return event.command_invocation.invocation
    return ""


_Row = tuple[bytes, str, str, str, str, int, int, str, str, bytes]


class SqliteEventStore:
    """Implements :class:`fieldgate.cloud.store.events.EventStore`: ``<data_dir>/events-<tenant>.db``.

    Since/until filters are inclusive bounds on ``event_time_ms``; order is newest first by
    event time, then received time, then arrival.
    """

    def __init__(self, data_dir: Path, *, synchronous: Synchronous = "FULL", cache_kib: int = 65536) -> None:
        self._data_dir = data_dir
        # Page cache per tenant database: the uniqueness index takes random inserts.
        self._cache_kib = cache_kib
        self._worker = SqliteWorker("event-store", error=StoreError, synchronous=synchronous)

    async def start(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    def _path(self, tenant: str) -> Path:
        return self._data_dir / f"events-{tenant}.db"

    def _conn(self, tenant: str, *, create: bool) -> sqlite3.Connection | None:
        return self._worker.connect(
            self._path(tenant), _SCHEMA, create=create, cache_kib=self._cache_kib, wal_autocheckpoint=10000
        )

    # ------------------------------------------------------------------ tenants

    async def ensure_tenant(self, tenant: str) -> None:
        """Create ``events-<tenant>.db`` now (it is otherwise created by the first event)."""
        require_tenant(tenant)
        await self._worker.run(self._conn, tenant, create=True)

    async def delete_tenant(self, tenant: str) -> bool:
        """Delete ``events-<tenant>.db`` (every event of the tenant); False if it did not exist."""
        if not valid_tenant(tenant):
            return False
        return await self._worker.run(self._worker.remove, self._path(tenant))

    def forget_tenant(self, tenant: str) -> None:
        """Close the connection to the tenant's file (another instance deleted it)."""
        if valid_tenant(tenant):
            self._worker.close_soon(self._path(tenant))

    # ------------------------------------------------------------------ writes

    async def add(self, tenant: str, events: Sequence[pb.Event]) -> list[pb.Event]:
        """Store ``events`` in one transaction; returns those not stored before (with ids).

        Raises InvalidRequest for an event of another tenant or without a device.
        """
        require_tenant(tenant)
        if not events:
            return []
        return await self._worker.run(self._add, tenant, events)

    def _add(self, tenant: str, events: Sequence[pb.Event]) -> list[pb.Event]:
        prepared: list[tuple[pb.Event, _Row]] = []
        for event in events:
            event = completed_event(tenant, event)
            key = event_key(tenant, event.device, event.alternate_id)
            kind: str = event.WhichOneof("payload") or ""
            row = (
                key,
                event.id,
                event.device,
                event.alternate_id,
                kind,
                event.event_time_ms,
                event.received_time_ms,
                event.assignment,
                _invocation_of(event, kind),
                event.SerializeToString(),
            )
            prepared.append((event, row))
        conn = self._conn(tenant, create=True)
        assert conn is not None
        rows = [row for _, row in prepared]
        with transaction(conn):
            # Fast path: one executemany; when every row was new (the usual case) that is all.
            conn.execute("SAVEPOINT batch")
            before = conn.total_changes
            conn.executemany(_INSERT, rows)
            if conn.total_changes - before == len(rows):
                stored = prepared
            else:
                # Some were stored before (a retry): undo, then insert one by one to learn which.
                conn.execute("ROLLBACK TO batch")
                stored = [(ev, row) for ev, row in prepared if conn.execute(_INSERT, row).rowcount == 1]
            conn.execute("RELEASE batch")
            aliases = [(ev.id, row[0]) for ev, row in stored if ev.id != row[0].hex()]
            if aliases:
                conn.executemany(_INSERT_ALIAS, aliases)
        return [ev for ev, _ in stored]

    # ------------------------------------------------------------------ reads

    async def list_device_events(self, query: EventQuery) -> Page[pb.Event]:
        """A device's events, newest first, one page with the total count."""
        return await self._list_events("device", query)

    async def list_assignment_events(self, query: AssignmentEventQuery) -> Page[pb.Event]:
        """An assignment's events, newest first, one page with the total count."""
        return await self._list_events("assignment", query)

    async def _list_events(
        self, column: Literal["device", "assignment"], query: EventQuery | AssignmentEventQuery
    ) -> Page[pb.Event]:
        limit, offset = check_page(query.page, query.page_size)
        if query.kind is not None and query.kind not in EVENT_KINDS:
            raise InvalidRequest(f"unknown event kind {query.kind!r}; expected one of {sorted(EVENT_KINDS)}")
        subject = query.device if isinstance(query, EventQuery) else query.assignment
        if not valid_tenant(query.tenant) or not subject:
            return Page([], 0, query.page, query.page_size)
        items, total = await self._worker.run(self._list, column, subject, query, limit, offset)
        return Page(items, total, query.page, query.page_size)

    def _list(
        self,
        column: Literal["device", "assignment"],
        subject: str,
        query: EventQuery | AssignmentEventQuery,
        limit: int,
        offset: int,
    ) -> tuple[list[pb.Event], int]:
        conn = self._conn(query.tenant, create=False)
        if conn is None:
            return [], 0
        where = [f"{column} = ?"]
        args: list[str | int] = [subject]
        if column == "assignment":
            # Repeats the partial indexes' condition so that the planner may use them.
            where.append("assignment != ''")
        if query.kind is not None:
            where.append("kind = ?")
            args.append(query.kind)
            if query.kind != "measurement":
                where.append("kind != 'measurement'")
        if query.since_ms is not None:
            where.append("event_time_ms >= ?")
            args.append(query.since_ms)
        if query.until_ms is not None:
            where.append("event_time_ms <= ?")
            args.append(query.until_ms)
        cond = " AND ".join(where)
        (total,) = conn.execute(f"SELECT count(*) FROM events WHERE {cond}", args).fetchone()
        rows = conn.execute(
            f"SELECT data FROM events WHERE {cond}"
            " ORDER BY event_time_ms DESC, received_time_ms DESC, seq DESC LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return [pb.Event.FromString(data) for (data,) in rows], int(total)

    async def get_event(self, tenant: str, event_id: str) -> pb.Event | None:
        if not valid_tenant(tenant):
            return None
        return await self._worker.run(self._get, tenant, event_id)

    def _get(self, tenant: str, event_id: str) -> pb.Event | None:
        conn = self._conn(tenant, create=False)
        if conn is None:
            return None
        key: bytes | None = None
        try:
            key = uuid.UUID(hex=event_id).bytes
        except ValueError:
            key = None
        row = None
        if key is not None and len(event_id) == 32:
            row = conn.execute("SELECT data FROM events WHERE key = ? AND id = ?", (key, event_id)).fetchone()
        if row is None:
            row = conn.execute(
                "SELECT e.data FROM event_ids AS a JOIN events AS e ON e.key = a.key WHERE a.id = ?",
                (event_id,),
            ).fetchone()
        return None if row is None else pb.Event.FromString(row[0])

    async def events_for_invocation(
        self, tenant: str, invocation: str, limit: int = MAX_INVOCATION_EVENTS
    ) -> list[pb.Event]:
        """The command invocation and response events linked to ``invocation``, oldest first."""
        if limit < 1:
            raise InvalidRequest(f"limit must be >= 1, got {limit}")
        if not valid_tenant(tenant) or not invocation:
            return []
        return await self._worker.run(self._for_invocation, tenant, invocation, limit)

    def _for_invocation(self, tenant: str, invocation: str, limit: int) -> list[pb.Event]:
        conn = self._conn(tenant, create=False)
        if conn is None:
            return []
        # ``invocation != ''`` repeats the partial index's condition so that the planner uses it.
        rows = conn.execute(
            "SELECT data FROM events WHERE invocation = ? AND invocation != ''"
            " ORDER BY event_time_ms, seq LIMIT ?",
            (invocation, limit),
        ).fetchall()
        return [pb.Event.FromString(data) for (data,) in rows]
