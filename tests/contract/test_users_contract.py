"""The user store contract on every backend (SQLite file, Cassandra instance keyspace):
verification, tenants, password change, restart, create-if-absent, refused names.
(The SQLite file's "never in clear" check is in tests/integration/test_api_users.py.)"""

from __future__ import annotations

import pytest

from fieldgate.cloud.errors import InvalidRequest
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
        assert await users.create("admin", "first")
        assert not await users.create("admin", "second", tenant="beta")
        assert await users.verify("admin", "first") and not await users.verify("admin", "second")
        assert await users.tenant_of("admin") == "default"
    finally:
        await users.stop()


BAD = [("", "pw", "default"), ("a b", "pw", "default"), ("ok", "", "default"), ("ok", "pw", "../x")]


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
