"""Cassandra user store: the row primitives of :class:`~fieldgate.cloud.store.users.UserStoreBase`
in the ``users`` table of the instance keyspace (``<prefix>__instance``), so that ``api``
replicas without a common directory share the same users (same hashes, same rules).

A new user is ``INSERT ... IF NOT EXISTS`` (of two replicas creating the same user at once, one
wins and the other's password is never stored); changes to an existing user, a login's re-hash
and deletes are ``IF EXISTS``, so none brings a deleted user back. ``set_password`` writes the
whole row: the last write wins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fieldgate.cloud.domain.users import Role, UserRecord
from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.store.cassandra.session import CassandraSession, instance_keyspace
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

T = TypeVar("T")


def cassandra_migrations(ks: str) -> list[tuple[int, list[str]]]:
    """Schema versions of the users table in the instance keyspace. Append, never edit."""
    return [
        (
            1,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.users (name text PRIMARY KEY, tenant text, salt blob,"
                " hash blob, n int, r int, p int, updated_ms bigint)"
            ],
        ),
        # Roles and argon2id (a null role is a user from before roles: tenant-admin).
        (2, [f"ALTER TABLE {ks}.users ADD (role text, customer text, phc text)"]),
        # Token generations (null: a user from before them; its next change sets one).
        (3, [f"ALTER TABLE {ks}.users ADD generation text"]),
    ]


def _params(record: UserRecord, phc: str) -> tuple[Any, ...]:
    return (record.name, record.tenant, now_ms(), record.role.value, record.customer, phc, record.generation)


class CassandraUsers(UserStoreBase):
    """Implements :class:`fieldgate.cloud.store.users.UserStore` on Cassandra (module docstring).
    ``session`` is shared with the process's other Cassandra stores, or its own."""

    def __init__(
        self,
        session: CassandraSession,
        hasher: Hasher,
        *,
        keyspace_prefix: str = "fg",
        replication: int = 1,
    ) -> None:
        super().__init__(hasher)
        self._db = session
        self._ks = instance_keyspace(keyspace_prefix)
        self._replication = replication
        self._stmts: dict[str, Any] = {}

    async def start(self) -> None:
        ks = self._ks
        await self._db.start()
        try:
            try:
                await self._db.migrate(ks, "users", cassandra_migrations(ks), replication=self._replication)
            except StoreError:
                # Another replica was applying the same ALTER TABLE (not idempotent in CQL): its
                # version is recorded by now, or this second attempt applies it.
                await asyncio.sleep(1)
                await self._db.migrate(ks, "users", cassandra_migrations(ks), replication=self._replication)
            cols = "name, tenant, salt, hash, n, r, p, updated_ms, role, customer, phc, generation"
            values = "VALUES (?, ?, null, null, null, null, null, ?, ?, ?, ?, ?)"
            self._stmts = await self._db.prepare(
                {
                    "upsert": f"INSERT INTO {ks}.users ({cols}) {values}",
                    "create": f"INSERT INTO {ks}.users ({cols}) {values} IF NOT EXISTS",
                    "hash": f"SELECT phc, salt, hash, n, r, p, tenant, role, customer, generation"
                    f" FROM {ks}.users WHERE name = ?",
                    "rehash": f"UPDATE {ks}.users SET phc = ?, salt = null, hash = null, n = null, r = null,"
                    " p = null, updated_ms = ? WHERE name = ? IF EXISTS",
                    "get": f"SELECT name, tenant, role, customer, generation FROM {ks}.users WHERE name = ?",
                    "all": f"SELECT name, tenant, role, customer, generation FROM {ks}.users",
                    "set_role": f"UPDATE {ks}.users SET role = ?, customer = ?, updated_ms = ?, generation = ?"
                    " WHERE name = ? IF EXISTS",
                    "delete": f"DELETE FROM {ks}.users WHERE name = ? IF EXISTS",
                },
                ks,
            )
        except BaseException:
            await self._db.stop()
            raise

    async def stop(self) -> None:
        if self._stmts:
            self._stmts = {}
            await self._db.stop()

    def _stmt(self, name: str) -> Any:
        if not self._stmts:
            raise StoreError("cassandra user store is not started")
        return self._stmts[name]

    async def _read_write(self, user: str, step: Callable[[StoredUser | None], tuple[T, Write | None]]) -> T:
        rows = await self._db.execute(self._stmt("hash"), (user,))
        current = StoredUser(user_record(user, *rows[0][6:10]), password_hash(*rows[0][:6])) if rows else None
        result, write = await asyncio.to_thread(step, current)
        if isinstance(write, Replace):
            await self._db.execute(self._stmt("upsert"), _params(write.record, write.phc))
        elif isinstance(write, Rehash):
            await self._db.execute(self._stmt("rehash"), (write.phc, now_ms(), user))
        return result

    async def _insert(self, record: UserRecord, phc: str) -> bool:
        rows = await self._db.execute(self._stmt("create"), _params(record, phc))
        return bool(rows and rows[0][0])

    async def _update(
        self, user: str, phc: str | None, role: Role, customer: str | None, generation: str | None
    ) -> bool:
        if phc is not None:
            await self._db.execute(self._stmt("rehash"), (phc, now_ms(), user))
        rows = await self._db.execute(
            self._stmt("set_role"), (role.value, customer, now_ms(), generation, user)
        )
        return bool(rows and rows[0][0])

    async def _read(self, user: str) -> UserRecord | None:
        rows = await self._db.execute(self._stmt("get"), (user,))
        return user_record(*rows[0]) if rows else None

    async def _records(self, tenant: str | None) -> list[UserRecord]:
        """A full scan of the small table."""
        rows = await self._db.execute(self._stmt("all"))
        found = [user_record(*row) for row in rows]
        return [u for u in found if tenant is None or u.tenant == tenant]

    async def _delete(self, user: str) -> bool:
        rows = await self._db.execute(self._stmt("delete"), (user,))
        return bool(rows and rows[0][0])

    async def _delete_all(self, tenant: str) -> bool:
        """A scan of the small table, then a delete per user."""
        found = await self._records(tenant)
        for user in found:
            await self._db.execute(self._stmt("delete"), (user.name,))
        return bool(found)
