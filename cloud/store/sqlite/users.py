"""SQLite user store: the row primitives of :class:`~fieldgate.cloud.store.users.UserStoreBase`
in one small SQLite file. Logins are rare, so each call opens its own connection in a worker
thread (hashing takes tens of milliseconds and must not stall the event loop); a read, the
hashing decision and the write it leads to run on one connection in one ``with conn`` block,
and a login's re-hash only replaces the hash it read.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

from fieldgate.cloud.domain.users import LEGACY_ROLE, Role, UserRecord
from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.store.users import (
    Hasher,
    Rehash,
    Replace,
    StoredUser,
    UserStoreBase,
    Write,
    password_hash,
    user_record,
)
from fieldgate.timeutil import now_ms

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    n INTEGER NOT NULL,
    r INTEGER NOT NULL,
    p INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
)
"""
# SQLite schema versions (PRAGMA user_version) after the table above. Append, never edit.
_SQLITE_MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            f"ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT '{LEGACY_ROLE.value}'",
            "ALTER TABLE users ADD COLUMN customer TEXT",
            "ALTER TABLE users ADD COLUMN phc TEXT",  # argon2id PHC string; NULL: scrypt columns
        ],
    ),
    (2, ["ALTER TABLE users ADD COLUMN generation TEXT"]),  # NULL: a user from before generations
]

_INSERT = (
    "INSERT INTO users (name, tenant, salt, hash, n, r, p, updated_ms, role, customer, phc, generation)"
    " VALUES (?, ?, x'', x'', 0, 0, 0, ?, ?, ?, ?, ?) ON CONFLICT(name) DO "
)
_RECORD = "SELECT name, tenant, role, customer, generation FROM users"


def _params(record: UserRecord, phc: str) -> tuple[Any, ...]:
    return (record.name, record.tenant, now_ms(), record.role.value, record.customer, phc, record.generation)


class SqliteUsers(UserStoreBase):
    """Users with password hashes (made by ``hasher``), a tenant and a role each, in one SQLite
    file at ``path``."""

    def __init__(self, path: Path, hasher: Hasher) -> None:
        super().__init__(hasher)
        self._path = path
        self._migrated = False

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._path, timeout=10)
            if not self._migrated:
                self._migrate(conn)
                self._migrated = True
        except sqlite3.Error as err:
            raise StoreError(f"user store {self._path}: {err}") from err
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        with conn:
            conn.execute("BEGIN IMMEDIATE")  # one process migrates at a time
            conn.execute(_SCHEMA)
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for target, statements in _SQLITE_MIGRATIONS:
                if target > version:
                    for stmt in statements:
                        conn.execute(stmt)
                    conn.execute(f"PRAGMA user_version = {int(target)}")
                    log.info("user store: schema version %d", target)

    async def start(self) -> None:
        def init() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()):
                pass

        await asyncio.to_thread(init)

    async def stop(self) -> None:
        """Nothing is held open between calls."""

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` on a connection of its own in a worker thread, as one ``with conn`` block."""

        def run() -> T:
            with closing(self._connect()) as conn, conn:
                return work(conn)

        return await asyncio.to_thread(run)

    async def _read_write(self, user: str, step: Callable[[StoredUser | None], tuple[T, Write | None]]) -> T:
        def work(conn: sqlite3.Connection) -> T:
            row = conn.execute(
                "SELECT phc, salt, hash, n, r, p, tenant, role, customer, generation FROM users WHERE name = ?",
                (user,),
            ).fetchone()
            current = (
                None if row is None else StoredUser(user_record(user, *row[6:10]), password_hash(*row[:6]))
            )
            result, write = step(current)
            if isinstance(write, Replace):
                conn.execute(
                    _INSERT + "UPDATE SET tenant=excluded.tenant, salt=x'', hash=x'', n=0, r=0, p=0, "
                    "updated_ms=excluded.updated_ms, role=excluded.role, customer=excluded.customer, "
                    "phc=excluded.phc, generation=excluded.generation",
                    _params(write.record, write.phc),
                )
            elif isinstance(write, Rehash) and row is not None:
                conn.execute(  # only the hash that was read (another change in between wins)
                    "UPDATE users SET phc = ?, salt = x'', hash = x'', n = 0, r = 0, p = 0, "
                    "updated_ms = ? WHERE name = ? AND coalesce(phc, '') = ? AND hash = ?",
                    (write.phc, now_ms(), user, row[0] or "", row[2]),
                )
            return result

        return await self._run(work)

    async def _insert(self, record: UserRecord, phc: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            return conn.execute(_INSERT + "NOTHING", _params(record, phc)).rowcount == 1

        return await self._run(work)

    async def _update(
        self, user: str, phc: str | None, role: Role, customer: str | None, generation: str | None
    ) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            if phc is not None:
                conn.execute(
                    "UPDATE users SET phc = ?, salt = x'', hash = x'', n = 0, r = 0, p = 0 WHERE name = ?",
                    (phc, user),
                )
            cur = conn.execute(
                "UPDATE users SET role = ?, customer = ?, updated_ms = ?, generation = ? WHERE name = ?",
                (role.value, customer, now_ms(), generation, user),
            )
            return cur.rowcount == 1

        return await self._run(work)

    async def _read(self, user: str) -> UserRecord | None:
        def work(conn: sqlite3.Connection) -> UserRecord | None:
            row = conn.execute(f"{_RECORD} WHERE name = ?", (user,)).fetchone()
            return None if row is None else user_record(*row)

        return await self._run(work)

    async def _records(self, tenant: str | None) -> list[UserRecord]:
        def work(conn: sqlite3.Connection) -> list[UserRecord]:
            rows = conn.execute(f"{_RECORD} WHERE ? IS NULL OR tenant = ?", (tenant, tenant)).fetchall()
            return [user_record(*row) for row in rows]

        return await self._run(work)

    async def _delete(self, user: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM users WHERE name = ?", (user,)).rowcount == 1

        return await self._run(work)

    async def _delete_all(self, tenant: str) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM users WHERE tenant = ?", (tenant,)).rowcount > 0

        return await self._run(work)
