"""The user store: who may obtain a bearer token, for which tenant, with which role.

Passwords are hashed with **argon2id** (argon2-cffi; OWASP's parameters m=19 MiB, t=2, p=1,
stored in the PHC string with each hash, so they can be raised later: a hash with older
parameters is re-hashed at the next successful login). Users created before argon2 have a
``hashlib.scrypt`` hash (salt and cost in their own columns); it still verifies, and the first
successful login replaces it with an argon2id hash. Verifying an unknown user costs the same
argon2 run as a known one, so response time does not reveal which user names exist.

Each user has a tenant and a :class:`~fieldgate.cloud.services.access.Role`; ``customer`` users also
name their customer. Users that existed before roles (schema migration: SQLite ``ALTER TABLE
ADD COLUMN``, Cassandra ``ALTER TABLE … ADD``) are ``tenant-admin``: that is what their token
allowed before, so nobody is locked out by an upgrade; ``fieldgate up`` makes ``admin`` the
instance admin at start.

**Generations** (docs/security.md, "Tokens"): every user has a ``generation``, a random value
replaced whenever what a token of the user claims stops being true — the password, the role,
the customer or the tenant changes, or the user is deleted (a user created again under the
same name gets a new one). Tokens carry it, and every request compares it with the stored one
(:class:`fieldgate.cloud.api.rest.auth.UserSessions`), so such a change ends the user's tokens at
once instead of at their expiry. ``delete_tenant`` removes every user of a tenant (the store
is one of the tenant-owned stores, :class:`fieldgate.cloud.composition.TenantStores`).

Two stores share that hashing (:class:`PasswordHasher`): :class:`SqliteUsers`, one small SQLite
file (logins are rare, so each call opens its own connection in a worker thread; hashing takes
tens of milliseconds and must not stall the event loop), and :class:`CassandraUsers`, a table
of the instance keyspace (distributed mode: every ``api`` replica sees the same users).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from fieldgate.cloud.errors import InvalidRequest, StoreError
from fieldgate.cloud.services.access import Role
from fieldgate.cloud.store import TenantOwned
from fieldgate.timeutil import now_ms

if TYPE_CHECKING:
    from fieldgate.cloud.store.cassandra.session import CassandraSession

log = logging.getLogger(__name__)

USER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # as cloud.config.TenantConfig.token
CUSTOMER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@ -]{0,127}$")
MAX_PASSWORD = 1024
#: Shortest password any path accepts (REST, the admin bootstrap, the stores): NIST SP 800-63B's
#: minimum for a password a person chooses.
MIN_PASSWORD = 8
#: The role of users created without one, and of users stored before roles existed.
LEGACY_ROLE = Role.TENANT_ADMIN

# Legacy scrypt cost (verification only now): n=2**14, r=8 → 16 MiB.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _DKLEN = 2**14, 8, 1, 32
_MAXMEM = 64 * 1024 * 1024
# argon2id, OWASP Password Storage Cheat Sheet: m=19 MiB, t=2, p=1 (~60 ms on a small machine).
ARGON2_TIME_COST, ARGON2_MEMORY_KIB, ARGON2_PARALLELISM = 2, 19456, 1

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


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user as the API shows it (never the hash). ``generation`` is what its tokens must carry
    (module docstring); it does not take part in comparisons."""

    name: str
    tenant: str
    role: Role
    customer: str | None = None
    generation: str = field(default="", compare=False)


def new_generation() -> str:
    """A fresh user generation (module docstring)."""
    return secrets.token_hex(8)


class Users(Protocol):
    """What the REST API needs from a user store."""

    async def authenticate(self, user: str, password: str) -> UserRecord | None: ...

    async def get(self, user: str) -> UserRecord | None: ...

    async def list_users(self, tenant: str | None = None) -> list[UserRecord]: ...

    async def create(
        self,
        user: str,
        password: str,
        *,
        tenant: str = "default",
        role: Role = LEGACY_ROLE,
        customer: str | None = None,
    ) -> bool: ...

    async def update(
        self, user: str, *, password: str | None = None, role: Role | None = None, customer: str | None = None
    ) -> UserRecord | None: ...

    async def delete(self, user: str) -> bool: ...


class UserStore(Users, TenantOwned, Protocol):
    """A user store as the cloud process runs it (SQLite or Cassandra); ``delete_tenant``
    deletes every user of the tenant."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def verify(self, user: str, password: str) -> bool: ...

    async def tenant_of(self, user: str) -> str | None: ...

    async def set_password(
        self,
        user: str,
        password: str,
        *,
        tenant: str = "default",
        role: Role = LEGACY_ROLE,
        customer: str | None = None,
    ) -> None: ...

    async def exists(self, user: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A stored hash: an argon2id PHC string, or (legacy) a scrypt digest with its own salt and
    cost parameters."""

    phc: str | None = None
    salt: bytes = b""
    digest: bytes = b""
    n: int = 0
    r: int = 0
    p: int = 0


def scrypt_hash(password: str, salt: bytes | None = None) -> PasswordHash:
    """A legacy scrypt hash (what stores wrote before argon2; kept to test the upgrade path)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return PasswordHash(None, salt, digest, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_DKLEN)


def check_role(role: Role | str, customer: str | None) -> Role:
    try:
        parsed = Role(role)
    except ValueError as err:
        raise InvalidRequest(f"role must be one of {', '.join(r.value for r in Role)}") from err
    if parsed is Role.CUSTOMER:
        if not customer or not CUSTOMER_PATTERN.fullmatch(customer):
            raise InvalidRequest("a customer user needs a customer: 1-128 letters, digits, spaces and _.:@-")
    elif customer is not None:
        raise InvalidRequest("only customer users have a customer")
    return parsed


def check_new_user(
    user: str, password: str, tenant: str, role: Role | str = LEGACY_ROLE, customer: str | None = None
) -> Role:
    """The role, or InvalidRequest unless the user may be stored."""
    if not USER_PATTERN.fullmatch(user):
        raise InvalidRequest("user name must be 1-64 characters: letters, digits and _.@-")
    check_password(password)
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidRequest(f"tenant {tenant[:70]!r} is not a valid tenant token")
    return check_role(role, customer)


def check_password(password: str) -> None:
    """InvalidRequest unless ``password`` may be set (every path that sets one calls this)."""
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidRequest(f"password must be at most {MAX_PASSWORD} characters")


class PasswordHasher:
    """argon2id hashing, verification of argon2id and legacy scrypt hashes, and the decision
    to re-hash (blocking: call it from a worker thread). An unknown user (``stored`` None) is
    checked against a dummy hash, so that it costs the same argon2 run as a known one."""

    def __init__(self) -> None:
        self._argon2 = argon2.PasswordHasher(
            time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM
        )
        self._dummy: str | None = None  # computed on first use

    def hash(self, password: str) -> PasswordHash:
        return PasswordHash(phc=self._argon2.hash(password))

    def verify(self, password: str, stored: PasswordHash | None) -> tuple[bool, bool]:
        """(the password matches, the stored hash should be replaced by :meth:`hash`)."""
        if stored is None:
            if self._dummy is None:
                self._dummy = self._argon2.hash(secrets.token_urlsafe(16))
            self._check_argon2(self._dummy, password)
            return False, False
        if stored.phc:
            if not self._check_argon2(stored.phc, password):
                return False, False
            return True, self._argon2.check_needs_rehash(stored.phc)
        if not stored.salt or not stored.n:
            return False, False
        ok = hmac.compare_digest(_scrypt(password, stored.salt, stored.n, stored.r, stored.p), stored.digest)
        return ok, ok

    def _check_argon2(self, phc: str, password: str) -> bool:
        try:
            return self._argon2.verify(phc, password)
        except (VerificationError, InvalidHashError):
            return False


def _record(name: Any, tenant: Any, role: Any, customer: Any, generation: Any = None) -> UserRecord:
    try:
        parsed = Role(role) if role else LEGACY_ROLE
    except ValueError:
        parsed = Role.VIEWER  # an unknown role stored by a newer version: the least one
    return UserRecord(
        str(name), str(tenant), parsed, str(customer) if customer else None, str(generation or "")
    )


def _same_claims(current: UserRecord | None, tenant: str, role: Role, customer: str | None) -> bool:
    """Whether ``current`` already has this tenant, role and customer (a token of it stays true)."""
    return current is not None and (current.tenant, current.role, current.customer) == (
        tenant,
        role,
        customer,
    )


class SqliteUsers:
    """Users with argon2id password hashes, a tenant and a role each, in one SQLite file at ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._hasher = PasswordHasher()
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

    async def set_password(
        self,
        user: str,
        password: str,
        *,
        tenant: str = "default",
        role: Role = LEGACY_ROLE,
        customer: str | None = None,
    ) -> None:
        """Create ``user`` or replace its password, tenant, role and customer (with a new
        generation). A user that already has exactly these is left alone, so a restart that
        sets the admin's password again does not end the admin's tokens."""
        parsed = check_new_user(user, password, tenant, role, customer)

        def write() -> None:
            with closing(self._connect()) as conn, conn:
                row = conn.execute(
                    "SELECT phc, salt, hash, n, r, p, tenant, role, customer FROM users WHERE name = ?",
                    (user,),
                ).fetchone()
                if row is not None and _same_claims(_record(user, *row[6:9]), tenant, parsed, customer):
                    stored = PasswordHash(row[0], bytes(row[1]), bytes(row[2]), *row[3:6])
                    if self._hasher.verify(password, stored)[0]:
                        return
                h = self._hasher.hash(password)
                conn.execute(
                    "INSERT INTO users (name, tenant, salt, hash, n, r, p, updated_ms, role, customer, phc, "
                    "generation) VALUES (?, ?, x'', x'', 0, 0, 0, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE "
                    "SET tenant=excluded.tenant, salt=x'', hash=x'', n=0, r=0, p=0, "
                    "updated_ms=excluded.updated_ms, role=excluded.role, customer=excluded.customer, "
                    "phc=excluded.phc, generation=excluded.generation",
                    (user, tenant, now_ms(), parsed.value, customer, h.phc, new_generation()),
                )

        await asyncio.to_thread(write)

    async def create(
        self,
        user: str,
        password: str,
        *,
        tenant: str = "default",
        role: Role = LEGACY_ROLE,
        customer: str | None = None,
    ) -> bool:
        """Create ``user`` unless it exists; whether this call created it (a user that exists
        keeps its password, so two processes creating the same user at once agree on one)."""
        parsed = check_new_user(user, password, tenant, role, customer)

        def insert() -> bool:
            h = self._hasher.hash(password)
            with closing(self._connect()) as conn, conn:
                cur = conn.execute(
                    "INSERT INTO users (name, tenant, salt, hash, n, r, p, updated_ms, role, customer, phc, "
                    "generation) VALUES (?, ?, x'', x'', 0, 0, 0, ?, ?, ?, ?, ?) ON CONFLICT(name) DO NOTHING",
                    (user, tenant, now_ms(), parsed.value, customer, h.phc, new_generation()),
                )
                return cur.rowcount == 1

        return await asyncio.to_thread(insert)

    async def authenticate(self, user: str, password: str) -> UserRecord | None:
        """The user if ``password`` is its password (re-hashing a legacy or weaker hash), else None."""

        def check() -> UserRecord | None:
            with closing(self._connect()) as conn:
                row = conn.execute(
                    "SELECT phc, salt, hash, n, r, p, tenant, role, customer, generation FROM users WHERE name = ?",
                    (user,),
                ).fetchone()
                stored = (
                    None if row is None else PasswordHash(row[0], bytes(row[1]), bytes(row[2]), *row[3:6])
                )
                ok, rehash = self._hasher.verify(password, stored)
                if not ok or row is None:
                    return None
                if rehash:
                    with conn:
                        conn.execute(
                            "UPDATE users SET phc = ?, salt = x'', hash = x'', n = 0, r = 0, p = 0, "
                            "updated_ms = ? WHERE name = ? AND coalesce(phc, '') = ? AND hash = ?",
                            (self._hasher.hash(password).phc, now_ms(), user, row[0] or "", row[2]),
                        )
                return _record(user, *row[6:10])

        return await asyncio.to_thread(check)

    async def verify(self, user: str, password: str) -> bool:
        return await self.authenticate(user, password) is not None

    async def get(self, user: str) -> UserRecord | None:
        def read() -> UserRecord | None:
            with closing(self._connect()) as conn:
                row = conn.execute(
                    "SELECT name, tenant, role, customer, generation FROM users WHERE name = ?", (user,)
                ).fetchone()
            return None if row is None else _record(*row)

        return await asyncio.to_thread(read)

    async def list_users(self, tenant: str | None = None) -> list[UserRecord]:
        """Users by name, of ``tenant`` or of every tenant."""

        def read() -> list[UserRecord]:
            with closing(self._connect()) as conn:
                rows = conn.execute(
                    "SELECT name, tenant, role, customer, generation FROM users "
                    "WHERE ? IS NULL OR tenant = ? ORDER BY name",
                    (tenant, tenant),
                ).fetchall()
            return [_record(*row) for row in rows]

        return await asyncio.to_thread(read)

    async def update(
        self, user: str, *, password: str | None = None, role: Role | None = None, customer: str | None = None
    ) -> UserRecord | None:
        """Change the password and/or the role (a customer role needs ``customer``; another role
        drops it); the updated user, or None if it does not exist."""
        current = await self.get(user)
        if current is None:
            return None
        new_role = check_role(
            role if role is not None else current.role,
            customer if customer is not None or role is not None else current.customer,
        )
        new_customer = customer if customer is not None or role is not None else current.customer
        if password is not None:
            check_password(password)

        # A new password, role or customer ends the user's tokens (module docstring).
        changed = password is not None or (new_role, new_customer) != (current.role, current.customer)
        generation = new_generation() if changed else current.generation

        def write() -> bool:
            phc = self._hasher.hash(password).phc if password is not None else None
            with closing(self._connect()) as conn, conn:
                if phc is not None:
                    conn.execute(
                        "UPDATE users SET phc = ?, salt = x'', hash = x'', n = 0, r = 0, p = 0 WHERE name = ?",
                        (phc, user),
                    )
                cur = conn.execute(
                    "UPDATE users SET role = ?, customer = ?, updated_ms = ?, generation = ? WHERE name = ?",
                    (new_role.value, new_customer, now_ms(), generation or None, user),
                )
                return cur.rowcount == 1

        if not await asyncio.to_thread(write):
            return None
        return UserRecord(user, current.tenant, new_role, new_customer, generation)

    async def delete(self, user: str) -> bool:
        def write() -> bool:
            with closing(self._connect()) as conn, conn:
                return conn.execute("DELETE FROM users WHERE name = ?", (user,)).rowcount == 1

        return await asyncio.to_thread(write)

    async def ensure_tenant(self, tenant: str) -> None:
        """Nothing to provision: users of a tenant are rows of the one file."""

    async def delete_tenant(self, tenant: str) -> bool:
        """Delete every user of ``tenant``; False if it had none."""

        def write() -> bool:
            with closing(self._connect()) as conn, conn:
                return conn.execute("DELETE FROM users WHERE tenant = ?", (tenant,)).rowcount > 0

        return await asyncio.to_thread(write)

    def forget_tenant(self, tenant: str) -> None:
        """Nothing cached: every call reads the file."""

    async def tenant_of(self, user: str) -> str | None:
        found = await self.get(user)
        return None if found is None else found.tenant

    async def exists(self, user: str) -> bool:
        return await self.get(user) is not None


class CassandraUsers:
    """The same users (same hashes, same rules) in the ``users`` table of the instance keyspace
    (``<prefix>__instance``), so that ``api`` replicas without a common directory share them.
    ``session`` is a :class:`fieldgate.cloud.store.cassandra.session.CassandraSession` (shared with the
    process's other Cassandra stores, or its own); the driver is imported by it, not here."""

    def __init__(
        self, session: CassandraSession, *, keyspace_prefix: str = "fg", replication: int = 1
    ) -> None:
        from fieldgate.cloud.store.cassandra.session import instance_keyspace

        self._db = session
        self._ks = instance_keyspace(keyspace_prefix)
        self._replication = replication
        self._hasher = PasswordHasher()
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

    async def set_password(
        self,
        user: str,
        password: str,
        *,
        tenant: str = "default",
        role: Role = LEGACY_ROLE,
        customer: str | None = None,
    ) -> None:
        """Create ``user`` or replace its password, tenant and role (with a new generation); the
        last write wins. A user that already has exactly these is left alone."""
        parsed = check_new_user(user, password, tenant, role, customer)
        rows = await self._db.execute(self._stmt("hash"), (user,))
        if rows and _same_claims(_record(user, *rows[0][6:9]), tenant, parsed, customer):
            stored = _cassandra_hash(rows[0])
            if (await asyncio.to_thread(self._hasher.verify, password, stored))[0]:
                return
        h = await asyncio.to_thread(self._hasher.hash, password)
        params = (user, tenant, now_ms(), parsed.value, customer, h.phc, new_generation())
        await self._db.execute(self._stmt("upsert"), params)

    async def create(
        self,
        user: str,
        password: str,
        *,
        tenant: str = "default",
        role: Role = LEGACY_ROLE,
        customer: str | None = None,
    ) -> bool:
        """Create ``user`` unless it exists (``IF NOT EXISTS``: of two replicas creating the same
        user at once, one wins and the other's password is never stored); whether this call did."""
        parsed = check_new_user(user, password, tenant, role, customer)
        h = await asyncio.to_thread(self._hasher.hash, password)
        params = (user, tenant, now_ms(), parsed.value, customer, h.phc, new_generation())
        rows = await self._db.execute(self._stmt("create"), params)
        return bool(rows and rows[0][0])

    async def authenticate(self, user: str, password: str) -> UserRecord | None:
        rows = await self._db.execute(self._stmt("hash"), (user,))
        stored = _cassandra_hash(rows[0]) if rows else None
        ok, rehash = await asyncio.to_thread(self._hasher.verify, password, stored)
        if not ok or not rows:
            return None
        if rehash:
            h = await asyncio.to_thread(self._hasher.hash, password)
            await self._db.execute(self._stmt("rehash"), (h.phc, now_ms(), user))
        return _record(user, *rows[0][6:10])

    async def verify(self, user: str, password: str) -> bool:
        return await self.authenticate(user, password) is not None

    async def get(self, user: str) -> UserRecord | None:
        rows = await self._db.execute(self._stmt("get"), (user,))
        return _record(*rows[0]) if rows else None

    async def list_users(self, tenant: str | None = None) -> list[UserRecord]:
        """Users by name, of ``tenant`` or of every tenant (a full scan of the small table)."""
        rows = await self._db.execute(self._stmt("all"))
        found = [_record(*row) for row in rows]
        return sorted((u for u in found if tenant is None or u.tenant == tenant), key=lambda u: u.name)

    async def update(
        self, user: str, *, password: str | None = None, role: Role | None = None, customer: str | None = None
    ) -> UserRecord | None:
        current = await self.get(user)
        if current is None:
            return None
        new_customer = customer if customer is not None or role is not None else current.customer
        new_role = check_role(role if role is not None else current.role, new_customer)
        # A new password, role or customer ends the user's tokens (module docstring).
        changed = password is not None or (new_role, new_customer) != (current.role, current.customer)
        generation = new_generation() if changed else current.generation
        if password is not None:
            check_password(password)
            h = await asyncio.to_thread(self._hasher.hash, password)
            await self._db.execute(self._stmt("rehash"), (h.phc, now_ms(), user))
        rows = await self._db.execute(
            self._stmt("set_role"), (new_role.value, new_customer, now_ms(), generation or None, user)
        )
        if not (rows and rows[0][0]):
            return None
        return UserRecord(user, current.tenant, new_role, new_customer, generation)

    async def delete(self, user: str) -> bool:
        rows = await self._db.execute(self._stmt("delete"), (user,))
        return bool(rows and rows[0][0])

    async def ensure_tenant(self, tenant: str) -> None:
        """Nothing to provision: users of a tenant are rows of the instance keyspace's table."""

    async def delete_tenant(self, tenant: str) -> bool:
        """Delete every user of ``tenant`` (a scan of the small table); False if it had none."""
        found = await self.list_users(tenant)
        for user in found:
            await self._db.execute(self._stmt("delete"), (user.name,))
        return bool(found)

    def forget_tenant(self, tenant: str) -> None:
        """Nothing cached: every call reads the table."""

    async def tenant_of(self, user: str) -> str | None:
        found = await self.get(user)
        return None if found is None else found.tenant

    async def exists(self, user: str) -> bool:
        return await self.get(user) is not None


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


def _cassandra_hash(row: Sequence[Any]) -> PasswordHash:
    phc, salt, digest, n, r, p = row[:6]
    return PasswordHash(phc, bytes(salt or b""), bytes(digest or b""), n or 0, r or 0, p or 0)
