"""The Cassandra event store against a real Cassandra: the behaviour of the SQLite store's tests
(tests/unit/test_sqlite_events.py) plus keyspace-per-tenant isolation and TTL.

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
DAY = 86_400_000


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


def alert(tenant: str, device: str = "dev-1", *, t: int = T0) -> pb.Event:
    alt = uuid.uuid4().hex
    e = pb.Event(
        tenant=tenant,
        device=device,
        alternate_id=alt,
        id=event_id(tenant, device, alt),
        event_time_ms=t,
        received_time_ms=t,
    )
    e.alert.alert_type = "overheat"
    e.alert.level = pb.ALERT_LEVEL_WARNING
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


async def test_add_stores_and_get_event_returns_the_same_event(
    store: CassandraEventStore, tenant: str
) -> None:
    e = measurement(tenant)
    assert await store.add(tenant, [e]) == [e]
    assert await store.get_event(tenant, e.id) == e
    assert await store.get_event(tenant, "nope") is None
    assert await store.get_event(tenant, uuid.uuid4().hex) is None


async def test_same_alternate_id_twice_is_stored_once(store: CassandraEventStore, tenant: str) -> None:
    e = measurement(tenant, alt="retry-me")
    first = await store.add(tenant, [e, measurement(tenant)])
    again = await store.add(tenant, [e, measurement(tenant, alt="fresh")])
    assert len(first) == 2
    assert [x.alternate_id for x in again] == ["fresh"]
    assert (await store.list_device_events(EventQuery(tenant, "dev-1"))).total == 3


async def test_duplicates_within_one_batch_are_stored_once(store: CassandraEventStore, tenant: str) -> None:
    e = measurement(tenant, alt="twice")
    assert len(await store.add(tenant, [e, e])) == 1
    assert (await store.list_device_events(EventQuery(tenant, "dev-1"))).total == 1


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


async def test_same_alternate_id_on_two_devices_are_two_events(
    store: CassandraEventStore, tenant: str
) -> None:
    stored = await store.add(tenant, [measurement(tenant, "a", alt="x"), measurement(tenant, "b", alt="x")])
    assert len(stored) == 2


async def test_missing_id_gets_the_deterministic_id(store: CassandraEventStore, tenant: str) -> None:
    e = pb.Event(device="dev-1", alternate_id="abc", event_time_ms=T0, received_time_ms=T0)
    e.location.latitude = 52.5
    (stored,) = await store.add(tenant, [e])
    assert stored.id == uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/dev-1/abc").hex
    assert stored.tenant == tenant
    assert await store.get_event(tenant, stored.id) == stored


async def test_invocation_event_found_by_its_own_id_and_by_invocation(
    store: CassandraEventStore, tenant: str
) -> None:
    inv_id = uuid.uuid4().hex
    inv = pb.Event(tenant=tenant, device="dev-1", id=inv_id, alternate_id=inv_id, event_time_ms=T0)
    inv.command_invocation.invocation = inv_id
    inv.command_invocation.command = "ping"
    resp = measurement(tenant, t=T0 + 5)
    resp.command_response.invocation = inv_id
    resp.command_response.response_json = '{"pong": true}'
    await store.add(tenant, [inv, resp, measurement(tenant, t=T0 + 9)])
    assert await store.get_event(tenant, inv_id) == inv
    assert await store.events_for_invocation(tenant, inv_id) == [inv, resp]
    assert await store.add(tenant, [inv]) == []


async def test_newest_first_by_event_time_then_received_time(store: CassandraEventStore, tenant: str) -> None:
    older = measurement(tenant, t=T0, received=T0 + 100)
    same_time_later_received = measurement(tenant, t=T0 + 10, received=T0 + 50)
    same_time_early_received = measurement(tenant, t=T0 + 10, received=T0 + 20)
    newest = measurement(tenant, t=T0 + 20)
    await store.add(tenant, [same_time_early_received, newest, older, same_time_later_received])
    page = await store.list_device_events(EventQuery(tenant, "dev-1"))
    assert page.items == [newest, same_time_later_received, same_time_early_received, older]


async def test_paging_gives_every_event_once_with_total(store: CassandraEventStore, tenant: str) -> None:
    events = [measurement(tenant, t=T0 + i) for i in range(25)]
    await store.add(tenant, events)
    seen: list[pb.Event] = []
    for page_no in (1, 2, 3):
        page = await store.list_device_events(EventQuery(tenant, "dev-1", page=page_no, page_size=10))
        assert page.total == 25 and page.page == page_no and page.page_size == 10
        seen.extend(page.items)
    assert seen == list(reversed(events))
    empty = await store.list_device_events(EventQuery(tenant, "dev-1", page=4, page_size=10))
    assert empty.items == [] and empty.total == 25


async def test_paging_across_day_partitions(store: CassandraEventStore, tenant: str) -> None:
    # Three days, uneven: pages must cross partition boundaries without gaps or repeats.
    events = [measurement(tenant, t=T0 + d * DAY + i) for d, n in ((0, 4), (1, 7), (3, 5)) for i in range(n)]
    await store.add(tenant, events)
    newest_first = sorted(events, key=lambda e: -e.event_time_ms)
    seen: list[pb.Event] = []
    for page_no in range(1, 5):
        page = await store.list_device_events(EventQuery(tenant, "dev-1", page=page_no, page_size=5))
        assert page.total == 16
        seen.extend(page.items)
    assert seen == newest_first
    window = await store.list_device_events(
        EventQuery(tenant, "dev-1", since_ms=T0 + DAY + 5, until_ms=T0 + 3 * DAY)
    )
    assert [e.event_time_ms for e in window.items] == [T0 + 3 * DAY, T0 + DAY + 6, T0 + DAY + 5]


async def test_filter_by_kind_and_time_range(store: CassandraEventStore, tenant: str) -> None:
    ms = [measurement(tenant, t=T0 + i * 10) for i in range(5)]
    al = [alert(tenant, t=T0 + i * 10 + 1) for i in range(5)]
    await store.add(tenant, ms + al)
    only_alerts = await store.list_device_events(EventQuery(tenant, "dev-1", kind="alert"))
    assert only_alerts.total == 5 and all(e.HasField("alert") for e in only_alerts.items)
    window = await store.list_device_events(EventQuery(tenant, "dev-1", since_ms=T0 + 10, until_ms=T0 + 30))
    assert [e.event_time_ms for e in window.items] == [T0 + 30, T0 + 21, T0 + 20, T0 + 11, T0 + 10]
    both = await store.list_device_events(
        EventQuery(tenant, "dev-1", kind="measurement", since_ms=T0 + 15, until_ms=T0 + 40)
    )
    assert [e.event_time_ms for e in both.items] == [T0 + 40, T0 + 30, T0 + 20]


async def test_other_devices_are_not_listed(store: CassandraEventStore, tenant: str) -> None:
    await store.add(tenant, [measurement(tenant, "a"), measurement(tenant, "b"), measurement(tenant, "b")])
    page = await store.list_device_events(EventQuery(tenant, "b"))
    assert page.total == 2 and {e.device for e in page.items} == {"b"}


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


async def test_an_event_of_another_tenant_is_refused(store: CassandraEventStore, tenant: str) -> None:
    with pytest.raises(InvalidRequest):
        await store.add(tenant, [measurement(fresh())])
    assert (await store.list_device_events(EventQuery(tenant, "dev-1"))).total == 0


async def test_reads_of_an_unknown_tenant_are_empty_and_create_no_keyspace(
    store: CassandraEventStore,
) -> None:
    nobody = fresh("nobody")
    page = await store.list_device_events(EventQuery(nobody, "dev-1"))
    assert page.items == [] and page.total == 0
    assert await store.get_event(nobody, "x") is None
    assert await store.get_event("../etc", "x") is None
    assert not await store.keyspace_exists(nobody)


async def test_invalid_queries_are_rejected(store: CassandraEventStore, tenant: str) -> None:
    with pytest.raises(InvalidRequest):
        await store.list_device_events(EventQuery(tenant, "dev-1", kind="bogus"))
    with pytest.raises(InvalidRequest):
        await store.list_device_events(EventQuery(tenant, "dev-1", page=0))
    with pytest.raises(InvalidRequest):
        await store.add("../escape", [measurement(tenant)])


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


async def test_a_large_batch_is_stored(store: CassandraEventStore, tenant: str) -> None:
    events = [measurement(tenant, f"dev-{i % 7}", t=T0 + i) for i in range(3000)]
    assert len(await store.add(tenant, events)) == 3000
    assert (await store.list_device_events(EventQuery(tenant, "dev-3", page_size=1))).total == 429


# --- assignments and invocations (schema version 2) ------------------------------------------------


def assigned(e: pb.Event, assignment: str) -> pb.Event:
    e.assignment = assignment
    return e


async def test_assignment_events_newest_first_with_kind_time_and_paging(
    store: CassandraEventStore, tenant: str
) -> None:
    a1 = [assigned(measurement(tenant, t=T0 + i * 10), "A1") for i in range(12)]
    a1_alerts = [assigned(alert(tenant, t=T0 + i * 10 + 1), "A1") for i in range(3)]
    a2 = [assigned(measurement(tenant, t=T0 + 1000 + i), "A2") for i in range(4)]
    other_device = [assigned(measurement(tenant, "dev-2", t=T0 + i), "A3") for i in range(5)]
    unassigned = measurement(tenant, t=T0 - 5)
    await store.add(tenant, [*a1, *a1_alerts, *a2, *other_device, unassigned])

    everything = await store.list_assignment_events(AssignmentEventQuery(tenant, "A1"))
    assert everything.total == 15 and {e.assignment for e in everything.items} == {"A1"}
    times = [e.event_time_ms for e in everything.items]
    assert times == sorted(times, reverse=True)

    seen: list[pb.Event] = []
    for page_no in (1, 2, 3, 4):
        page = await store.list_assignment_events(
            AssignmentEventQuery(tenant, "A1", kind="measurement", page=page_no, page_size=5)
        )
        assert page.total == 12 and page.page == page_no
        seen.extend(page.items)
    assert seen == list(reversed(a1))

    alerts = await store.list_assignment_events(AssignmentEventQuery(tenant, "A1", kind="alert"))
    assert alerts.items == list(reversed(a1_alerts))
    window = await store.list_assignment_events(
        AssignmentEventQuery(tenant, "A1", since_ms=T0 + 10, until_ms=T0 + 21)
    )
    assert [e.event_time_ms for e in window.items] == [T0 + 21, T0 + 20, T0 + 11, T0 + 10]
    assert (await store.list_assignment_events(AssignmentEventQuery(tenant, "A2"))).items == list(
        reversed(a2)
    )
    assert (await store.list_assignment_events(AssignmentEventQuery(tenant, "A3"))).total == 5
    assert (await store.list_assignment_events(AssignmentEventQuery(tenant, ""))).total == 0
    assert (await store.list_assignment_events(AssignmentEventQuery(tenant, "nope"))).total == 0
    assert (await store.list_device_events(EventQuery(tenant, "dev-1"))).total == 20


async def test_assignment_events_page_across_day_partitions(store: CassandraEventStore, tenant: str) -> None:
    events = [assigned(measurement(tenant, t=T0 + d * DAY + i), "A1") for d in range(4) for i in range(3)]
    await store.add(tenant, events)
    seen: list[pb.Event] = []
    for page_no in (1, 2, 3):
        page = await store.list_assignment_events(
            AssignmentEventQuery(tenant, "A1", page=page_no, page_size=5)
        )
        assert page.total == 12
        seen.extend(page.items)
    assert seen == list(reversed(events))
    window = await store.list_assignment_events(
        AssignmentEventQuery(
            tenant, "A1", kind="measurement", since_ms=T0 + DAY + 1, until_ms=T0 + 2 * DAY + 1
        )
    )
    assert [e.event_time_ms for e in window.items] == [
        T0 + 2 * DAY + 1,
        T0 + 2 * DAY,
        T0 + DAY + 2,
        T0 + DAY + 1,
    ]


async def test_assignment_events_are_per_tenant_and_reads_create_nothing(store: CassandraEventStore) -> None:
    acme, globex, nobody = fresh("acme"), fresh("globex"), fresh("nobody")
    await store.add(acme, [assigned(measurement(acme), "shared")])
    await store.add(globex, [assigned(measurement(globex), "shared")])
    page = await store.list_assignment_events(AssignmentEventQuery(acme, "shared"))
    assert page.total == 1 and page.items[0].tenant == acme
    assert (await store.list_assignment_events(AssignmentEventQuery(nobody, "shared"))).total == 0
    assert await store.events_for_invocation(nobody, "x") == []
    assert not await store.keyspace_exists(nobody)
    assert (await store.list_assignment_events(AssignmentEventQuery("../etc", "shared"))).total == 0


async def test_invalid_assignment_queries_are_rejected(store: CassandraEventStore, tenant: str) -> None:
    for bad in (
        AssignmentEventQuery(tenant, "A1", kind="bogus"),
        AssignmentEventQuery(tenant, "A1", page=0),
        AssignmentEventQuery(tenant, "A1", page_size=0),
    ):
        with pytest.raises(InvalidRequest):
            await store.list_assignment_events(bad)
    with pytest.raises(InvalidRequest):
        await store.events_for_invocation(tenant, "x", limit=0)


async def test_an_invocation_and_all_its_responses_oldest_first_and_bounded(
    store: CassandraEventStore, tenant: str
) -> None:
    inv_id, other = uuid.uuid4().hex, uuid.uuid4().hex
    inv = pb.Event(tenant=tenant, device="dev-1", id=inv_id, alternate_id=inv_id, event_time_ms=T0)
    inv.command_invocation.invocation = inv_id
    responses = []
    for i in range(5):
        r = measurement(tenant, t=T0 + 10 + i)
        r.command_response.invocation = inv_id
        responses.append(r)
    stray = measurement(tenant, t=T0)
    stray.command_response.invocation = other
    await store.add(tenant, [responses[3], inv, *responses[:3], responses[4], stray])
    got = await store.events_for_invocation(tenant, inv_id)
    assert got == [inv, *responses]
    assert await store.events_for_invocation(tenant, inv_id, limit=2) == [inv, responses[0]]
    assert await store.events_for_invocation(tenant, other) == [stray]
    assert await store.events_for_invocation(tenant, "unknown") == []


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
