"""The user store: who may obtain a bearer token, and which tenant that token is for.

Passwords are hashed with ``hashlib.scrypt`` from the standard library (a memory-hard KDF;
no third-party dependency needed) with a random 16-byte salt per user. The cost parameters are
stored with each hash, so they can be raised later without invalidating existing passwords.
Comparison is constant-time (``hmac.compare_digest``), and verifying an unknown user costs the
same scrypt run as a known one, so response time does not reveal which user names exist.

The store is one small SQLite file. Logins are rare, so each call opens its own connection in a
worker thread (scrypt takes tens of milliseconds; it must not stall the event loop).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Protocol

from fieldgate.cloud.errors import InvalidRequest, StoreError
from fieldgate.timeutil import now_ms

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


def _hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_DKLEN)


class SqliteUsers:
    """Users with scrypt password hashes and a tenant each, in one SQLite file at ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        # An unknown user is checked against this, so that it costs a real scrypt run.
        # (computed on first use, in the worker thread).
        self._dummy_salt = secrets.token_bytes(16)
        self._dummy_hash: bytes | None = None

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
        if not USER_PATTERN.fullmatch(user):
            raise InvalidRequest("user name must be 1-64 characters: letters, digits and _.@-")
        if not password:
            raise InvalidRequest("password must not be empty")
        if not TENANT_PATTERN.fullmatch(tenant):
            raise InvalidRequest(f"tenant {tenant!r} is not a valid tenant token")

        def write() -> None:
            salt = secrets.token_bytes(16)
            digest = _hash(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
            with closing(self._connect()) as conn, conn:
                conn.execute(
                    "INSERT INTO users (name, tenant, salt, hash, n, r, p, updated_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                    "tenant=excluded.tenant, salt=excluded.salt, hash=excluded.hash, "
                    "n=excluded.n, r=excluded.r, p=excluded.p, updated_ms=excluded.updated_ms",
                    (user, tenant, salt, digest, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P, now_ms()),
                )

        await asyncio.to_thread(write)

    async def verify(self, user: str, password: str) -> bool:
        def check() -> bool:
            with closing(self._connect()) as conn:
                row = conn.execute("SELECT salt, hash, n, r, p FROM users WHERE name = ?", (user,)).fetchone()
            if row is None:
                if self._dummy_hash is None:
                    self._dummy_hash = _hash(
                        secrets.token_urlsafe(16), self._dummy_salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P
                    )
                hmac.compare_digest(
                    _hash(password, self._dummy_salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P), self._dummy_hash
                )
                return False
            salt, stored, n, r, p = row
            return hmac.compare_digest(_hash(password, salt, n, r, p), stored)

        return await asyncio.to_thread(check)

    async def tenant_of(self, user: str) -> str | None:
        def read() -> str | None:
            with closing(self._connect()) as conn:
                row = conn.execute("SELECT tenant FROM users WHERE name = ?", (user,)).fetchone()
            return None if row is None else str(row[0])

        return await asyncio.to_thread(read)
