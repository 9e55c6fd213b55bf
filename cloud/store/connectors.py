"""Durable connector definitions and dead letters: one protocol, SQLite and Cassandra.

Both keep a tenant's data with the tenant's other data and apart from other tenants':

* **SQLite** (``store.kind: sqlite``): ``data_dir/connectors/<tenant>.db``, tables
  ``connectors`` and ``dead_letters``;
* **Cassandra** (``store.kind: cassandra``): the tenant's keyspace (``<prefix>_<tenant>``),
  tables ``connectors`` and ``connector_dead_letters`` (partition = connector), created by
  this module's own schema component (``connectors``) so the event store and registry
  modules do not know of them. A new connector id is a lightweight transaction
  (``IF NOT EXISTS``), so two API replicas never both create it.

A dead letter is keyed by (connector, event id): dead-lettering the same event twice (a
replay, a retry after a crash) keeps one letter with the latest reason. ``redrive`` marks
letters for the connectors stage, which re-queues them (the API process does not deliver).

**Positions** (table ``connector_positions``): per connector and partition of the tenant's
``[persisted]`` topic, the next offset the connector has not finished with. A connector
created through the API gets its start there (the topic's end offsets at creation, plus
``ANY_PARTITION`` → 0 for partitions it has no row for), so it delivers every event stored
after its creation however late the stage notices it; the stage then keeps them up to date,
so a connector never re-sends what it finished because another one is behind. The stage's own
last committed offsets are kept under the owner ``STAGE_OWNER`` (not a connector id), to tell
a replay (the group's offsets moved back by an operator) from a restart.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.errors import Conflict, NotFound, StoreError
from fieldgate.cloud.sqlite_worker import SqliteWorker, transaction
from fieldgate.cloud.store import TenantOwned
from fieldgate.cloud.store.cassandra.keyspace import TenantKeyspaceStore
from fieldgate.cloud.store.validators import require_tenant, valid_tenant

#: Most dead letters one call returns or marks (the API pages through more with ``limit``).
MAX_DEAD_LETTERS = 10_000
#: The owner of the connectors stage's own committed offsets among the positions.
STAGE_OWNER = "~stage"
#: The partition of a start position that applies to every partition without a row.
ANY_PARTITION = -1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    connector: str
    event_id: str
    event: bytes  # the pb.Event, serialized
    reason: str
    attempts: int
    failed_ms: int
    redrive: bool = False


class ConnectorStore(TenantOwned, Protocol):
    """Connector definitions and dead letters; ``delete_tenant`` removes both."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def list_connectors(self, tenant: str) -> list[ConnectorSpec]: ...

    async def get(self, tenant: str, connector: str) -> ConnectorSpec | None: ...

    async def create(
        self, tenant: str, spec: ConnectorSpec, start: Mapping[int, int] | None = None
    ) -> ConnectorSpec:
        """Conflict if the id is taken. ``start``: where on the tenant's ``[persisted]`` topic
        the connector begins (``{partition: offset}``; partitions not listed begin at 0); None
        records no start, and the stage begins it wherever it is reading when it first sees it."""

    async def replace(self, tenant: str, spec: ConnectorSpec) -> ConnectorSpec:
        """NotFound if there is no such connector."""

    async def delete(self, tenant: str, connector: str) -> bool:
        """Delete the connector, its dead letters and positions; False if it did not exist."""

    async def positions(self, tenant: str) -> dict[str, dict[int, int]]:
        """Every owner's (connectors', ``STAGE_OWNER``'s) ``{partition: offset}``."""

    async def save_positions(self, tenant: str, owner: str, positions: Mapping[int, int]) -> None:
        """Store (overwrite) ``owner``'s offsets of the given partitions."""

    async def add_dead_letters(self, tenant: str, letters: Sequence[DeadLetter]) -> None:
        """Store (or overwrite, with redrive cleared) each letter."""

    async def list_dead_letters(self, tenant: str, connector: str, limit: int = 100) -> list[DeadLetter]: ...

    async def count_dead_letters(self, tenant: str, connector: str) -> int: ...

    async def request_redrive(
        self, tenant: str, connector: str, event_ids: Sequence[str] | None = None
    ) -> int:
        """Mark letters (all when ``event_ids`` is None, at most MAX_DEAD_LETTERS) for re-drive;
        the number marked."""

    async def redrive_batch(self, tenant: str, connector: str, limit: int) -> list[DeadLetter]:
        """Letters marked for re-drive, at most ``limit``."""

    async def remove_dead_letters(self, tenant: str, connector: str, event_ids: Sequence[str]) -> None: ...


def _check_limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_DEAD_LETTERS))


# ------------------------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS connectors (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    connector TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event BLOB NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_ms INTEGER NOT NULL,
    redrive INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (connector, event_id)
);
CREATE INDEX IF NOT EXISTS dead_letters_time ON dead_letters (connector, failed_ms);
CREATE TABLE IF NOT EXISTS connector_positions (
    owner TEXT NOT NULL,
    bus_partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (owner, bus_partition)
);
"""


def _start_rows(connector: str, start: Mapping[int, int]) -> list[tuple[str, int, int]]:
    rows = {ANY_PARTITION: 0, **{int(p): int(o) for p, o in start.items()}}
    return [(connector, p, max(0, o)) for p, o in sorted(rows.items())]


def _letter(row: Sequence[Any]) -> DeadLetter:
    return DeadLetter(
        connector=row[0],
        event_id=row[1],
        event=bytes(row[2]),
        reason=row[3],
        attempts=int(row[4]),
        failed_ms=int(row[5]),
        redrive=bool(row[6]),
    )


_LETTER_COLUMNS = "connector, event_id, event, reason, attempts, failed_ms, redrive"


class SqliteConnectorStore:
    """:class:`ConnectorStore` in ``<root>/<tenant>.db`` (one file per tenant)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._worker = SqliteWorker("connectors", error=StoreError)

    async def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    def _path(self, tenant: str) -> Path:
        return self.root / f"{require_tenant(tenant)}.db"

    def _conn(self, tenant: str, *, create: bool = True) -> sqlite3.Connection | None:
        return self._worker.connect(self._path(tenant), _SCHEMA, create=create)

    async def ensure_tenant(self, tenant: str) -> None:
        """Create ``<tenant>.db`` now (otherwise its first connector creates it)."""
        await self._worker.run(self._conn, tenant)

    async def delete_tenant(self, tenant: str) -> bool:
        """Delete ``<tenant>.db``: every connector of the tenant and every dead letter."""
        if not valid_tenant(tenant):
            return False
        return await self._worker.run(self._worker.remove, self._path(tenant))

    def forget_tenant(self, tenant: str) -> None:
        if valid_tenant(tenant):
            self._worker.close_soon(self._path(tenant))

    async def list_connectors(self, tenant: str) -> list[ConnectorSpec]:
        def run() -> list[str]:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return []
            return [r[0] for r in conn.execute("SELECT spec FROM connectors ORDER BY id")]

        return [ConnectorSpec.from_json(s) for s in await self._worker.run(run)]

    async def get(self, tenant: str, connector: str) -> ConnectorSpec | None:
        def run() -> str | None:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return None
            row = conn.execute("SELECT spec FROM connectors WHERE id = ?", (connector,)).fetchone()
            return None if row is None else str(row[0])

        text = await self._worker.run(run)
        return None if text is None else ConnectorSpec.from_json(text)

    async def create(
        self, tenant: str, spec: ConnectorSpec, start: Mapping[int, int] | None = None
    ) -> ConnectorSpec:
        def run() -> None:
            conn = self._conn(tenant)
            assert conn is not None
            with transaction(conn):
                try:
                    conn.execute(
                        "INSERT INTO connectors (id, spec, updated_ms) VALUES (?, ?, ?)",
                        (spec.id, spec.to_json(), spec.updated_ms),
                    )
                except sqlite3.IntegrityError as err:
                    raise Conflict(f"connector {spec.id!r} exists") from err
                conn.execute("DELETE FROM connector_positions WHERE owner = ?", (spec.id,))
                if start is not None:
                    conn.executemany(
                        "INSERT INTO connector_positions (owner, bus_partition, next_offset) VALUES (?, ?, ?)",
                        _start_rows(spec.id, start),
                    )

        await self._worker.run(run)
        return spec

    async def replace(self, tenant: str, spec: ConnectorSpec) -> ConnectorSpec:
        def run() -> None:
            conn = self._conn(tenant)
            assert conn is not None
            cur = conn.execute(
                "UPDATE connectors SET spec = ?, updated_ms = ? WHERE id = ?",
                (spec.to_json(), spec.updated_ms, spec.id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no connector {spec.id!r}")

        await self._worker.run(run)
        return spec

    async def delete(self, tenant: str, connector: str) -> bool:
        def run() -> bool:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return False
            with transaction(conn):
                cur = conn.execute("DELETE FROM connectors WHERE id = ?", (connector,))
                conn.execute("DELETE FROM dead_letters WHERE connector = ?", (connector,))
                conn.execute("DELETE FROM connector_positions WHERE owner = ?", (connector,))
            return cur.rowcount > 0

        return await self._worker.run(run)

    async def positions(self, tenant: str) -> dict[str, dict[int, int]]:
        def run() -> dict[str, dict[int, int]]:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return {}
            out: dict[str, dict[int, int]] = {}
            for owner, partition, offset in conn.execute(
                "SELECT owner, bus_partition, next_offset FROM connector_positions"
            ):
                out.setdefault(str(owner), {})[int(partition)] = int(offset)
            return out

        return await self._worker.run(run)

    async def save_positions(self, tenant: str, owner: str, positions: Mapping[int, int]) -> None:
        if not positions:
            return

        def run() -> None:
            conn = self._conn(tenant)
            assert conn is not None
            with transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO connector_positions (owner, bus_partition, next_offset) VALUES (?, ?, ?)",
                    [(owner, int(p), int(o)) for p, o in positions.items()],
                )

        await self._worker.run(run)

    async def add_dead_letters(self, tenant: str, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return

        def run() -> None:
            conn = self._conn(tenant)
            assert conn is not None
            with transaction(conn):
                conn.executemany(
                    f"INSERT OR REPLACE INTO dead_letters ({_LETTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0)",
                    [(d.connector, d.event_id, d.event, d.reason, d.attempts, d.failed_ms) for d in letters],
                )

        await self._worker.run(run)

    async def list_dead_letters(self, tenant: str, connector: str, limit: int = 100) -> list[DeadLetter]:
        def run() -> list[DeadLetter]:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return []
            rows = conn.execute(
                f"SELECT {_LETTER_COLUMNS} FROM dead_letters WHERE connector = ? "
                "ORDER BY failed_ms, event_id LIMIT ?",
                (connector, _check_limit(limit)),
            )
            return [_letter(r) for r in rows]

        return await self._worker.run(run)

    async def count_dead_letters(self, tenant: str, connector: str) -> int:
        def run() -> int:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return 0
            row = conn.execute(
                "SELECT COUNT(*) FROM dead_letters WHERE connector = ?", (connector,)
            ).fetchone()
            return int(row[0])

        return await self._worker.run(run)

    async def request_redrive(
        self, tenant: str, connector: str, event_ids: Sequence[str] | None = None
    ) -> int:
        def run() -> int:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return 0
            with transaction(conn):
                if event_ids is None:
                    cur = conn.execute(
                        "UPDATE dead_letters SET redrive = 1 WHERE connector = ? AND redrive = 0",
                        (connector,),
                    )
                    return cur.rowcount
                total = 0
                for eid in list(event_ids)[:MAX_DEAD_LETTERS]:
                    cur = conn.execute(
                        "UPDATE dead_letters SET redrive = 1 WHERE connector = ? AND event_id = ?",
                        (connector, eid),
                    )
                    total += cur.rowcount
                return total

        return await self._worker.run(run)

    async def redrive_batch(self, tenant: str, connector: str, limit: int) -> list[DeadLetter]:
        def run() -> list[DeadLetter]:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return []
            rows = conn.execute(
                f"SELECT {_LETTER_COLUMNS} FROM dead_letters WHERE connector = ? AND redrive = 1 "
                "ORDER BY failed_ms, event_id LIMIT ?",
                (connector, _check_limit(limit)),
            )
            return [_letter(r) for r in rows]

        return await self._worker.run(run)

    async def remove_dead_letters(self, tenant: str, connector: str, event_ids: Sequence[str]) -> None:
        if not event_ids:
            return

        def run() -> None:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return
            with transaction(conn):
                conn.executemany(
                    "DELETE FROM dead_letters WHERE connector = ? AND event_id = ?",
                    [(connector, eid) for eid in event_ids],
                )

        await self._worker.run(run)


# ---------------------------------------------------------------------------- Cassandra


def _cassandra_migrations(ks: str) -> list[tuple[int, list[str]]]:
    return [
        (
            1,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.connectors (id text PRIMARY KEY, spec text, updated_ms bigint)",
                f"CREATE TABLE IF NOT EXISTS {ks}.connector_dead_letters ("
                " connector text, event_id text, event blob, reason text, attempts int, failed_ms bigint,"
                " redrive boolean, PRIMARY KEY ((connector), event_id))",
            ],
        ),
        (
            2,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.connector_positions ("
                " owner text, bus_partition int, next_offset bigint, PRIMARY KEY ((owner), bus_partition))",
            ],
        ),
    ]


class CassandraConnectorStore(TenantKeyspaceStore):
    """:class:`ConnectorStore` in each tenant's keyspace (see the module docstring)."""

    component = "connectors"
    migrations = staticmethod(_cassandra_migrations)

    async def list_connectors(self, tenant: str) -> list[ConnectorSpec]:
        rows = await self._run(tenant, "SELECT spec FROM {ks}.connectors LIMIT 10000")
        return sorted((ConnectorSpec.from_json(r[0]) for r in rows), key=lambda s: s.id)

    async def get(self, tenant: str, connector: str) -> ConnectorSpec | None:
        rows = await self._run(tenant, "SELECT spec FROM {ks}.connectors WHERE id = %s", (connector,))
        return ConnectorSpec.from_json(rows[0][0]) if rows else None

    async def create(
        self, tenant: str, spec: ConnectorSpec, start: Mapping[int, int] | None = None
    ) -> ConnectorSpec:
        # The start goes in first: the stage must never see the connector without it. Two
        # tables cannot share one lightweight transaction; a create that loses the race for
        # the id to another one of the same moment rewrites that one's start with its own
        # (the same point, give or take the milliseconds between them).
        if await self.get(tenant, spec.id) is not None:
            raise Conflict(f"connector {spec.id!r} exists")
        await self._run(tenant, "DELETE FROM {ks}.connector_positions WHERE owner = %s", (spec.id,))
        if start is not None:
            await self._put_positions(tenant, _start_rows(spec.id, start))
        rows = await self._run(
            tenant,
            "INSERT INTO {ks}.connectors (id, spec, updated_ms) VALUES (%s, %s, %s) IF NOT EXISTS",
            (spec.id, spec.to_json(), spec.updated_ms),
        )
        if not rows or not rows[0][0]:
            raise Conflict(f"connector {spec.id!r} exists")
        return spec

    async def _put_positions(self, tenant: str, rows: Sequence[tuple[str, int, int]]) -> None:
        await asyncio.gather(
            *(
                self._run(
                    tenant,
                    "INSERT INTO {ks}.connector_positions (owner, bus_partition, next_offset) VALUES (%s, %s, %s)",
                    row,
                )
                for row in rows
            )
        )

    async def positions(self, tenant: str) -> dict[str, dict[int, int]]:
        rows = await self._run(
            tenant, "SELECT owner, bus_partition, next_offset FROM {ks}.connector_positions LIMIT 1000000"
        )
        out: dict[str, dict[int, int]] = {}
        for owner, partition, offset in rows:
            out.setdefault(str(owner), {})[int(partition)] = int(offset)
        return out

    async def save_positions(self, tenant: str, owner: str, positions: Mapping[int, int]) -> None:
        await self._put_positions(tenant, [(owner, int(p), int(o)) for p, o in positions.items()])

    async def replace(self, tenant: str, spec: ConnectorSpec) -> ConnectorSpec:
        rows = await self._run(
            tenant,
            "UPDATE {ks}.connectors SET spec = %s, updated_ms = %s WHERE id = %s IF EXISTS",
            (spec.to_json(), spec.updated_ms, spec.id),
        )
        if not rows or not rows[0][0]:
            raise NotFound(f"no connector {spec.id!r}")
        return spec

    async def delete(self, tenant: str, connector: str) -> bool:
        rows = await self._run(tenant, "DELETE FROM {ks}.connectors WHERE id = %s IF EXISTS", (connector,))
        await self._run(tenant, "DELETE FROM {ks}.connector_dead_letters WHERE connector = %s", (connector,))
        await self._run(tenant, "DELETE FROM {ks}.connector_positions WHERE owner = %s", (connector,))
        return bool(rows and rows[0][0])

    async def add_dead_letters(self, tenant: str, letters: Sequence[DeadLetter]) -> None:
        await asyncio.gather(
            *(
                self._run(
                    tenant,
                    "INSERT INTO {ks}.connector_dead_letters"
                    " (connector, event_id, event, reason, attempts, failed_ms, redrive)"
                    " VALUES (%s, %s, %s, %s, %s, %s, false)",
                    (d.connector, d.event_id, d.event, d.reason, d.attempts, d.failed_ms),
                )
                for d in letters
            )
        )

    async def _letters(self, tenant: str, connector: str) -> list[DeadLetter]:
        rows = await self._run(
            tenant,
            "SELECT connector, event_id, event, reason, attempts, failed_ms, redrive"
            " FROM {ks}.connector_dead_letters WHERE connector = %s LIMIT %s",
            (connector, MAX_DEAD_LETTERS),
        )
        return sorted((_letter(r) for r in rows), key=lambda d: (d.failed_ms, d.event_id))

    async def list_dead_letters(self, tenant: str, connector: str, limit: int = 100) -> list[DeadLetter]:
        return (await self._letters(tenant, connector))[: _check_limit(limit)]

    async def count_dead_letters(self, tenant: str, connector: str) -> int:
        rows = await self._run(
            tenant, "SELECT COUNT(*) FROM {ks}.connector_dead_letters WHERE connector = %s", (connector,)
        )
        return int(rows[0][0]) if rows else 0

    async def request_redrive(
        self, tenant: str, connector: str, event_ids: Sequence[str] | None = None
    ) -> int:
        letters = await self._letters(tenant, connector)
        wanted = None if event_ids is None else set(event_ids)
        chosen = [d.event_id for d in letters if wanted is None or d.event_id in wanted]
        # IF EXISTS: a letter removed meanwhile (delivered by a re-drive) is not re-created.
        results = await asyncio.gather(
            *(
                self._run(
                    tenant,
                    "UPDATE {ks}.connector_dead_letters SET redrive = true WHERE connector = %s"
                    " AND event_id = %s IF EXISTS",
                    (connector, eid),
                )
                for eid in chosen
            )
        )
        return sum(1 for rows in results if rows and rows[0][0])

    async def redrive_batch(self, tenant: str, connector: str, limit: int) -> list[DeadLetter]:
        return [d for d in await self._letters(tenant, connector) if d.redrive][: _check_limit(limit)]

    async def remove_dead_letters(self, tenant: str, connector: str, event_ids: Sequence[str]) -> None:
        await asyncio.gather(
            *(
                self._run(
                    tenant,
                    "DELETE FROM {ks}.connector_dead_letters WHERE connector = %s AND event_id = %s",
                    (connector, eid),
                )
                for eid in event_ids
            )
        )
