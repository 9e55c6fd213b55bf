"""The SQLite connector store: ``data_dir/connectors/<tenant>.db`` (the protocol and what both
backends share in :mod:`fieldgate.cloud.store.connectors`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.errors import Conflict, NotFound
from fieldgate.cloud.sqlite_worker import transaction
from fieldgate.cloud.store.connectors import (
    LETTER_COLUMNS,
    MAX_DEAD_LETTERS,
    DeadLetter,
    check_limit,
    letter_from_row,
    start_rows,
)
from fieldgate.cloud.store.sqlite.files import TenantFileStore

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


class SqliteConnectorStore(TenantFileStore):
    """:class:`ConnectorStore` in ``<root>/<tenant>.db`` (one file per tenant)."""

    name = "connectors"
    schema = _SCHEMA

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
                        start_rows(spec.id, start),
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
                    f"INSERT OR REPLACE INTO dead_letters ({LETTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0)",
                    [(d.connector, d.event_id, d.event, d.reason, d.attempts, d.failed_ms) for d in letters],
                )

        await self._worker.run(run)

    async def list_dead_letters(self, tenant: str, connector: str, limit: int = 100) -> list[DeadLetter]:
        def run() -> list[DeadLetter]:
            conn = self._conn(tenant, create=False)
            if conn is None:
                return []
            rows = conn.execute(
                f"SELECT {LETTER_COLUMNS} FROM dead_letters WHERE connector = ? "
                "ORDER BY failed_ms, event_id LIMIT ?",
                (connector, check_limit(limit)),
            )
            return [letter_from_row(r) for r in rows]

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
                f"SELECT {LETTER_COLUMNS} FROM dead_letters WHERE connector = ? AND redrive = 1 "
                "ORDER BY failed_ms, event_id LIMIT ?",
                (connector, check_limit(limit)),
            )
            return [letter_from_row(r) for r in rows]

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
