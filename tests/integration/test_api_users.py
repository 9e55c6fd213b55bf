"""The user store: scrypt hashes on disk, verification, password change, restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.services.users import PasswordHasher
from fieldgate.cloud.store.sqlite.users import SqliteUsers

pytestmark = pytest.mark.integration


async def test_passwords_are_verified_and_never_stored_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    users = SqliteUsers(path, PasswordHasher())
    await users.start()
    await users.set_password("admin", "correct horse battery staple")
    await users.set_password("carol", "correct horse battery staple", tenant="beta")

    assert await users.verify("admin", "correct horse battery staple")
    assert not await users.verify("admin", "correct horse battery stapl")
    assert not await users.verify("nobody", "correct horse battery staple")
    assert await users.tenant_of("admin") == "default"
    assert await users.tenant_of("carol") == "beta"
    assert await users.tenant_of("nobody") is None
    await users.stop()

    raw = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("users.db*")))  # noqa: ASYNC240
    assert b"correct horse" not in raw

    # a restarted store still knows the users; a new password replaces the old one
    again = SqliteUsers(path, PasswordHasher())
    await again.start()
    assert await again.verify("carol", "correct horse battery staple")
    await again.set_password("carol", "new-secret", tenant="beta")
    assert await again.verify("carol", "new-secret")
    assert not await again.verify("carol", "correct horse battery staple")
    await again.stop()


@pytest.mark.parametrize(
    ("user", "password", "tenant"),
    [("", "pw", "default"), ("a b", "pw", "default"), ("ok", "", "default"), ("ok", "pw", "../x")],
)
async def test_bad_users_are_refused(tmp_path: Path, user: str, password: str, tenant: str) -> None:
    users = SqliteUsers(tmp_path / "users.db", PasswordHasher())
    await users.start()
    with pytest.raises(InvalidRequest):
        await users.set_password(user, password, tenant=tenant)
    await users.stop()
