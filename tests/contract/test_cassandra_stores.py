"""What only the Cassandra stores promise: replicas racing through lightweight transactions
(two store instances with connections of their own, as two processes would have), the token
secret get-or-create, and keyspace names (the instance keyspace never collides with a tenant's;
reads create no keyspace)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldgate.cloud.config import CloudConfig, StoreConfig
from fieldgate.cloud.errors import Conflict
from fieldgate.cloud.store import Page
from fieldgate.cloud.store.backend import CassandraBackend, storage_backend
from fieldgate.cloud.store.cassandra.invocations import CassandraInvocationStore
from fieldgate.cloud.store.cassandra.registry import BUCKET, CassandraRegistry
from fieldgate.cloud.store.cassandra.session import CassandraSession, instance_keyspace, keyspace_name
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from tests.contract.conftest import drop_keyspaces

ROUNDS = 12  # races per test: one lucky interleaving must not make a broken store pass


# ---------------------------------------------------------------- names (no server needed)


@given(
    st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True),
)
def test_no_tenant_keyspace_is_the_instance_keyspace(tenant: str, prefix: str) -> None:
    assert keyspace_name(tenant, prefix) != instance_keyspace(prefix)


def test_a_tenant_named_instance_keeps_its_own_keyspace() -> None:
    assert keyspace_name("instance") == "fg_instance"
    assert instance_keyspace() == "fg__instance"
    assert keyspace_name("instance-") == "fg_instance_d" != instance_keyspace()
    assert len(instance_keyspace("abcdefghij")) <= 48


# ---------------------------------------------------------------- on the real server


class Instances:
    """Fresh instances (keyspace prefixes) on the session's Cassandra, dropped after the test."""

    def __init__(self, cassandra: Any) -> None:
        self.cassandra = cassandra
        self.prefixes: list[str] = []

    def config(self) -> CloudConfig:
        config = config_for(self.cassandra)
        self.prefixes.append(config.store.keyspace_prefix)
        return config


@pytest.fixture
async def instances(cassandra: Any) -> AsyncIterator[Instances]:
    made = Instances(cassandra)
    yield made
    for prefix in made.prefixes:
        await drop_keyspaces(cassandra, prefix)


def config_for(cassandra: Any) -> CloudConfig:
    return CloudConfig(
        store=StoreConfig(
            kind="cassandra",
            hosts=(cassandra.host,),
            port=cassandra.port,
            keyspace_prefix="r" + uuid.uuid4().hex[:9],
        )
    )


def session(config: CloudConfig) -> CassandraSession:
    return CassandraBackend(config).session


@dataclass
class Replicas:
    config: CloudConfig
    one: CassandraRegistry
    two: CassandraRegistry

    def another(self) -> CassandraRegistry:
        return CassandraRegistry(session(self.config), keyspace_prefix=self.config.store.keyspace_prefix)


@pytest.fixture
async def replicas(instances: Instances) -> AsyncIterator[Replicas]:
    """Two registries on one fresh instance, each with its own connection; tenant acme with
    device type sensor."""
    config = instances.config()
    r = Replicas(
        config,
        *(CassandraRegistry(session(config), keyspace_prefix=config.store.keyspace_prefix) for _ in range(2)),
    )
    await r.one.start()
    await r.two.start()
    await r.one.ensure_tenant(model.Tenant(token="acme"))
    await r.one.create_device_type("acme", model.DeviceType(token="sensor"))
    yield r
    await r.one.stop()
    await r.two.stop()


def outcome(results: Sequence[Any]) -> tuple[list[Any], list[BaseException]]:
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    return won, lost


@pytest.mark.distributed
async def test_two_replicas_creating_the_same_device_one_wins(replicas: Replicas) -> None:
    one, two = replicas.one, replicas.two
    for i in range(ROUNDS):
        results = await asyncio.gather(
            one.create_device(
                model.Device(token=f"d{i}", tenant="acme", device_type="sensor", comments="one")
            ),
            two.create_device(
                model.Device(token=f"d{i}", tenant="acme", device_type="sensor", comments="two")
            ),
            return_exceptions=True,
        )
        won, lost = outcome(results)
        assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], Conflict), results
        fresh = replicas.another()  # no cache: what Cassandra holds
        await fresh.start()
        try:
            assert await fresh.get_device("acme", f"d{i}") == won[0]
        finally:
            await fresh.stop()
    listing = await two.list_devices("acme", 1, 100)
    assert [d.token for d in listing.items] == [f"d{i}" for i in range(ROUNDS)] and listing.total == ROUNDS


@pytest.mark.distributed
async def test_two_replicas_assigning_the_same_device_one_wins(replicas: Replicas) -> None:
    one, two = replicas.one, replicas.two
    for i in range(ROUNDS):
        await one.create_device(model.Device(token=f"d{i}", tenant="acme", device_type="sensor"))
        results = await asyncio.gather(
            one.create_assignment(model.Assignment(token=f"a{i}-one", tenant="acme", device=f"d{i}")),
            two.create_assignment(model.Assignment(token=f"a{i}-two", tenant="acme", device=f"d{i}")),
            return_exceptions=True,
        )
        won, lost = outcome(results)
        assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], Conflict), results
        loser = f"a{i}-two" if won[0].token == f"a{i}-one" else f"a{i}-one"
        for r in (one, two):
            assert await r.get_assignment("acme", loser) is None
        history = await two.list_assignments("acme", f"d{i}", 1, 10)
        assert [a.token for a in history.items] == [won[0].token]
    # Two replicas releasing the same assignment: both return the one release that was stored.
    for i in range(ROUNDS):
        active = await one.active_assignment("acme", f"d{i}")
        assert active is not None
        a, b = await asyncio.gather(
            one.release_assignment("acme", active.token), two.release_assignment("acme", active.token)
        )
        assert a == b and a.status == model.ASSIGNMENT_STATUS_RELEASED
        assert await two.get_assignment("acme", active.token) == a


@pytest.fixture
async def invocation_replicas(
    instances: Instances,
) -> AsyncIterator[tuple[CassandraInvocationStore, CassandraInvocationStore]]:
    config = instances.config()
    prefix = config.store.keyspace_prefix
    one, two = (CassandraInvocationStore(session(config), keyspace_prefix=prefix) for _ in range(2))
    await one.start()
    await two.start()
    yield one, two
    await one.stop()
    await two.stop()


def inv(i: int, expires_ms: int = 0) -> svc.InvocationState:
    return svc.InvocationState(
        id=f"inv-{i}", tenant="acme", device="dev-1", command="ping", expires_ms=expires_ms
    )


@pytest.mark.distributed
async def test_two_replicas_moving_the_same_invocation_one_wins(
    invocation_replicas: tuple[CassandraInvocationStore, CassandraInvocationStore],
) -> None:
    one, two = invocation_replicas
    for i in range(ROUNDS):
        created = await asyncio.gather(one.create(inv(i)), two.create(inv(i)), return_exceptions=True)
        won, lost = outcome(created)
        assert len(won) == 1 and isinstance(lost[0], Conflict), created
        a, b = await asyncio.gather(
            one.update_status("acme", f"inv-{i}", svc.COMMAND_STATUS_FAILED, reason="one"),
            two.update_status("acme", f"inv-{i}", svc.COMMAND_STATUS_FAILED, reason="two"),
        )
        assert a is not None and a == b  # the loser returns the winner's state
        assert await one.get("acme", f"inv-{i}") == a
    assert await two.list_pending("acme") == []


@pytest.mark.distributed
async def test_a_create_retried_after_a_crash_requeues_the_invocation(
    invocation_replicas: tuple[CassandraInvocationStore, CassandraInvocationStore],
) -> None:
    """A process that died between storing an invocation and queueing it (two writes on
    Cassandra) left a QUEUED invocation that list_pending did not show, so it was never sent;
    the create retried with the same id (a batch runner resuming) puts it back in the queues."""
    one, two = invocation_replicas
    await one.create(inv(0))
    row = await one._read("acme", "inv-0")
    ctx = await one._ctx("acme")
    assert row is not None and ctx is not None
    await one._ks.run(ctx["del_queued"], (BUCKET, row.key))  # the crash: queue entries never written
    await one._ks.run(ctx["del_queued_device"], ("dev-1", row.key))
    assert await two.list_pending("acme") == []
    with pytest.raises(Conflict):
        await two.create(inv(0))
    assert [i.id for i in await one.list_pending("acme")] == ["inv-0"]
    assert [i.id for i in await one.pending_for_device("acme", "dev-1")] == ["inv-0"]
    await one.update_status("acme", "inv-0", svc.COMMAND_STATUS_DELIVERED)
    with pytest.raises(Conflict):  # not QUEUED any more: nothing is queued again
        await two.create(inv(0))
    assert await two.list_pending("acme") == []


@pytest.mark.distributed
async def test_two_replicas_expiring_at_once_expire_each_invocation_once(
    invocation_replicas: tuple[CassandraInvocationStore, CassandraInvocationStore],
) -> None:
    one, two = invocation_replicas
    for i in range(ROUNDS):
        await one.create(inv(i, expires_ms=1_000))
    a, b = await asyncio.gather(one.expire_due(2_000), two.expire_due(2_000))
    ids = [x.id for x in a] + [x.id for x in b]
    assert sorted(ids) == sorted(f"inv-{i}" for i in range(ROUNDS))  # each once, by one of them
    assert await one.pending_for_device("acme", "dev-1") == []


@pytest.mark.distributed
async def test_replicas_get_or_create_the_same_token_secret(instances: Instances) -> None:
    config = instances.config()
    keys = await asyncio.gather(*(storage_backend(config).token_secret() for _ in range(4)))  # a session each
    assert len(set(keys)) == 1 and len(keys[0]) >= 32
    other_instance = await storage_backend(instances.config()).token_secret()
    assert other_instance != keys[0]


@pytest.mark.distributed
async def test_tenant_instance_and_the_instance_keyspace_coexist(instances: Instances) -> None:
    config = instances.config()
    prefix = config.store.keyspace_prefix
    s = session(config)
    registry = CassandraRegistry(s, keyspace_prefix=prefix)
    await registry.start()
    try:
        assert await registry.get_device("ghost", "d") is None
        assert await registry.list_devices("ghost", 1, 10) == Page([], 0, 1, 10)
        assert not await s.keyspace_exists(keyspace_name("ghost", prefix))  # reads create nothing
        await registry.ensure_tenant(model.Tenant(token="instance", name="a tenant called instance"))
        await registry.create_device_type("instance", model.DeviceType(token="t"))
        await registry.create_device(model.Device(token="d", tenant="instance", device_type="t"))
        assert await s.keyspace_exists(keyspace_name("instance", prefix))
        assert keyspace_name("instance", prefix) != instance_keyspace(prefix)
        assert [t.token for t in await registry.list_tenants()] == ["instance"]
        got = await registry.get_device("instance", "d")
        assert got is not None and got.device_type == "t"
    finally:
        await registry.stop()
