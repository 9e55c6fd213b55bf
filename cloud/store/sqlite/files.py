"""A base for SQLite stores that keep each tenant's tables in a file of its own,
``<root>/<file_prefix><tenant>.db`` (batch operations, connectors, device states), all served
by one :class:`~fieldgate.cloud.sqlite_worker.SqliteWorker` thread.

The tenant lifecycle (:class:`~fieldgate.cloud.store.TenantOwned`) is here once:
``ensure_tenant`` creates the file, ``delete_tenant`` removes it (every row of the tenant) and
``forget_tenant`` closes this instance's connection to a file another instance deleted.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.sqlite_worker import SqliteWorker, Synchronous
from fieldgate.cloud.store.validators import require_tenant, valid_tenant


class TenantFileStore:
    """Subclasses name their worker thread (``name``) and give their tables' ``schema``
    (``CREATE … IF NOT EXISTS`` statements, applied when a file is opened) and, if their files
    share a folder with others, the ``file_prefix`` of their names."""

    name: str
    schema: str
    file_prefix: str = ""

    def __init__(self, root: Path, *, synchronous: Synchronous = "FULL") -> None:
        self.root = root
        self._worker = SqliteWorker(self.name, error=StoreError, synchronous=synchronous)

    async def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    def _path(self, tenant: str) -> Path:
        return self.root / f"{self.file_prefix}{require_tenant(tenant)}.db"

    def _conn(self, tenant: str, *, create: bool = True) -> sqlite3.Connection | None:
        """The tenant's connection (worker thread only); None if ``create`` is false and the
        tenant has no file (a read creates nothing)."""
        return self._worker.connect(self._path(tenant), self.schema, create=create)

    def _must(self, tenant: str) -> sqlite3.Connection:
        """The tenant's connection, its file created if need be (worker thread only)."""
        conn = self._conn(tenant)
        assert conn is not None
        return conn

    async def ensure_tenant(self, tenant: str) -> None:
        """Create the tenant's file now (otherwise the tenant's first write creates it)."""
        require_tenant(tenant)
        await self._worker.run(self._conn, tenant)

    async def delete_tenant(self, tenant: str) -> bool:
        """Delete the tenant's file (every row of the tenant); False if there was none."""
        if not valid_tenant(tenant):
            return False
        return await self._worker.run(self._worker.remove, self._path(tenant))

    def forget_tenant(self, tenant: str) -> None:
        """Close this instance's connection to the tenant's file (another instance deleted it)."""
        if valid_tenant(tenant):
            self._worker.close_soon(self._path(tenant))
