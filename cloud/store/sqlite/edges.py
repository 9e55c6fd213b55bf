"""SQLite edge directory: ``data_dir/edges.db``, one row per edge (see
:mod:`fieldgate.cloud.store.edges`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.sqlite_worker import SqliteWorker, Synchronous, transaction
from fieldgate.cloud.store.edges import (
    MAX_EDGES,
    EdgeRecord,
    EdgeReport,
    tenants_json,
    tenants_of,
    without_tenant,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS edges (
    edge_id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    version TEXT NOT NULL,
    connected_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    tenants TEXT NOT NULL,
    report TEXT
);
"""


class SqliteEdgeDirectory:
    """Implements :class:`fieldgate.cloud.store.edges.EdgeDirectory`."""

    def __init__(self, path: Path, *, synchronous: Synchronous = "NORMAL") -> None:
        # NORMAL: a lost last write after a power cut only makes a heartbeat older.
        self._path = path
        self._worker = SqliteWorker("edges", error=StoreError, synchronous=synchronous)

    async def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    def _conn(self) -> sqlite3.Connection:
        conn = self._worker.connect(self._path, _SCHEMA)
        assert conn is not None
        return conn

    async def put(self, record: EdgeRecord) -> None:
        def run() -> None:
            conn = self._conn()
            with transaction(conn):
                row = conn.execute(
                    "SELECT tenants, report FROM edges WHERE edge_id = ?", (record.edge_id,)
                ).fetchone()
                tenants = set(record.tenants)
                report = record.report.to_json() if record.report is not None else None
                if row is not None:
                    tenants |= tenants_of(row[0])
                    if report is None:
                        report = row[1]
                conn.execute(
                    "INSERT OR REPLACE INTO edges "
                    "(edge_id, session, version, connected_ms, last_seen_ms, tenants, report) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.edge_id,
                        record.session,
                        record.version,
                        record.connected_ms,
                        record.last_seen_ms,
                        tenants_json(tenants),
                        report,
                    ),
                )

        await self._worker.run(run)

    async def disconnected(self, edge_id: str, session: str, last_seen_ms: int) -> None:
        def run() -> None:
            self._conn().execute(
                "UPDATE edges SET connected_ms = 0, last_seen_ms = ? WHERE edge_id = ? AND session = ?",
                (last_seen_ms, edge_id, session),
            )

        await self._worker.run(run)

    async def list_edges(self) -> list[EdgeRecord]:
        def run() -> list[EdgeRecord]:
            if not self._path.exists():
                return []
            rows = self._conn().execute(
                "SELECT edge_id, session, version, connected_ms, last_seen_ms, tenants, report "
                "FROM edges ORDER BY edge_id LIMIT ?",
                (MAX_EDGES,),
            )
            return [
                EdgeRecord(
                    edge_id=e,
                    session=s,
                    version=v,
                    connected_ms=int(c),
                    last_seen_ms=int(ls),
                    tenants=tenants_of(t),
                    report=EdgeReport.from_json(r),
                )
                for e, s, v, c, ls, t, r in rows
            ]

        return await self._worker.run(run)

    # ------------------------------------------------------------------ tenants

    async def ensure_tenant(self, tenant: str) -> None:
        """Nothing to provision: ingest writes an edge's record when it sees the edge."""

    async def delete_tenant(self, tenant: str) -> bool:
        """Take ``tenant`` out of every edge's record; delete the records left with none."""

        def run() -> bool:
            if not self._path.exists():
                return False
            changed = False
            conn = self._conn()
            with transaction(conn):
                for edge_id, text in conn.execute("SELECT edge_id, tenants FROM edges").fetchall():
                    tenants = tenants_of(text)
                    if tenant not in tenants:
                        continue
                    changed = True
                    left = without_tenant(tenants, tenant)
                    if left is None:
                        conn.execute("DELETE FROM edges WHERE edge_id = ?", (edge_id,))
                    else:
                        conn.execute(
                            "UPDATE edges SET tenants = ? WHERE edge_id = ?", (tenants_json(left), edge_id)
                        )
            return changed

        return await self._worker.run(run)

    def forget_tenant(self, tenant: str) -> None:
        """Nothing cached per tenant."""
