"""What only the Cassandra event store has, against a real Cassandra: a keyspace per tenant (names,
isolation, none made by reads), the lightweight-transaction mode, the TTL and the schema
migrations. The behaviour both event stores share is in tests/contract/test_events_contract.py.

The session shares one Cassandra, so every test uses fresh tenant tokens (fresh keyspaces).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.ids import event_id
from fieldgate.cloud.store.cassandra.events import (
    SCHEMA_VERSION,
    CassandraEventStore,
    _migrations,
    keyspace_name,
)
from fieldgate.cloud.store.cassandra.session import CassandraSession
from fieldgate.cloud.store.events import AssignmentEventQuery, EventQuery
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.distributed

T0 = 1_700_000_000_000


def fresh(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def measurement(
    tenant: str, device: str = "dev-1", *, t: int = T0, alt: str | None = None, received: int = 0
) -> pb.Event:
    alt = alt or uuid.uuid4().hex
    e = pb.Event(
        tenant=tenant,
        device=device,
        alternate_id=alt,
        id=event_id(tenant, device, alt),
        event_time_ms=t,
        received_time_ms=received or t,
    )
    e.measurement.values["temperature"] = 21.5
    return e


def assigned(e: pb.Event, assignment: str) -> pb.Event:
    e.assignment = assignment
    return e


def make_store(cassandra: Any, **kw: Any) -> CassandraEventStore:
    return CassandraEventStore(CassandraSession(cassandra.host, cassandra.port), **kw)


@pytest.fixture
async def store(cassandra: Any) -> AsyncIterator[CassandraEventStore]:
    s = make_store(cassandra)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def tenant() -> str:
    return fresh()


async def test_lightweight_transaction_mode_is_idempotent_too(cassandra: Any, tenant: str) -> None:
    s = make_store(cassandra, dedupe="lwt")
    await s.start()
    try:
        e = measurement(tenant, alt="lwt")
        assert await s.add(tenant, [e, measurement(tenant)]) != []
        assert await s.add(tenant, [e]) == []
        assert (await s.list_device_events(EventQuery(tenant, "dev-1"))).total == 2
    finally:
        await s.stop()


async def test_tenants_are_separate_keyspaces(store: CassandraEventStore) -> None:
    acme, globex = fresh("acme-"), fresh("globex_")
    a = measurement(acme, "shared-token")
    b = measurement(globex, "shared-token")
    await store.add(acme, [a])
    await store.add(globex, [b])
    pa = await store.list_device_events(EventQuery(acme, "shared-token"))
    pb_ = await store.list_device_events(EventQuery(globex, "shared-token"))
    assert pa.items == [a] and pb_.items == [b]
    assert await store.get_event(globex, a.id) is None
    assert await store.get_event(acme, b.id) is None
    assert await store.keyspace_exists(acme) and await store.keyspace_exists(globex)
    assert keyspace_name(acme) != keyspace_name(globex)


async def test_keyspace_names_are_distinct_and_valid() -> None:
    names = {keyspace_name(t) for t in ("a-b", "a_b", "a__b", "a_db", "x" * 63, "x" * 62 + "y")}
    assert len(names) == 6
    assert all(len(n) <= 48 and n.replace("_", "").isalnum() for n in names)
    prefixed = {keyspace_name(t, "e2e0123456") for t in ("a-b", "a_b", "x" * 63, "x" * 62 + "y")}
    assert len(prefixed) == 4 and all(len(n) <= 48 and n.startswith("e2e0123456_") for n in prefixed)
    assert keyspace_name("acme", "fg") == keyspace_name("acme") == "fg_acme"
    for bad in ("", "fg_x", "Fg", "1fg", "x" * 11):
        with pytest.raises(InvalidRequest):
            keyspace_name("acme", bad)


async def test_reads_of_an_unknown_tenant_create_no_keyspace(store: CassandraEventStore) -> None:
    nobody = fresh("nobody")
    assert (await store.list_device_events(EventQuery(nobody, "dev-1"))).total == 0
    assert await store.get_event(nobody, "x") is None
    assert (await store.list_assignment_events(AssignmentEventQuery(nobody, "shared"))).total == 0
    assert await store.events_for_invocation(nobody, "x") == []
    assert not await store.keyspace_exists(nobody)


async def test_events_survive_reconnect_and_schema_is_migrated_once(cassandra: Any, tenant: str) -> None:
    e = measurement(tenant)
    s1 = make_store(cassandra, tenants=[tenant])
    await s1.start()
    await s1.add(tenant, [e])
    await s1.stop()
    s2 = make_store(cassandra, tenants=[tenant])
    await s2.start()
    try:
        assert await s2.get_event(tenant, e.id) == e
        assert await s2.add(tenant, [e]) == []
        rows = await s2._run(f"SELECT version FROM {keyspace_name(tenant)}.schema_version")
        assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        await s2.stop()


async def test_ttl_expires_a_tenants_events(cassandra: Any) -> None:
    short, keep = fresh("ttl"), fresh("keep")
    # Both keyspaces are created at start: creating one takes seconds, longer than the TTL.
    s = make_store(cassandra, ttl_s_by_tenant={short: 2}, tenants=[short, keep])
    await s.start()
    try:
        await s.add(short, [assigned(measurement(short), "A1")])
        await s.add(keep, [assigned(measurement(keep), "A1")])
        assert (await s.list_device_events(EventQuery(short, "dev-1"))).total == 1
        assert (await s.list_assignment_events(AssignmentEventQuery(short, "A1"))).total == 1

        async def expired() -> bool:
            by_device = await s.list_device_events(EventQuery(short, "dev-1"))
            by_assignment = await s.list_assignment_events(AssignmentEventQuery(short, "A1"))
            return by_device.total == 0 and by_assignment.total == 0

        await eventually(expired, 30, "the events with a 2 s TTL gone", interval=0.5)
        assert (await s.list_device_events(EventQuery(keep, "dev-1"))).total == 1
        assert (await s.list_assignment_events(AssignmentEventQuery(keep, "A1"))).total == 1
    finally:
        await s.stop()


async def test_a_keyspace_of_schema_version_1_is_migrated_to_2(cassandra: Any, tenant: str) -> None:
    """A keyspace created by the previous release (version 1 only) gains the assignment tables
    when the service opens it; events written from then on are listed by assignment."""
    ks = keyspace_name(tenant)
    s = make_store(cassandra)
    await s.start()
    try:
        await s._run(
            f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        )
        await s._run(
            f"CREATE TABLE {ks}.schema_version ("
            " component text, version int, applied_ms bigint, PRIMARY KEY (component, version))"
        )
        version, statements = _migrations(ks, 1)[0]
        assert version == 1
        for stmt in statements:
            await s._run(stmt)
        await s._run(
            f"INSERT INTO {ks}.schema_version (component, version, applied_ms) VALUES ('events', 1, 0)"
        )
        tables = await s._run("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (ks,))
        assert "events_by_assignment" not in {r[0] for r in tables}

        e = assigned(measurement(tenant), "A1")
        assert await s.add(tenant, [e]) == [e]  # opens the keyspace: migrates it
        rows = await s._run(f"SELECT version FROM {ks}.schema_version WHERE component = 'events'")
        assert sorted(r[0] for r in rows) == [1, 2]
        tables = await s._run("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (ks,))
        assert {"events_by_assignment", "events_by_assignment_kind", "assignment_days"} <= {
            r[0] for r in tables
        }
        assert (await s.list_assignment_events(AssignmentEventQuery(tenant, "A1"))).items == [e]
    finally:
        await s.stop()
