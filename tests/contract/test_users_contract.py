"""The user store contract on every backend (SQLite file, Cassandra instance keyspace):
verification, tenants, password change, restart, create-if-absent, refused names; roles and
customers, update/list/delete; a store of the schema from before roles (scrypt hashes) migrated,
its hashes replaced by argon2id at the next successful login; the generation tokens carry,
changed by whatever changes what a token says; a deleted tenant's users deleted.
(The SQLite file's "never in clear" check is in tests/integration/test_api_users.py.)"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing

import pytest

from fieldgate.cloud.domain.users import LEGACY_ROLE, UserRecord
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.services.access import Role
from fieldgate.cloud.services.users import scrypt_hash
from fieldgate.cloud.store.cassandra.session import CassandraSession, instance_keyspace
from fieldgate.cloud.store.cassandra.users import cassandra_migrations
from tests.contract.conftest import Backend

PW = "correct horse battery staple"


async def test_passwords_are_verified_and_survive_a_restart(backend: Backend) -> None:
    users = backend.users()
    await users.start()
    try:
        assert not await users.exists("admin")
        await users.set_password("admin", PW)
        await users.set_password("carol", PW, tenant="beta")
        assert await users.exists("admin") and await users.exists("carol")
        assert not await users.exists("nobody")
        assert await users.verify("admin", PW)
        assert not await users.verify("admin", PW[:-1])
        assert not await users.verify("nobody", PW)
        assert await users.tenant_of("admin") == "default"
        assert await users.tenant_of("carol") == "beta"
        assert await users.tenant_of("nobody") is None
    finally:
        await users.stop()

    again = backend.users()  # another instance (a restart, or another replica)
    await again.start()
    try:
        assert await again.verify("carol", PW)
        await again.set_password("carol", "new-secret", tenant="gamma")
        assert await again.verify("carol", "new-secret")
        assert not await again.verify("carol", PW)
        assert await again.tenant_of("carol") == "gamma"
    finally:
        await again.stop()


async def test_create_never_replaces_an_existing_user(backend: Backend) -> None:
    users = backend.users()
    await users.start()
    try:
        assert await users.create("admin", "first-password")
        assert not await users.create("admin", "second-password", tenant="beta")
        assert await users.verify("admin", "first-password") and not await users.verify(
            "admin", "second-password"
        )
        assert await users.tenant_of("admin") == "default"
    finally:
        await users.stop()


BAD = [
    ("", PW, "default"),
    ("a b", PW, "default"),
    ("ok", "", "default"),
    ("ok", "seven-7", "default"),  # shorter than MIN_PASSWORD
    ("ok", PW, "../x"),
]


async def test_bad_users_are_refused(backend: Backend) -> None:
    users = backend.users()
    await users.start()
    try:
        for user, password, tenant in BAD:
            with pytest.raises(InvalidRequest):
                await users.set_password(user, password, tenant=tenant)
            with pytest.raises(InvalidRequest):
                await users.create(user, password, tenant=tenant)
        assert not await users.exists("ok")
    finally:
        await users.stop()


async def test_roles_customers_update_list_and_delete(backend: Backend) -> None:
    users = backend.users()
    await users.start()
    try:
        await users.set_password("root", PW, role=Role.INSTANCE_ADMIN)
        assert await users.create("cora", PW, tenant="beta", role=Role.CUSTOMER, customer="c1")
        assert await users.create("vera", PW, tenant="beta", role=Role.VIEWER)
        assert await users.create("old", PW)  # no role given: what users had before roles
        assert await users.authenticate("cora", PW) == UserRecord("cora", "beta", Role.CUSTOMER, "c1")
        assert await users.authenticate("cora", "wrong") is None
        assert await users.authenticate("nobody", PW) is None
        assert (await users.get("root")) == UserRecord("root", "default", Role.INSTANCE_ADMIN)
        assert (await users.get("old")) == UserRecord("old", "default", LEGACY_ROLE)
        assert [u.name for u in await users.list_users("beta")] == ["cora", "vera"]
        assert [u.name for u in await users.list_users()] == ["cora", "old", "root", "vera"]

        promoted = await users.update("vera", role=Role.OPERATOR, password="new-password")
        assert promoted == UserRecord("vera", "beta", Role.OPERATOR)
        assert await users.verify("vera", "new-password") and not await users.verify("vera", PW)
        with pytest.raises(InvalidRequest, match="at least 8"):
            await users.update("vera", password="short")
        assert await users.update("cora", customer="c2") == UserRecord("cora", "beta", Role.CUSTOMER, "c2")
        assert await users.update("cora", role=Role.VIEWER) == UserRecord("cora", "beta", Role.VIEWER)
        assert await users.update("nobody", role=Role.VIEWER) is None
        with pytest.raises(InvalidRequest):
            await users.update("vera", role=Role.CUSTOMER)  # a customer user needs its customer
        with pytest.raises(InvalidRequest):
            await users.update("vera", customer="c1")  # only customer users have one
        with pytest.raises(InvalidRequest):
            await users.create("x", PW, role=Role.CUSTOMER)
        with pytest.raises(InvalidRequest):
            await users.create("x", PW, role="wizard")  # type: ignore[arg-type]

        assert await users.delete("vera") and not await users.delete("vera")
        assert await users.get("vera") is None and not await users.verify("vera", "new-password")
    finally:
        await users.stop()


async def _store_legacy_scrypt_user(backend: Backend, name: str, password: str) -> None:
    """A user as the stores wrote it before roles and argon2 (schema of then, scrypt hash)."""
    h = scrypt_hash(password)
    if backend.kind == "sqlite":
        path = backend.config.data_dir / "users.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(
                "CREATE TABLE users (name TEXT PRIMARY KEY, tenant TEXT NOT NULL, salt BLOB NOT NULL,"
                " hash BLOB NOT NULL, n INTEGER NOT NULL, r INTEGER NOT NULL, p INTEGER NOT NULL,"
                " updated_ms INTEGER NOT NULL)"
            )
            conn.execute(
                "INSERT INTO users VALUES (?, 'beta', ?, ?, ?, ?, ?, 0)",
                (name, h.salt, h.digest, h.n, h.r, h.p),
            )
        return
    store = backend.config.store
    ks = instance_keyspace(store.keyspace_prefix)
    session = CassandraSession(store.hosts[0], store.port)
    await session.start()
    try:
        await session.migrate(ks, "users", cassandra_migrations(ks)[:1], replication=1)
        await session.execute(
            f"INSERT INTO {ks}.users (name, tenant, salt, hash, n, r, p, updated_ms)"
            " VALUES (%s, 'beta', %s, %s, %s, %s, %s, 0)",
            (name, h.salt, h.digest, h.n, h.r, h.p),
        )
    finally:
        await session.stop()


async def _stored_hash(backend: Backend, name: str) -> tuple[str | None, bytes | None]:
    if backend.kind == "sqlite":
        with closing(sqlite3.connect(backend.config.data_dir / "users.db")) as conn:
            row = conn.execute("SELECT phc, hash FROM users WHERE name = ?", (name,)).fetchone()
        return row[0], bytes(row[1]) if row[1] else None
    store = backend.config.store
    ks = instance_keyspace(store.keyspace_prefix)
    session = CassandraSession(store.hosts[0], store.port)
    await session.start()
    try:
        rows = await session.execute(f"SELECT phc, hash FROM {ks}.users WHERE name = %s", (name,))
    finally:
        await session.stop()
    return rows[0][0], bytes(rows[0][1]) if rows[0][1] else None


async def test_a_store_from_before_roles_is_migrated_and_scrypt_is_rehashed_at_login(
    backend: Backend,
) -> None:
    await _store_legacy_scrypt_user(backend, "legacy", PW)
    users = backend.users()
    await users.start()  # migrates the old schema
    try:
        assert await users.get("legacy") == UserRecord("legacy", "beta", LEGACY_ROLE)
        assert (await _stored_hash(backend, "legacy"))[0] is None  # still scrypt
        assert await users.authenticate("legacy", "wrong") is None
        assert (await _stored_hash(backend, "legacy"))[0] is None  # a failed login changes nothing
        assert await users.authenticate("legacy", PW) == UserRecord("legacy", "beta", LEGACY_ROLE)
        phc, digest = await _stored_hash(backend, "legacy")
        assert phc is not None and phc.startswith("$argon2id$") and not digest
        assert await users.verify("legacy", PW) and not await users.verify("legacy", PW + "x")
    finally:
        await users.stop()
    again = backend.users()  # another replica: the upgraded hash, the migrated schema
    await again.start()
    try:
        assert await again.verify("legacy", PW)
    finally:
        await again.stop()


async def test_the_generation_changes_with_what_a_token_says(backend: Backend) -> None:
    users = backend.users()
    await users.start()
    try:
        assert await users.create("vera", PW, tenant="beta", role=Role.VIEWER)
        g0 = (await users.get("vera")).generation  # type: ignore[union-attr]
        assert g0 and (await users.authenticate("vera", PW)).generation == g0  # type: ignore[union-attr]
        # Nothing a token says changes: the generation stays (a restart setting the same password).
        await users.set_password("vera", PW, tenant="beta", role=Role.VIEWER)
        assert (await users.update("vera", role=Role.VIEWER)).generation == g0  # type: ignore[union-attr]
        assert (await users.get("vera")).generation == g0  # type: ignore[union-attr]
        seen = {g0}
        changes: list[Callable[[], Awaitable[object]]] = [
            lambda: users.update("vera", role=Role.OPERATOR),
            lambda: users.update("vera", password="new-password"),
            lambda: users.set_password("vera", "new-password", tenant="gamma", role=Role.OPERATOR),
            lambda: users.update("vera", role=Role.CUSTOMER, customer="c1"),
            lambda: users.update("vera", customer="c2"),
        ]
        for change in changes:
            await change()
            generation = (await users.get("vera")).generation  # type: ignore[union-attr]
            assert generation not in seen
            seen.add(generation)
        # Another instance (replica) reads the same generation.
        other = backend.users()
        await other.start()
        try:
            assert (await other.get("vera")).generation == generation  # type: ignore[union-attr]
        finally:
            await other.stop()
        # Deleted and created again under the same name: a new one.
        assert await users.delete("vera")
        assert await users.create("vera", "new-password", tenant="gamma", role=Role.OPERATOR)
        assert (await users.get("vera")).generation not in seen  # type: ignore[union-attr]
    finally:
        await users.stop()


async def test_delete_tenant_deletes_the_tenants_users_only(backend: Backend) -> None:
    users = backend.users()
    await users.start()
    try:
        for name, tenant in (("a1", "acme"), ("a2", "acme"), ("b1", "beta")):
            assert await users.create(name, PW, tenant=tenant)
        assert await users.delete_tenant("acme") is True
        assert await users.list_users("acme") == []
        assert not await users.verify("a1", PW) and await users.verify("b1", PW)
        assert await users.delete_tenant("acme") is False
        await users.ensure_tenant("acme")  # nothing to provision
        assert await users.list_users("acme") == []
    finally:
        await users.stop()
