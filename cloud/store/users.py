"""The user store: who may obtain a bearer token, for which tenant, with which role.

:class:`UserStoreBase` holds the store's rules once; the backends implement its row primitives
only: :class:`~fieldgate.cloud.store.sqlite.users.SqliteUsers`, one small SQLite file, and
:class:`~fieldgate.cloud.store.cassandra.users.CassandraUsers`, a table of the instance keyspace
(distributed mode: every ``api`` replica sees the same users). How a password is hashed is not
the store's business: it is given a :class:`Hasher` (the user service's
:class:`fieldgate.cloud.services.users.PasswordHasher`, argon2id), whose :meth:`Hasher.verify`
also says when a stored hash is to be replaced — a legacy scrypt hash, or argon2 parameters
older than today's — which the store does at the next successful login.

Each user has a tenant and a :class:`~fieldgate.cloud.domain.users.Role`; ``customer`` users also
name their customer. Users that existed before roles (schema migration: SQLite ``ALTER TABLE
ADD COLUMN``, Cassandra ``ALTER TABLE … ADD``) are ``tenant-admin``: that is what their token
allowed before, so nobody is locked out by an upgrade; ``fieldgate up`` makes ``admin`` the
instance admin at start.

**Generations** (docs/security.md, "Tokens"): every user has a ``generation``, a random value
replaced whenever what a token of the user claims stops being true — the password, the role,
the customer or the tenant changes, or the user is deleted (a user created again under the
same name gets a new one). Tokens carry it, and every request compares it with the stored one
(:class:`fieldgate.cloud.api.rest.auth.UserSessions`), so such a change ends the user's tokens at
once instead of at their expiry. Setting a user's password to the one it has, with the same
tenant, role and customer, changes nothing (a restart that sets the admin's password again does
not end the admin's tokens). ``delete_tenant`` removes every user of a tenant (the store is one
of the tenant-owned stores, :class:`fieldgate.cloud.composition.TenantStores`).

Create-if-absent (:meth:`UserStoreBase.create`, what makes the first admin) is one conditional
write on both backends: of two processes creating the same user at once, one wins and the
other's password is never stored.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fieldgate.cloud.domain.users import (
    LEGACY_ROLE,
    PasswordHash,
    Role,
    UserRecord,
    check_new_user,
    check_password,
    check_role,
)
from fieldgate.cloud.store import TenantOwned

T = TypeVar("T")


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


class Hasher(Protocol):
    """The hashing policy a store is given (blocking: the store calls it in a worker thread)."""

    def hash(self, password: str) -> PasswordHash: ...

    def verify(self, password: str, stored: PasswordHash | None) -> tuple[bool, bool]:
        """(the password matches, the stored hash should be replaced by :meth:`hash`); an
        unknown user (``stored`` None) costs what a known one does and never matches."""
        ...


def new_generation() -> str:
    """A fresh user generation (module docstring)."""
    return secrets.token_hex(8)


def user_record(name: Any, tenant: Any, role: Any, customer: Any, generation: Any = None) -> UserRecord:
    """A user from a stored row (a null role is a user from before roles; an unknown one, stored
    by a newer version, is read as the least role)."""
    try:
        parsed = Role(role) if role else LEGACY_ROLE
    except ValueError:
        parsed = Role.VIEWER
    return UserRecord(
        str(name), str(tenant), parsed, str(customer) if customer else None, str(generation or "")
    )


def password_hash(phc: Any, salt: Any, digest: Any, n: Any, r: Any, p: Any) -> PasswordHash:
    """A stored hash from its columns (the scrypt ones are null or empty once argon2id is set)."""
    return PasswordHash(phc or None, bytes(salt or b""), bytes(digest or b""), n or 0, r or 0, p or 0)


@dataclass(frozen=True, slots=True)
class StoredUser:
    """A user's row: what the API shows and the password hash."""

    record: UserRecord
    hash: PasswordHash


@dataclass(frozen=True, slots=True)
class Replace:
    """Write the whole user (created, or every column replaced), its hash an argon2id PHC."""

    record: UserRecord
    phc: str


@dataclass(frozen=True, slots=True)
class Rehash:
    """Replace the hash that was read by ``phc`` (a login's upgrade); the backend leaves a hash
    changed meanwhile alone where it can tell."""

    phc: str


Write = Replace | Rehash


def same_claims(current: UserRecord | None, tenant: str, role: Role, customer: str | None) -> bool:
    """Whether ``current`` already has this tenant, role and customer (a token of it stays true)."""
    return current is not None and (current.tenant, current.role, current.customer) == (
        tenant,
        role,
        customer,
    )


class UserStoreBase:
    """The rules of :class:`UserStore` over a backend's row primitives (module docstring)."""

    def __init__(self, hasher: Hasher) -> None:
        self._hasher = hasher

    # --- primitives (backends) -----------------------------------------------------------------

    async def _read_write(self, user: str, step: Callable[[StoredUser | None], tuple[T, Write | None]]) -> T:
        """Read ``user``'s row, call ``step`` with it (blocking: it hashes; run it in a worker
        thread) and apply the write it returns, in one transaction where the backend has them;
        what ``step`` returned first."""
        raise NotImplementedError

    async def _insert(self, record: UserRecord, phc: str) -> bool:
        """Store a new user; False (nothing written) if the name is taken."""
        raise NotImplementedError

    async def _update(
        self, user: str, phc: str | None, role: Role, customer: str | None, generation: str | None
    ) -> bool:
        """Set the role, customer and generation (and the hash, given ``phc``) of an existing
        user; False if there is none."""
        raise NotImplementedError

    async def _read(self, user: str) -> UserRecord | None:
        raise NotImplementedError

    async def _records(self, tenant: str | None) -> list[UserRecord]:
        """The users of ``tenant`` (of every tenant if None), in any order."""
        raise NotImplementedError

    async def _delete(self, user: str) -> bool:
        raise NotImplementedError

    async def _delete_all(self, tenant: str) -> bool:
        """Delete every user of ``tenant``; False if it had none."""
        raise NotImplementedError

    # --- the rules -----------------------------------------------------------------------------

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

        def step(current: StoredUser | None) -> tuple[None, Write | None]:
            if (
                current is not None
                and same_claims(current.record, tenant, parsed, customer)
                and self._hasher.verify(password, current.hash)[0]
            ):
                return None, None
            record = UserRecord(user, tenant, parsed, customer, new_generation())
            return None, Replace(record, self._phc(password))

        await self._read_write(user, step)

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
        phc = await asyncio.to_thread(self._phc, password)
        return await self._insert(UserRecord(user, tenant, parsed, customer, new_generation()), phc)

    async def authenticate(self, user: str, password: str) -> UserRecord | None:
        """The user if ``password`` is its password (re-hashing a legacy or weaker hash), else None."""

        def step(current: StoredUser | None) -> tuple[UserRecord | None, Write | None]:
            ok, rehash = self._hasher.verify(password, None if current is None else current.hash)
            if not ok or current is None:
                return None, None
            return current.record, Rehash(self._phc(password)) if rehash else None

        return await self._read_write(user, step)

    async def verify(self, user: str, password: str) -> bool:
        return await self.authenticate(user, password) is not None

    async def get(self, user: str) -> UserRecord | None:
        return await self._read(user)

    async def list_users(self, tenant: str | None = None) -> list[UserRecord]:
        """Users by name, of ``tenant`` or of every tenant."""
        return sorted(await self._records(tenant), key=lambda u: u.name)

    async def update(
        self, user: str, *, password: str | None = None, role: Role | None = None, customer: str | None = None
    ) -> UserRecord | None:
        """Change the password and/or the role (a customer role needs ``customer``; another role
        drops it); the updated user, or None if it does not exist."""
        current = await self.get(user)
        if current is None:
            return None
        new_customer = customer if customer is not None or role is not None else current.customer
        new_role = check_role(role if role is not None else current.role, new_customer)
        if password is not None:
            check_password(password)
        # A new password, role or customer ends the user's tokens (module docstring).
        changed = password is not None or (new_role, new_customer) != (current.role, current.customer)
        generation = new_generation() if changed else current.generation
        phc = None if password is None else await asyncio.to_thread(self._phc, password)
        if not await self._update(user, phc, new_role, new_customer, generation or None):
            return None
        return UserRecord(user, current.tenant, new_role, new_customer, generation)

    async def delete(self, user: str) -> bool:
        return await self._delete(user)

    async def ensure_tenant(self, tenant: str) -> None:
        """Nothing to provision: users of a tenant are rows of the one table."""

    async def delete_tenant(self, tenant: str) -> bool:
        """Delete every user of ``tenant``; False if it had none."""
        return await self._delete_all(tenant)

    def forget_tenant(self, tenant: str) -> None:
        """Nothing cached: every call reads the store."""

    async def tenant_of(self, user: str) -> str | None:
        found = await self.get(user)
        return None if found is None else found.tenant

    async def exists(self, user: str) -> bool:
        return await self.get(user) is not None

    def _phc(self, password: str) -> str:
        phc = self._hasher.hash(password).phc
        if phc is None:
            raise TypeError("the hasher returned no PHC string")
        return phc
