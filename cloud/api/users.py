"""The user store: who may obtain a bearer token, and which tenant that token is for.

Passwords are hashed with ``hashlib.scrypt`` from the standard library (a memory-hard KDF;
no third-party dependency needed) with a random 16-byte salt per user. The cost parameters are
stored with each hash, so they can be raised later without invalidating existing passwords.
Comparison is constant-time (``hmac.compare_digest``), and verifying an unknown user costs the
same scrypt run as a known one, so response time does not reveal which user names exist.

Two stores share that hashing (:class:`PasswordHasher`): :class:`SqliteUsers`, one small SQLite
file (logins are rare, so each call opens its own connection in a worker thread; scrypt takes
tens of milliseconds and must not stall the event loop), and :class:`CassandraUsers`, a table
of the instance keyspace (distributed mode: every ``api`` replica sees the same users).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fieldgate.cloud.errors import InvalidRequest, StoreError
from fieldgate.timeutil import now_ms

if TYPE_CHECKING:
    from fieldgate.cloud.store._cassandra import CassandraSession

USER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # as cloud.config.TenantConfig.token

# scrypt cost: n=2**14, r=8 → 16 MiB and roughly 50 ms per hash on a small machine.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _DKLEN = 2**14, 8, 1, 32
_MAXMEM = 64 * 1024 * 1024

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


class Users(Protocol):
    """What the REST API needs from a user store."""

    async def verify(self, user: str, password: str) -> bool: ...

    async def tenant_of(self, user: str) -> str | None: ...


class UserStore(Users, Protocol):
    """A user store as the cloud process runs it (SQLite or Cassandra)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def set_password(self, user: str, password: str, *, tenant: str = "default") -> None: ...

    async def create(self, user: str, password: str, *, tenant: str = "default") -> bool: ...

    async def exists(self, user: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A stored scrypt hash with its own salt and cost parameters."""

    salt: bytes
    digest: bytes
    n: int
    r: int
    p: int


def _hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_DKLEN)


def check_new_user(user: str, password: str, tenant: str) -> None:
    """InvalidRequest unless ``user``, ``password`` and ``tenant`` may be stored."""
    if not USER_PATTERN.fullmatch(user):
        raise InvalidRequest("user name must be 1-64 characters: letters, digits and _.@-")
    if not password:
        raise InvalidRequest("password must not be empty")
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidRequest(f"tenant {tenant!r} is not a valid tenant token")


class PasswordHasher:
    """scrypt hashing and constant-time verification shared by the user stores (blocking:
    call it from a worker thread). An unknown user (``stored`` None) is checked against a dummy
    hash, so that it costs the same scrypt run as a known one."""

    def __init__(self) -> None:
        self._dummy_salt = secrets.token_bytes(16)
        self._dummy: bytes | None = None  # computed on first use

    @staticmethod
    def hash(password: str) -> PasswordHash:
        salt = secrets.token_bytes(16)
        return PasswordHash(
            salt, _hash(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P), _SCRYPT_N, _SCRYPT_R, _SCRYPT_P
        )

    def verify(self, password: str, stored: PasswordHash | None) -> bool:
        if stored is None:
            if self._dummy is None:
                self._dummy = _hash(
                    secrets.token_urlsafe(16), self._dummy_salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P
                )
            hmac.compare_digest(
                _hash(password, self._dummy_salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P), self._dummy
            )
            return False
        return hmac.compare_digest(_hash(password, stored.salt, stored.n, stored.r, stored.p), stored.digest)


class SqliteUsers:
    """Users with scrypt password hashes and a tenant each, in one SQLite file at ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._hasher = PasswordHasher()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._path, timeout=10)
            conn.execute(_SCHEMA)
        except sqlite3.Error as err:
            raise StoreError(f"user store {self._path}: {err}") from err
        return conn

    async def start(self) -> None:
        def init() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()):
                pass

        await asyncio.to_thread(init)

    async def stop(self) -> None:
        """Nothing is held open between calls."""

    async def set_password(self, user: str, password: str, *, tenant: str = "default") -> None:
        """Create ``user`` or replace its password (and tenant)."""
        check_new_user(user, password, tenant)

        def write() -> None:
            h = self._hasher.hash(password)
            with closing(self._connect()) as conn, conn:
                conn.execute(
                    "INSERT INTO users (name, tenant, salt, hash, n, r, p, updated_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                    "tenant=excluded.tenant, salt=excluded.salt, hash=excluded.hash, "
                    "n=excluded.n, r=excluded.r, p=excluded.p, updated_ms=excluded.updated_ms",
                    (user, tenant, h.salt, h.digest, h.n, h.r, h.p, now_ms()),
                )

        await asyncio.to_thread(write)

    async def create(self, user: str, password: str, *, tenant: str = "default") -> bool:
        """Create ``user`` unless it exists; whether this call created it (a user that exists
        keeps its password, so two processes creating the same user at once agree on one)."""
        check_new_user(user, password, tenant)

        def insert() -> bool:
            h = self._hasher.hash(password)
            with closing(self._connect()) as conn, conn:
                cur = conn.execute(
                    "INSERT INTO users (name, tenant, salt, hash, n, r, p, updated_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO NOTHING",
                    (user, tenant, h.salt, h.digest, h.n, h.r, h.p, now_ms()),
                )
                return cur.rowcount == 1

        return await asyncio.to_thread(insert)

    async def verify(self, user: str, password: str) -> bool:
        def check() -> bool:
            with closing(self._connect()) as conn:
                row = conn.execute("SELECT salt, hash, n, r, p FROM users WHERE name = ?", (user,)).fetchone()
            return self._hasher.verify(password, None if row is None else PasswordHash(*row))

        return await asyncio.to_thread(check)

    async def tenant_of(self, user: str) -> str | None:
        def read() -> str | None:
            with closing(self._connect()) as conn:
                row = conn.execute("SELECT tenant FROM users WHERE name = ?", (user,)).fetchone()
            return None if row is None else str(row[0])

        return await asyncio.to_thread(read)

    async def exists(self, user: str) -> bool:
        return await self.tenant_of(user) is not None


class CassandraUsers:
    """The same users (same hashes, same rules) in the ``users`` table of the instance keyspace
    (``<prefix>__instance``), so that ``api`` replicas without a common directory share them.
    ``session`` is a :class:`fieldgate.cloud.store._cassandra.CassandraSession` (shared with the
    process's other Cassandra stores, or its own); the driver is imported by it, not here."""

    def __init__(
        self, session: CassandraSession, *, keyspace_prefix: str = "fg", replication: int = 1
    ) -> None:
        from fieldgate.cloud.store._cassandra import instance_keyspace

        self._db = session
        self._ks = instance_keyspace(keyspace_prefix)
        self._replication = replication
        self._hasher = PasswordHasher()
        self._stmts: dict[str, Any] = {}

    async def start(self) -> None:
        ks = self._ks
        await self._db.start()
        try:
            await self._db.migrate(ks, "users", _cassandra_migrations(ks), replication=self._replication)
            self._stmts = await self._db.prepare(
                {
                    "upsert": f"INSERT INTO {ks}.users (name, tenant, salt, hash, n, r, p, updated_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    "create": f"INSERT INTO {ks}.users (name, tenant, salt, hash, n, r, p, updated_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                    "hash": f"SELECT salt, hash, n, r, p FROM {ks}.users WHERE name = ?",
                    "tenant": f"SELECT tenant FROM {ks}.users WHERE name = ?",
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

    async def set_password(self, user: str, password: str, *, tenant: str = "default") -> None:
        """Create ``user`` or replace its password (and tenant); the last write wins."""
        check_new_user(user, password, tenant)
        h = await asyncio.to_thread(self._hasher.hash, password)
        await self._db.execute(
            self._stmt("upsert"), (user, tenant, h.salt, h.digest, h.n, h.r, h.p, now_ms())
        )

    async def create(self, user: str, password: str, *, tenant: str = "default") -> bool:
        """Create ``user`` unless it exists (``IF NOT EXISTS``: of two replicas creating the same
        user at once, one wins and the other's password is never stored); whether this call did."""
        check_new_user(user, password, tenant)
        h = await asyncio.to_thread(self._hasher.hash, password)
        params = (user, tenant, h.salt, h.digest, h.n, h.r, h.p, now_ms())
        rows = await self._db.execute(self._stmt("create"), params)
        return bool(rows and rows[0][0])

    async def verify(self, user: str, password: str) -> bool:
        rows = await self._db.execute(self._stmt("hash"), (user,))
        stored = PasswordHash(bytes(rows[0][0]), bytes(rows[0][1]), *rows[0][2:]) if rows else None
        return await asyncio.to_thread(self._hasher.verify, password, stored)

    async def tenant_of(self, user: str) -> str | None:
        rows = await self._db.execute(self._stmt("tenant"), (user,))
        return str(rows[0][0]) if rows else None

    async def exists(self, user: str) -> bool:
        return await self.tenant_of(user) is not None


def _cassandra_migrations(ks: str) -> list[tuple[int, list[str]]]:
    """Schema versions of the users table in the instance keyspace. Append, never edit."""
    return [
        (
            1,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.users (name text PRIMARY KEY, tenant text, salt blob,"
                " hash blob, n int, r int, p int, updated_ms bigint)"
            ],
        )
    ]
