"""The SQLite event store as the persistence stage and the query API use it."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.store.events import AssignmentEventQuery, EventQuery
from fieldgate.cloud.store.sqlite.events import SqliteEventStore, event_id
from fieldgate.v1 import events_pb2 as pb

T0 = 1_700_000_000_000


def measurement(
    device: str = "dev-1", *, t: int = T0, alt: str | None = None, tenant: str = "acme", received: int = 0
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


def alert(device: str = "dev-1", *, t: int = T0) -> pb.Event:
    e = pb.Event(
        tenant="acme", device=device, alternate_id=uuid.uuid4().hex, event_time_ms=t, received_time_ms=t
    )
    e.alert.alert_type = "overheat"
    e.alert.level = pb.ALERT_LEVEL_WARNING
    return e


def event_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.glob("events-*.db"))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteEventStore]:
    s = SqliteEventStore(tmp_path)
    await s.start()
    yield s
    await s.stop()


async def test_add_stores_and_get_event_returns_the_same_event(store: SqliteEventStore) -> None:
    e = measurement()
    assert await store.add("acme", [e]) == [e]
    assert await store.get_event("acme", e.id) == e
    assert await store.get_event("acme", "nope") is None


async def test_same_alternate_id_twice_is_stored_once(store: SqliteEventStore) -> None:
    e = measurement(alt="retry-me")
    first = await store.add("acme", [e, measurement()])
    again = await store.add("acme", [e, measurement(alt="fresh")])
    assert len(first) == 2
    assert [x.alternate_id for x in again] == ["fresh"]
    page = await store.list_device_events(EventQuery("acme", "dev-1"))
    assert page.total == 3


async def test_duplicates_within_one_batch_are_stored_once(store: SqliteEventStore) -> None:
    e = measurement(alt="twice")
    stored = await store.add("acme", [e, e])
    assert len(stored) == 1
    assert (await store.list_device_events(EventQuery("acme", "dev-1"))).total == 1


async def test_same_alternate_id_on_two_devices_are_two_events(store: SqliteEventStore) -> None:
    stored = await store.add("acme", [measurement("a", alt="x"), measurement("b", alt="x")])
    assert len(stored) == 2


async def test_missing_id_gets_the_deterministic_id(store: SqliteEventStore) -> None:
    e = pb.Event(device="dev-1", alternate_id="abc", event_time_ms=T0, received_time_ms=T0)
    e.location.latitude = 52.5
    (stored,) = await store.add("acme", [e])
    assert stored.id == uuid.uuid5(uuid.NAMESPACE_URL, "acme/dev-1/abc").hex
    assert stored.tenant == "acme"
    assert await store.get_event("acme", stored.id) == stored


async def test_invocation_event_found_by_its_own_id_and_by_invocation(store: SqliteEventStore) -> None:
    inv_id = uuid.uuid4().hex
    inv = pb.Event(tenant="acme", device="dev-1", id=inv_id, alternate_id=inv_id, event_time_ms=T0)
    inv.command_invocation.invocation = inv_id
    inv.command_invocation.command = "ping"
    resp = measurement(t=T0 + 5)
    resp.command_response.invocation = inv_id
    resp.command_response.response_json = '{"pong": true}'
    await store.add("acme", [inv, resp, measurement(t=T0 + 9)])
    assert await store.get_event("acme", inv_id) == inv
    assert await store.events_for_invocation("acme", inv_id) == [inv, resp]
    # Re-publishing the invocation event does not store it again.
    assert await store.add("acme", [inv]) == []


async def test_newest_first_by_event_time_then_received_time(store: SqliteEventStore) -> None:
    older = measurement(t=T0, received=T0 + 100)
    same_time_later_received = measurement(t=T0 + 10, received=T0 + 50)
    same_time_early_received = measurement(t=T0 + 10, received=T0 + 20)
    newest = measurement(t=T0 + 20)
    await store.add("acme", [same_time_early_received, newest, older, same_time_later_received])
    page = await store.list_device_events(EventQuery("acme", "dev-1"))
    assert page.items == [newest, same_time_later_received, same_time_early_received, older]


async def test_paging_gives_every_event_once_with_total(store: SqliteEventStore) -> None:
    events = [measurement(t=T0 + i) for i in range(25)]
    await store.add("acme", events)
    seen: list[pb.Event] = []
    for page_no in (1, 2, 3):
        page = await store.list_device_events(EventQuery("acme", "dev-1", page=page_no, page_size=10))
        assert page.total == 25 and page.page == page_no and page.page_size == 10
        seen.extend(page.items)
    assert seen == list(reversed(events))
    empty = await store.list_device_events(EventQuery("acme", "dev-1", page=4, page_size=10))
    assert empty.items == [] and empty.total == 25


async def test_filter_by_kind_and_time_range(store: SqliteEventStore) -> None:
    ms = [measurement(t=T0 + i * 10) for i in range(5)]
    al = [alert(t=T0 + i * 10 + 1) for i in range(5)]
    await store.add("acme", ms + al)
    only_alerts = await store.list_device_events(EventQuery("acme", "dev-1", kind="alert"))
    assert only_alerts.total == 5 and all(e.HasField("alert") for e in only_alerts.items)
    window = await store.list_device_events(EventQuery("acme", "dev-1", since_ms=T0 + 10, until_ms=T0 + 30))
    assert [e.event_time_ms for e in window.items] == [T0 + 30, T0 + 21, T0 + 20, T0 + 11, T0 + 10]
    both = await store.list_device_events(
        EventQuery("acme", "dev-1", kind="measurement", since_ms=T0 + 15, until_ms=T0 + 40)
    )
    assert [e.event_time_ms for e in both.items] == [T0 + 40, T0 + 30, T0 + 20]


async def test_other_devices_are_not_listed(store: SqliteEventStore) -> None:
    await store.add("acme", [measurement("a"), measurement("b"), measurement("b")])
    page = await store.list_device_events(EventQuery("acme", "b"))
    assert page.total == 2 and {e.device for e in page.items} == {"b"}


async def test_tenants_are_separate(store: SqliteEventStore, tmp_path: Path) -> None:
    a = measurement("shared-token", tenant="acme")
    b = measurement("shared-token", tenant="globex")
    await store.add("acme", [a])
    await store.add("globex", [b])
    pa = await store.list_device_events(EventQuery("acme", "shared-token"))
    pb_ = await store.list_device_events(EventQuery("globex", "shared-token"))
    assert pa.items == [a] and pb_.items == [b]
    assert await store.get_event("globex", a.id) is None
    assert await store.get_event("acme", b.id) is None
    assert event_files(tmp_path) == ["events-acme.db", "events-globex.db"]


async def test_an_event_of_another_tenant_is_refused(store: SqliteEventStore) -> None:
    with pytest.raises(InvalidRequest):
        await store.add("acme", [measurement(tenant="globex")])
    assert (await store.list_device_events(EventQuery("acme", "dev-1"))).total == 0


async def test_reads_of_an_unknown_tenant_are_empty_and_create_no_file(
    store: SqliteEventStore, tmp_path: Path
) -> None:
    page = await store.list_device_events(EventQuery("nobody", "dev-1"))
    assert page.items == [] and page.total == 0
    assert await store.get_event("nobody", "x") is None
    assert await store.get_event("../etc", "x") is None
    assert event_files(tmp_path) == []


async def test_invalid_queries_are_rejected(store: SqliteEventStore) -> None:
    with pytest.raises(InvalidRequest):
        await store.list_device_events(EventQuery("acme", "dev-1", kind="bogus"))
    with pytest.raises(InvalidRequest):
        await store.list_device_events(EventQuery("acme", "dev-1", page=0))
    with pytest.raises(InvalidRequest):
        await store.add("../escape", [measurement()])


async def test_events_survive_reopen(tmp_path: Path) -> None:
    e = measurement()
    s1 = SqliteEventStore(tmp_path)
    await s1.start()
    await s1.add("acme", [e])
    await s1.stop()
    s2 = SqliteEventStore(tmp_path)
    await s2.start()
    assert await s2.get_event("acme", e.id) == e
    assert await s2.add("acme", [e]) == []
    await s2.stop()


async def test_a_large_batch_is_stored(store: SqliteEventStore) -> None:
    events = [measurement(f"dev-{i % 7}", t=T0 + i) for i in range(3000)]
    assert len(await store.add("acme", events)) == 3000
    assert (await store.list_device_events(EventQuery("acme", "dev-3", page_size=1))).total == 429


# --- assignments and invocations ------------------------------------------------------------------


def assigned(e: pb.Event, assignment: str) -> pb.Event:
    e.assignment = assignment
    return e


async def test_assignment_events_newest_first_with_kind_time_and_paging(store: SqliteEventStore) -> None:
    # dev-1 under assignment A1 then A2; dev-2 under A3; one event before any assignment.
    a1 = [assigned(measurement(t=T0 + i * 10), "A1") for i in range(12)]
    a1_alerts = [assigned(alert(t=T0 + i * 10 + 1), "A1") for i in range(3)]
    a2 = [assigned(measurement(t=T0 + 1000 + i), "A2") for i in range(4)]
    other_device = [assigned(measurement("dev-2", t=T0 + i), "A3") for i in range(5)]
    unassigned = measurement(t=T0 - 5)
    await store.add("acme", [*a1, *a1_alerts, *a2, *other_device, unassigned])

    everything = await store.list_assignment_events(AssignmentEventQuery("acme", "A1"))
    assert everything.total == 15 and {e.assignment for e in everything.items} == {"A1"}
    times = [e.event_time_ms for e in everything.items]
    assert times == sorted(times, reverse=True)

    seen: list[pb.Event] = []
    for page_no in (1, 2, 3, 4):
        page = await store.list_assignment_events(
            AssignmentEventQuery("acme", "A1", kind="measurement", page=page_no, page_size=5)
        )
        assert page.total == 12 and page.page == page_no
        seen.extend(page.items)
    assert seen == list(reversed(a1))

    alerts = await store.list_assignment_events(AssignmentEventQuery("acme", "A1", kind="alert"))
    assert [e.alternate_id for e in alerts.items] == [e.alternate_id for e in reversed(a1_alerts)]
    window = await store.list_assignment_events(
        AssignmentEventQuery("acme", "A1", since_ms=T0 + 10, until_ms=T0 + 21)
    )
    assert [e.event_time_ms for e in window.items] == [T0 + 21, T0 + 20, T0 + 11, T0 + 10]
    a2_page = await store.list_assignment_events(AssignmentEventQuery("acme", "A2"))
    assert a2_page.items == list(reversed(a2))
    # the device's own listing still shows everything, assigned or not
    assert (await store.list_device_events(EventQuery("acme", "dev-1"))).total == 20


async def test_events_without_an_assignment_are_not_listed_under_the_empty_token(
    store: SqliteEventStore,
) -> None:
    await store.add("acme", [measurement(), measurement()])
    assert (await store.list_assignment_events(AssignmentEventQuery("acme", ""))).total == 0
    assert (await store.list_assignment_events(AssignmentEventQuery("acme", "nope"))).total == 0


async def test_assignment_events_are_per_tenant(store: SqliteEventStore, tmp_path: Path) -> None:
    await store.add("acme", [assigned(measurement(), "shared")])
    await store.add("globex", [assigned(measurement(tenant="globex"), "shared")])
    acme = await store.list_assignment_events(AssignmentEventQuery("acme", "shared"))
    assert acme.total == 1 and acme.items[0].tenant == "acme"
    nobody = await store.list_assignment_events(AssignmentEventQuery("nobody", "shared"))
    assert nobody.total == 0
    assert (await store.list_assignment_events(AssignmentEventQuery("../etc", "shared"))).total == 0
    assert event_files(tmp_path) == ["events-acme.db", "events-globex.db"]


async def test_invalid_assignment_queries_are_rejected(store: SqliteEventStore) -> None:
    for bad in (
        AssignmentEventQuery("acme", "A1", kind="bogus"),
        AssignmentEventQuery("acme", "A1", page=0),
        AssignmentEventQuery("acme", "A1", page_size=0),
    ):
        with pytest.raises(InvalidRequest):
            await store.list_assignment_events(bad)
    with pytest.raises(InvalidRequest):
        await store.events_for_invocation("acme", "x", limit=0)


def invocation_event(inv_id: str, t: int = T0) -> pb.Event:
    e = pb.Event(tenant="acme", device="dev-1", id=inv_id, alternate_id=inv_id, event_time_ms=t)
    e.command_invocation.invocation = inv_id
    e.command_invocation.command = "ping"
    return e


def response(inv_id: str, t: int) -> pb.Event:
    e = pb.Event(tenant="acme", device="dev-1", alternate_id=uuid.uuid4().hex, event_time_ms=t)
    e.command_response.invocation = inv_id
    e.command_response.response_json = f'{{"t": {t}}}'
    return e


async def test_an_invocation_and_all_its_responses_oldest_first_and_bounded(store: SqliteEventStore) -> None:
    inv_id, other = uuid.uuid4().hex, uuid.uuid4().hex
    responses = [response(inv_id, T0 + 10 + i) for i in range(5)]
    stored = await store.add(
        "acme", [responses[3], invocation_event(inv_id), *responses[:3], responses[4], response(other, T0)]
    )
    assert len(stored) == 7
    got = await store.events_for_invocation("acme", inv_id)
    assert [e.WhichOneof("payload") for e in got] == ["command_invocation"] + ["command_response"] * 5
    assert [e.event_time_ms for e in got] == [T0] + [T0 + 10 + i for i in range(5)]
    assert len(await store.events_for_invocation("acme", inv_id, limit=2)) == 2
    assert [e.command_response.invocation for e in await store.events_for_invocation("acme", other)] == [
        other
    ]
    assert await store.events_for_invocation("acme", "unknown") == []
    assert await store.events_for_invocation("globex", inv_id) == []


async def test_a_database_of_the_previous_schema_gains_the_assignment_indexes(tmp_path: Path) -> None:
    s1 = SqliteEventStore(tmp_path)
    await s1.start()
    await s1.add("acme", [assigned(measurement(t=T0 + i), "A1") for i in range(3)])
    await s1.stop()
    # What a database written before assignment queries existed looks like.
    with sqlite3.connect(tmp_path / "events-acme.db") as conn:
        conn.execute("DROP INDEX events_by_assignment_time")
        conn.execute("DROP INDEX events_by_assignment_rare_kind_time")
    s2 = SqliteEventStore(tmp_path)
    await s2.start()
    try:
        assert (await s2.list_assignment_events(AssignmentEventQuery("acme", "A1"))).total == 3
    finally:
        await s2.stop()
    with sqlite3.connect(tmp_path / "events-acme.db") as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT data FROM events WHERE assignment = ? AND assignment != ''"
                " ORDER BY event_time_ms DESC",
                ("A1",),
            )
        )
    assert {"events_by_assignment_time", "events_by_assignment_rare_kind_time"} <= names
    assert "events_by_assignment_time" in plan
