"""SQLite invocation store: the row primitives of
:class:`~fieldgate.cloud.store.invocations.InvocationStoreBase` in ``invocations-<tenant>.db``
under ``data_dir`` (one file per tenant, created by its first invocation).

Each primitive is one transaction on the backend's single worker thread; a move is
``UPDATE ... WHERE status = <read>``, so two processes sharing the files move an invocation
once (the other re-reads and decides again), and a sweep of due invocations is one transaction
per tenant.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.sqlite_worker import SqliteWorker, Synchronous, transaction
from fieldgate.cloud.store.invocations import QUEUED, InvocationStoreBase, Row
from fieldgate.cloud.store.validators import require_tenant, valid_tenant
from fieldgate.v1 import services_pb2 as svc

_SCHEMA = """
CREATE TABLE IF NOT EXISTS invocations (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    device TEXT NOT NULL,
    status INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS invocations_by_device_status ON invocations (device, status, seq);
CREATE INDEX IF NOT EXISTS invocations_by_status_expiry ON invocations (status, expires_ms);
"""
_PREFIX, _SUFFIX = "invocations-", ".db"


def _rows(rows: list[tuple[bytes]]) -> list[Row]:
    out = []
    for (data,) in rows:
        inv = svc.InvocationState()
        inv.ParseFromString(data)
        out.append(Row(inv))
    return out


class SqliteInvocationStore(InvocationStoreBase):
    """Implements :class:`fieldgate.cloud.store.invocations.InvocationStore` on SQLite files."""

    def __init__(self, data_dir: Path, *, synchronous: Synchronous = "FULL") -> None:
        self._data_dir = data_dir
        self._worker = SqliteWorker("invocations", error=StoreError, synchronous=synchronous)

    async def start(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    def _path(self, tenant: str) -> Path:
        return self._data_dir / f"{_PREFIX}{tenant}{_SUFFIX}"

    def _db(self, tenant: str, *, create: bool = False) -> sqlite3.Connection | None:
        if not valid_tenant(tenant):
            return None
        return self._worker.connect(self._path(tenant), _SCHEMA, create=create)

    # --- tenant lifecycle ----------------------------------------------------------------------

    async def ensure_tenant(self, tenant: str) -> None:
        """Create ``invocations-<tenant>.db`` now."""
        require_tenant(tenant)
        await self._worker.run(self._db, tenant, create=True)

    async def delete_tenant(self, tenant: str) -> bool:
        """Delete ``invocations-<tenant>.db``; False if it did not exist."""
        if not valid_tenant(tenant):
            return False
        return await self._worker.run(self._worker.remove, self._path(tenant))

    def forget_tenant(self, tenant: str) -> None:
        """Close the connection to the tenant's file (another instance deleted it)."""
        if valid_tenant(tenant):
            self._worker.close_soon(self._path(tenant))

    # --- primitives (worker thread) ------------------------------------------------------------

    async def _insert(self, inv: svc.InvocationState) -> bool:
        def run() -> bool:
            conn = self._db(inv.tenant, create=True)
            assert conn is not None
            with transaction(conn):
                return bool(
                    conn.execute(
                        "INSERT OR IGNORE INTO invocations (id, device, status, expires_ms, data)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (inv.id, inv.device, int(inv.status), inv.expires_ms, inv.SerializeToString()),
                    ).rowcount
                )

        return await self._worker.run(run)

    async def _read(self, tenant: str, invocation_id: str) -> Row | None:
        found = await self._select(tenant, "WHERE id = ?", (invocation_id,))
        return found[0] if found else None

    async def _set_if(self, tenant: str, moves: Sequence[tuple[Row, svc.InvocationState]]) -> list[bool]:
        def run() -> list[bool]:
            conn = self._db(tenant)
            if conn is None:
                return [False] * len(moves)
            with transaction(conn):
                return [
                    conn.execute(
                        "UPDATE invocations SET status = ?, data = ? WHERE id = ? AND status = ?",
                        (int(new.status), new.SerializeToString(), new.id, int(row.state.status)),
                    ).rowcount
                    > 0
                    for row, new in moves
                ]

        return await self._worker.run(run)

    async def _queued(self, tenant: str, device: str | None) -> list[Row]:
        if device is None:
            return await self._select(tenant, "WHERE status = ? ORDER BY seq", (int(QUEUED),))
        return await self._select(
            tenant, "WHERE device = ? AND status = ? ORDER BY seq", (device, int(QUEUED))
        )

    async def _due(self, tenant: str, now: int) -> list[Row]:
        where = "WHERE status = ? AND expires_ms > 0 AND expires_ms <= ? ORDER BY seq"
        return await self._select(tenant, where, (int(QUEUED), now))

    async def _tenants(self) -> list[str]:
        def run() -> list[str]:
            names = [p.name for p in self._data_dir.glob(f"{_PREFIX}*{_SUFFIX}")]
            return sorted(n[len(_PREFIX) : -len(_SUFFIX)] for n in names)

        return await self._worker.run(run)

    async def _select(self, tenant: str, where: str, params: tuple[str | int, ...]) -> list[Row]:
        def run() -> list[Row]:
            conn = self._db(tenant)
            if conn is None:
                return []
            return _rows(conn.execute(f"SELECT data FROM invocations {where}", params).fetchall())

        return await self._worker.run(run)
