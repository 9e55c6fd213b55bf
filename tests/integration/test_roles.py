"""User management over REST, login throttling, signing-key rotation and token revocation (a
deleted or changed user's token refused at once), through the real app."""

from __future__ import annotations

from pathlib import Path

import httpx
import jwt
import pytest

from fieldgate.cloud.errors import Unauthenticated
from fieldgate.cloud.services.access import Principal, Role
from fieldgate.cloud.services.auth import SESSION_CACHE_S, LoginThrottle, TokenAuthority, UserSessions, key_id
from fieldgate.cloud.services.users import PasswordHasher
from fieldgate.cloud.store.sqlite.users import SqliteUsers
from tests.helpers.api_stack import SECRET, USERS, api_stack, login

pytestmark = pytest.mark.integration

OLD = "the-old-signing-key-that-is-long-enough-for-hs256-000"


async def token_of(client: httpx.AsyncClient, user: str, password: str) -> httpx.Response:
    return await client.post("/api/v1/auth/token", data={"username": user, "password": password})


async def test_tenant_admins_manage_their_tenants_users_only(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as stack, stack.client() as client:
        admin, bob, root = [await login(client, u) for u in ("admin", "bob", "root")]
        new = {"name": "nina", "password": "pw-of-nina", "role": "operator"}
        r = await client.post("/api/v1/users", json=new, headers=admin)
        assert r.status_code == 201, r.text
        assert r.json() == {"name": "nina", "tenant": "default", "role": "operator", "customer": None}
        assert "password" not in r.text and "argon2" not in r.text
        assert (await client.post("/api/v1/users", json=new, headers=admin)).status_code == 409
        # the new user logs in with its role
        r = await token_of(client, "nina", "pw-of-nina")
        nina = {"Authorization": f"Bearer {r.json()['access_token']}"}
        assert (await client.get("/api/v1/devices", headers=nina)).status_code == 200
        assert (await client.get("/api/v1/users", headers=nina)).status_code == 403

        names = {u["name"] for u in (await client.get("/api/v1/users", headers=admin)).json()}
        assert names == {"admin", "olga", "vera", "cora", "nina"}  # not root (instance admin), not bob
        assert (await client.get("/api/v1/users/root", headers=admin)).status_code == 404
        assert (await client.get("/api/v1/users/nina", headers=bob)).status_code == 404
        assert (
            await client.patch("/api/v1/users/nina", json={"role": "viewer"}, headers=bob)
        ).status_code == 404
        assert (await client.delete("/api/v1/users/nina", headers=bob)).status_code == 404
        # a tenant admin can neither grant instance-admin nor create users elsewhere
        for body in (
            {**new, "name": "evil", "role": "instance-admin"},
            {**new, "name": "evil", "tenant": "beta"},
        ):
            assert (await client.post("/api/v1/users", json=body, headers=admin)).status_code == 403
        r = await client.patch("/api/v1/users/nina", json={"role": "instance-admin"}, headers=admin)
        assert r.status_code == 403
        # customer users need a customer
        r = await client.post("/api/v1/users", json={**new, "name": "cus", "role": "customer"}, headers=admin)
        assert r.status_code == 422
        r = await client.patch(
            "/api/v1/users/nina", json={"role": "viewer", "password": "new-pw-123"}, headers=admin
        )
        assert r.status_code == 200 and r.json()["role"] == "viewer"
        assert (await token_of(client, "nina", "pw-of-nina")).status_code == 401
        assert (await token_of(client, "nina", "new-pw-123")).status_code == 200
        assert (await client.delete("/api/v1/users/admin", headers=admin)).status_code == 409  # oneself
        assert (await client.delete("/api/v1/users/nina", headers=admin)).status_code == 204
        assert (await token_of(client, "nina", "new-pw-123")).status_code == 401

        # the instance admin: every tenant's users, users for any existing tenant
        everyone = {u["name"] for u in (await client.get("/api/v1/users", headers=root)).json()}
        assert {"root", "bob", "admin"} <= everyone
        r = await client.post("/api/v1/users", json={**new, "name": "bea", "tenant": "beta"}, headers=root)
        assert r.status_code == 201 and r.json()["tenant"] == "beta"
        r = await client.post("/api/v1/users", json={**new, "name": "x", "tenant": "nope"}, headers=root)
        assert r.status_code == 422
        assert (await client.get("/api/v1/users/bea", headers=bob)).status_code == 200


async def test_repeated_failed_logins_are_throttled(tmp_path: Path) -> None:
    now = [1000.0]
    throttle = LoginThrottle(user_limit=5, address_limit=8, base_s=30, cap_s=600, clock=lambda: now[0])
    async with api_stack(tmp_path, throttle=throttle) as stack, stack.client() as client:
        for _ in range(5):
            assert (await token_of(client, "vera", "wrong")).status_code == 401
        r = await token_of(client, "vera", "vera-pw-12")  # even the right password waits now
        assert r.status_code == 429 and r.headers["Retry-After"] == "30"
        now[0] += 31
        assert (await token_of(client, "vera", "wrong")).status_code == 401
        r = await token_of(client, "vera", "vera-pw-12")
        assert r.status_code == 429 and r.headers["Retry-After"] == "60"  # doubled
        now[0] += 61
        assert (await token_of(client, "vera", "vera-pw-12")).status_code == 200  # success clears the user
        assert (await token_of(client, "vera", "wrong")).status_code == 401
        # the address: 8 failures over any user names (7 so far), then everyone from it waits
        assert (await token_of(client, "nobody-1", "x")).status_code == 401
        r = await token_of(client, "olga", "olga-pw-12")
        assert r.status_code == 429
        now[0] += 10_000  # beyond the cap: forgotten
        assert (await token_of(client, "olga", "olga-pw-12")).status_code == 200


def test_the_throttle_map_is_bounded() -> None:
    throttle = LoginThrottle(max_keys=100, clock=lambda: 0.0)
    for i in range(1000):
        throttle.failed([f"user:u{i}", f"addr:10.0.{i // 250}.{i % 250}"])
    assert len(throttle) == 100


async def test_tokens_of_the_previous_key_work_during_a_rotation_only(tmp_path: Path) -> None:
    # One instance (the same stores) restarted with each configuration.
    async with api_stack(tmp_path, secret=OLD) as stack, stack.client() as client:
        old_token = await login(client, "admin")
    # rotated: the new key is current, the old one previous — both tokens work
    async with api_stack(tmp_path, secret=SECRET, previous_secrets=(OLD,)) as stack:
        async with stack.client() as client:
            new_token = await login(client, "admin")
            assert new_token != old_token
            for headers in (old_token, new_token):
                assert (await client.get("/api/v1/devices", headers=headers)).status_code == 200
    # the old key dropped: its tokens are refused, the new key's still work
    async with api_stack(tmp_path, secret=SECRET) as stack, stack.client() as client:
        r = await client.get("/api/v1/devices", headers=old_token)
        assert r.status_code == 401 and "signing key" in r.json()["detail"]
        assert (await client.get("/api/v1/devices", headers=new_token)).status_code == 200


async def test_a_deleted_or_changed_users_token_stops_working_at_once(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as stack, stack.client() as client:
        admin, vera, olga, cora = [await login(client, u) for u in ("admin", "vera", "olga", "cora")]
        for headers in (vera, olga, cora):
            assert (await client.get("/api/v1/devices", headers=headers)).status_code == 200

        # Deleted: refused at once, not at the token's expiry.
        assert (await client.delete("/api/v1/users/vera", headers=admin)).status_code == 204
        r = await client.get("/api/v1/devices", headers=vera)
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
        # Created again with the same name, role and password: the old token stays refused.
        again = {"name": "vera", "password": USERS["vera"][0], "role": "viewer"}
        assert (await client.post("/api/v1/users", json=again, headers=admin)).status_code == 201
        assert (await client.get("/api/v1/devices", headers=vera)).status_code == 401
        assert (await client.get("/api/v1/devices", headers=await login(client, "vera"))).status_code == 200

        # Demoted (operator -> viewer): refused at once; a new login has the new role.
        r = await client.patch("/api/v1/users/olga", json={"role": "viewer"}, headers=admin)
        assert r.status_code == 200, r.text
        assert (await client.get("/api/v1/devices", headers=olga)).status_code == 401
        olga = await login(client, "olga")
        assert (await client.get("/api/v1/devices", headers=olga)).status_code == 200
        r = await client.post("/api/v1/device-types", json={"token": "x"}, headers=olga)
        assert r.status_code == 403  # a viewer now

        # Another customer, or a new password: the same.
        assert (
            await client.post("/api/v1/customer-types", json={"token": "t"}, headers=admin)
        ).status_code == 201
        c2 = {"token": "c2", "customer_type": "t"}
        assert (await client.post("/api/v1/customers", json=c2, headers=admin)).status_code == 201
        r = await client.patch("/api/v1/users/cora", json={"customer": "c2"}, headers=admin)
        assert r.status_code == 200, r.text
        assert (await client.get("/api/v1/devices", headers=cora)).status_code == 401
        r = await client.patch("/api/v1/users/olga", json={"password": "olga-new-pw"}, headers=admin)
        assert r.status_code == 200, r.text
        assert (await client.get("/api/v1/devices", headers=olga)).status_code == 401
        # A change that changes nothing a token says ends nothing.
        vera = await login(client, "vera")
        r = await client.patch("/api/v1/users/vera", json={"role": "viewer"}, headers=admin)
        assert r.status_code == 200
        assert (await client.get("/api/v1/devices", headers=vera)).status_code == 200


async def test_another_replica_refuses_a_changed_users_token_within_its_cache_time(tmp_path: Path) -> None:
    users = SqliteUsers(tmp_path / "users.db", PasswordHasher())
    await users.start()
    await users.create("uma", "pw-of-uma", role=Role.OPERATOR)
    now = [0.0]
    replica = UserSessions(users, clock=lambda: now[0])  # another api replica's check
    authority = TokenAuthority(SECRET, 3600)
    found = await users.authenticate("uma", "pw-of-uma")
    assert found is not None
    token = authority.issue(Principal("uma", "default", Role.OPERATOR), found.generation)
    assert (await replica.principal(authority, token)).user == "uma"
    await users.update("uma", role=Role.VIEWER)  # by another replica: not through this cache
    now[0] += SESSION_CACHE_S / 2
    assert (await replica.principal(authority, token)).role is Role.OPERATOR  # within the cache time
    now[0] += SESSION_CACHE_S
    with pytest.raises(Unauthenticated):  # REST 401, gRPC UNAUTHENTICATED
        await replica.principal(authority, token)
    # A token from before generations (no "gen" claim) is refused: its user logs in again.
    legacy = jwt.encode(
        {"sub": "uma", "tenant": "default", "role": "viewer", "exp": 2**40},
        SECRET,
        algorithm="HS256",
        headers={"kid": key_id(SECRET)},
    )
    with pytest.raises(Unauthenticated) as info:
        await replica.principal(authority, legacy)
    assert "generations" in str(info.value)
