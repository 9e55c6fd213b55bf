"""Site records on SQLite: one file per tenant, ``<data_dir>/site-<tenant>.db``.

Every primitive of :class:`~fieldgate.cloud.store.site.SiteStoreBase` is one transaction on the
backend's single worker thread, so the reference counts and the deletes ``IF`` unreferenced
never interleave within the process that owns the files.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.sqlite_worker import SqliteWorker, Synchronous, transaction
from fieldgate.cloud.store.site import MAX_RECORDS, DeleteOutcome, GroupElement, Kind, SiteStoreBase
from fieldgate.cloud.store.validators import require_tenant

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    token TEXT NOT NULL,
    data TEXT NOT NULL,
    refs INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, token)
);
CREATE TABLE IF NOT EXISTS refs (
    target_kind TEXT NOT NULL,
    target TEXT NOT NULL,
    src_kind TEXT NOT NULL,
    src TEXT NOT NULL,
    PRIMARY KEY (target_kind, target, src_kind, src)
);
CREATE TABLE IF NOT EXISTS elements (
    grp TEXT NOT NULL,
    kind TEXT NOT NULL,
    token TEXT NOT NULL,
    roles TEXT NOT NULL,
    PRIMARY KEY (grp, kind, token)
);
"""


class SqliteSiteStore(SiteStoreBase):
    """Implements :class:`fieldgate.cloud.store.site.SiteStore` on SQLite files."""

    def __init__(self, data_dir: Path, *, synchronous: Synchronous = "FULL") -> None:
        self._dir = data_dir
        self._worker = SqliteWorker("site", error=StoreError, synchronous=synchronous)

    async def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    def _path(self, tenant: str) -> Path:
        return self._dir / f"site-{require_tenant(tenant)}.db"

    def _db(self, tenant: str, create: bool = True) -> sqlite3.Connection | None:
        return self._worker.connect(self._path(tenant), _SCHEMA, create=create)

    def _w(self, tenant: str) -> sqlite3.Connection:
        conn = self._db(tenant)
        assert conn is not None
        return conn

    # --- primitives (worker thread) ------------------------------------------------------------

    async def _insert(self, tenant: str, kind: Kind, token: str, data: str) -> bool:
        def run() -> bool:
            conn = self._w(tenant)
            with transaction(conn):
                (n,) = conn.execute("SELECT COUNT(*) FROM records WHERE kind = ?", (kind,)).fetchone()
                if n >= MAX_RECORDS:
                    raise StoreError(f"site: at most {MAX_RECORDS} records of kind {kind} per tenant")
                cur = conn.execute(
                    "INSERT OR IGNORE INTO records (kind, token, data) VALUES (?, ?, ?)", (kind, token, data)
                )
                return cur.rowcount == 1

        return await self._worker.run(run)

    async def _read(self, tenant: str, kind: Kind, token: str) -> str | None:
        def run() -> str | None:
            conn = self._db(tenant, create=False)
            if conn is None:
                return None
            row = conn.execute(
                "SELECT data FROM records WHERE kind = ? AND token = ?", (kind, token)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._worker.run(run)

    async def _all(self, tenant: str, kind: Kind) -> list[str]:
        def run() -> list[str]:
            conn = self._db(tenant, create=False)
            if conn is None:
                return []
            rows = conn.execute("SELECT data FROM records WHERE kind = ? ORDER BY token", (kind,)).fetchall()
            return [str(r[0]) for r in rows]

        return await self._worker.run(run)

    async def _replace(self, tenant: str, kind: Kind, token: str, data: str) -> bool:
        def run() -> bool:
            conn = self._w(tenant)
            cur = conn.execute(
                "UPDATE records SET data = ? WHERE kind = ? AND token = ?", (data, kind, token)
            )
            return cur.rowcount == 1

        return await self._worker.run(run)

    async def _incref(self, tenant: str, kind: Kind, token: str, src: tuple[str, str]) -> bool:
        def run() -> bool:
            conn = self._w(tenant)
            with transaction(conn):
                cur = conn.execute(
                    "UPDATE records SET refs = refs + 1 WHERE kind = ? AND token = ?", (kind, token)
                )
                if cur.rowcount != 1:
                    return False
                conn.execute("INSERT OR IGNORE INTO refs VALUES (?, ?, ?, ?)", (kind, token, *src))
                return True

        return await self._worker.run(run)

    async def _decref(self, tenant: str, kind: Kind, token: str, src: tuple[str, str]) -> None:
        def run() -> None:
            conn = self._w(tenant)
            with transaction(conn):
                conn.execute(
                    "UPDATE records SET refs = MAX(refs - 1, 0) WHERE kind = ? AND token = ?", (kind, token)
                )
                conn.execute(
                    "DELETE FROM refs WHERE target_kind = ? AND target = ? AND src_kind = ? AND src = ?",
                    (kind, token, *src),
                )

        await self._worker.run(run)

    async def _drop_ref(self, tenant: str, kind: Kind, token: str, src: tuple[str, str]) -> None:
        def run() -> None:
            conn = self._w(tenant)
            with transaction(conn):
                cur = conn.execute(
                    "DELETE FROM refs WHERE target_kind = ? AND target = ? AND src_kind = ? AND src = ?",
                    (kind, token, *src),
                )
                if cur.rowcount == 1:
                    conn.execute(
                        "UPDATE records SET refs = MAX(refs - 1, 0) WHERE kind = ? AND token = ?",
                        (kind, token),
                    )

        await self._worker.run(run)

    async def _delete_row(self, tenant: str, kind: Kind, token: str) -> DeleteOutcome:
        def run() -> DeleteOutcome:
            conn = self._w(tenant)
            with transaction(conn):
                row = conn.execute(
                    "SELECT refs FROM records WHERE kind = ? AND token = ?", (kind, token)
                ).fetchone()
                if row is None:
                    return "missing"
                if int(row[0]) > 0:
                    return "referenced"
                conn.execute("DELETE FROM records WHERE kind = ? AND token = ?", (kind, token))
                return "deleted"

        return await self._worker.run(run)

    async def _referrers(self, tenant: str, kind: Kind, token: str, limit: int) -> list[tuple[str, str]]:
        def run() -> list[tuple[str, str]]:
            rows = self._w(tenant).execute(
                "SELECT src_kind, src FROM refs WHERE target_kind = ? AND target = ?"
                " ORDER BY src_kind, src LIMIT ?",
                (kind, token, limit),
            )
            return [(str(k), str(t)) for k, t in rows]

        return await self._worker.run(run)

    async def _put_element_row(self, tenant: str, group: str, element: GroupElement) -> bool:
        roles = json.dumps(list(element.roles))

        def run() -> bool:
            conn = self._w(tenant)
            with transaction(conn):
                cur = conn.execute(
                    "UPDATE elements SET roles = ? WHERE grp = ? AND kind = ? AND token = ?",
                    (roles, group, element.kind, element.token),
                )
                if cur.rowcount == 1:
                    return False
                conn.execute(
                    "INSERT INTO elements VALUES (?, ?, ?, ?)", (group, element.kind, element.token, roles)
                )
                return True

        return await self._worker.run(run)

    async def _delete_element_row(self, tenant: str, group: str, kind: str, token: str) -> bool:
        def run() -> bool:
            cur = self._w(tenant).execute(
                "DELETE FROM elements WHERE grp = ? AND kind = ? AND token = ?", (group, kind, token)
            )
            return cur.rowcount == 1

        return await self._worker.run(run)

    async def _element_rows(self, tenant: str, group: str) -> list[GroupElement]:
        def run() -> list[tuple[str, str, str]]:
            conn = self._db(tenant, create=False)
            if conn is None:
                return []
            rows = conn.execute(
                "SELECT kind, token, roles FROM elements WHERE grp = ? ORDER BY kind DESC, token", (group,)
            ).fetchall()
            return [(str(k), str(t), str(r)) for k, t, r in rows]

        return [
            GroupElement.model_validate({"kind": k, "token": t, "roles": json.loads(r)})
            for k, t, r in await self._worker.run(run)
        ]

    # --- tenants -------------------------------------------------------------------------------

    async def ensure_tenant(self, tenant: str) -> None:
        """Create ``site-<tenant>.db`` now (otherwise its first write creates it)."""
        await self._worker.run(self._db, tenant)

    async def delete_tenant(self, tenant: str) -> bool:
        path = self._path(tenant)
        return await self._worker.run(self._worker.remove, path)

    def forget_tenant(self, tenant: str) -> None:
        self._worker.close_soon(self._path(tenant))
