"""The event store on every backend (SQLite files, Cassandra keyspaces): idempotent adds by
alternate id, a device's and an assignment's events (order, filters, paging), an invocation's
events — the invocation event and the responses of its own device, never a response that inbound
processing refused (``command_response.refused``: another device's answer, an unknown
invocation), which is stored all the same, in its device's history, with its reason —, tenant
isolation and bad input.

What only one backend has stays with it: the file names and the index migration of SQLite
(tests/unit/test_sqlite_events.py); keyspace names, the lightweight-transaction mode, the TTL
and the schema migrations of Cassandra (tests/distributed/test_cassandra_store.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from fieldgate.cloud.domain.commands import REFUSED_OTHER_DEVICE
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.ids import event_id
from fieldgate.cloud.store.events import AssignmentEventQuery, EventQuery, EventStore
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from tests.contract.conftest import Backend

T0 = 1_700_000_000_000
DAY = 86_400_000


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
    alt = uuid.uuid4().hex
    e = pb.Event(
        tenant="acme",
        device=device,
        alternate_id=alt,
        id=event_id("acme", device, alt),
        event_time_ms=t,
        received_time_ms=t,
    )
    e.alert.alert_type = "overheat"
    e.alert.level = pb.ALERT_LEVEL_WARNING
    return e


def assigned(e: pb.Event, assignment: str) -> pb.Event:
    e.assignment = assignment
    return e


def invocation_event(inv_id: str, t: int = T0) -> pb.Event:
    e = pb.Event(tenant="acme", device="dev-1", id=inv_id, alternate_id=inv_id, event_time_ms=t)
    e.command_invocation.invocation = inv_id
    e.command_invocation.command = "ping"
    return e


def response(inv_id: str, t: int, *, device: str = "dev-1", refused: str = "") -> pb.Event:
    alt = uuid.uuid4().hex
    e = pb.Event(
        tenant="acme", device=device, alternate_id=alt, id=event_id("acme", device, alt), event_time_ms=t
    )
    e.command_response.invocation = inv_id
    e.command_response.response_json = f'{{"from": "{device}", "t": {t}}}'
    e.command_response.refused = refused
    return e


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[EventStore]:
    s = backend.events()
    await s.start()
    yield s
    await s.stop()


async def test_add_stores_and_get_event_returns_the_same_event(store: EventStore) -> None:
    e = measurement()
    assert await store.add("acme", [e]) == [e]
    assert await store.get_event("acme", e.id) == e
    assert await store.get_event("acme", "nope") is None
    assert await store.get_event("acme", uuid.uuid4().hex) is None


async def test_same_alternate_id_twice_is_stored_once(store: EventStore) -> None:
    e = measurement(alt="retry-me")
    first = await store.add("acme", [e, measurement()])
    again = await store.add("acme", [e, measurement(alt="fresh")])
    assert len(first) == 2
    assert [x.alternate_id for x in again] == ["fresh"]
    assert (await store.list_device_events(EventQuery("acme", "dev-1"))).total == 3


async def test_duplicates_within_one_batch_are_stored_once(store: EventStore) -> None:
    e = measurement(alt="twice")
    assert len(await store.add("acme", [e, e])) == 1
    assert (await store.list_device_events(EventQuery("acme", "dev-1"))).total == 1


async def test_same_alternate_id_on_two_devices_are_two_events(store: EventStore) -> None:
    stored = await store.add("acme", [measurement("a", alt="x"), measurement("b", alt="x")])
    assert len(stored) == 2


async def test_missing_id_gets_the_deterministic_id(store: EventStore) -> None:
    e = pb.Event(device="dev-1", alternate_id="abc", event_time_ms=T0, received_time_ms=T0)
    e.location.latitude = 52.5
    (stored,) = await store.add("acme", [e])
    assert stored.id == uuid.uuid5(uuid.NAMESPACE_URL, "acme/dev-1/abc").hex
    assert stored.tenant == "acme"
    assert await store.get_event("acme", stored.id) == stored


async def test_invocation_event_found_by_its_own_id_and_by_invocation(store: EventStore) -> None:
    inv_id = uuid.uuid4().hex
    inv = invocation_event(inv_id)
    resp = response(inv_id, T0 + 5)
    await store.add("acme", [inv, resp, measurement(t=T0 + 9)])
    assert await store.get_event("acme", inv_id) == inv
    assert await store.events_for_invocation("acme", inv_id) == [inv, resp]
    # Re-publishing the invocation event does not store it again.
    assert await store.add("acme", [inv]) == []


async def test_newest_first_by_event_time_then_received_time(store: EventStore) -> None:
    older = measurement(t=T0, received=T0 + 100)
    same_time_later_received = measurement(t=T0 + 10, received=T0 + 50)
    same_time_early_received = measurement(t=T0 + 10, received=T0 + 20)
    newest = measurement(t=T0 + 20)
    await store.add("acme", [same_time_early_received, newest, older, same_time_later_received])
    page = await store.list_device_events(EventQuery("acme", "dev-1"))
    assert page.items == [newest, same_time_later_received, same_time_early_received, older]


async def test_paging_gives_every_event_once_with_total(store: EventStore) -> None:
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


async def test_paging_across_days(store: EventStore) -> None:
    # Three days, uneven (Cassandra partitions by day): pages cross days without gaps or repeats.
    events = [measurement(t=T0 + d * DAY + i) for d, n in ((0, 4), (1, 7), (3, 5)) for i in range(n)]
    await store.add("acme", events)
    newest_first = sorted(events, key=lambda e: -e.event_time_ms)
    seen: list[pb.Event] = []
    for page_no in range(1, 5):
        page = await store.list_device_events(EventQuery("acme", "dev-1", page=page_no, page_size=5))
        assert page.total == 16
        seen.extend(page.items)
    assert seen == newest_first
    window = await store.list_device_events(
        EventQuery("acme", "dev-1", since_ms=T0 + DAY + 5, until_ms=T0 + 3 * DAY)
    )
    assert [e.event_time_ms for e in window.items] == [T0 + 3 * DAY, T0 + DAY + 6, T0 + DAY + 5]


async def test_filter_by_kind_and_time_range(store: EventStore) -> None:
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


async def test_other_devices_are_not_listed(store: EventStore) -> None:
    await store.add("acme", [measurement("a"), measurement("b"), measurement("b")])
    page = await store.list_device_events(EventQuery("acme", "b"))
    assert page.total == 2 and {e.device for e in page.items} == {"b"}


async def test_tenants_are_separate(store: EventStore) -> None:
    a = measurement("shared-token", tenant="acme")
    b = measurement("shared-token", tenant="globex")
    await store.add("acme", [a])
    await store.add("globex", [b])
    pa = await store.list_device_events(EventQuery("acme", "shared-token"))
    pb_ = await store.list_device_events(EventQuery("globex", "shared-token"))
    assert pa.items == [a] and pb_.items == [b]
    assert await store.get_event("globex", a.id) is None
    assert await store.get_event("acme", b.id) is None


async def test_an_event_of_another_tenant_is_refused(store: EventStore) -> None:
    with pytest.raises(InvalidRequest):
        await store.add("acme", [measurement(tenant="globex")])
    assert (await store.list_device_events(EventQuery("acme", "dev-1"))).total == 0


async def test_reads_of_an_unknown_tenant_are_empty_and_provision_nothing(store: EventStore) -> None:
    page = await store.list_device_events(EventQuery("nobody", "dev-1"))
    assert page.items == [] and page.total == 0
    assert await store.get_event("nobody", "x") is None
    assert await store.get_event("../etc", "x") is None
    assert (await store.list_assignment_events(AssignmentEventQuery("nobody", "A1"))).total == 0
    assert (await store.list_assignment_events(AssignmentEventQuery("../etc", "A1"))).total == 0
    assert await store.events_for_invocation("nobody", "x") == []
    # Nothing was made for it: there is nothing to delete.
    assert not await store.delete_tenant("nobody")


async def test_invalid_queries_are_rejected(store: EventStore) -> None:
    with pytest.raises(InvalidRequest):
        await store.list_device_events(EventQuery("acme", "dev-1", kind="bogus"))
    with pytest.raises(InvalidRequest):
        await store.list_device_events(EventQuery("acme", "dev-1", page=0))
    with pytest.raises(InvalidRequest):
        await store.add("../escape", [measurement()])


async def test_events_survive_a_new_instance(backend: Backend, store: EventStore) -> None:
    e = measurement()
    await store.add("acme", [e])
    again = backend.events()
    await again.start()
    try:
        assert await again.get_event("acme", e.id) == e
        assert await again.add("acme", [e]) == []
    finally:
        await again.stop()


async def test_delete_tenant_removes_its_events_only(store: EventStore) -> None:
    a, b = measurement(), measurement(tenant="globex")
    await store.add("acme", [a])
    await store.add("globex", [b])
    assert await store.delete_tenant("acme")
    assert await store.get_event("acme", a.id) is None
    assert (await store.list_device_events(EventQuery("acme", "dev-1"))).total == 0
    assert await store.get_event("globex", b.id) == b


async def test_a_large_batch_is_stored(store: EventStore) -> None:
    events = [measurement(f"dev-{i % 7}", t=T0 + i) for i in range(3000)]
    assert len(await store.add("acme", events)) == 3000
    assert (await store.list_device_events(EventQuery("acme", "dev-3", page_size=1))).total == 429


# --- assignments and invocations ------------------------------------------------------------------


async def test_assignment_events_newest_first_with_kind_time_and_paging(store: EventStore) -> None:
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
    assert alerts.items == list(reversed(a1_alerts))
    window = await store.list_assignment_events(
        AssignmentEventQuery("acme", "A1", since_ms=T0 + 10, until_ms=T0 + 21)
    )
    assert [e.event_time_ms for e in window.items] == [T0 + 21, T0 + 20, T0 + 11, T0 + 10]
    a2_page = await store.list_assignment_events(AssignmentEventQuery("acme", "A2"))
    assert a2_page.items == list(reversed(a2))
    assert (await store.list_assignment_events(AssignmentEventQuery("acme", "A3"))).total == 5
    # the device's own listing still shows everything, assigned or not
    assert (await store.list_device_events(EventQuery("acme", "dev-1"))).total == 20


async def test_assignment_events_page_across_days(store: EventStore) -> None:
    events = [assigned(measurement(t=T0 + d * DAY + i), "A1") for d in range(4) for i in range(3)]
    await store.add("acme", events)
    seen: list[pb.Event] = []
    for page_no in (1, 2, 3):
        page = await store.list_assignment_events(
            AssignmentEventQuery("acme", "A1", page=page_no, page_size=5)
        )
        assert page.total == 12
        seen.extend(page.items)
    assert seen == list(reversed(events))
    window = await store.list_assignment_events(
        AssignmentEventQuery(
            "acme", "A1", kind="measurement", since_ms=T0 + DAY + 1, until_ms=T0 + 2 * DAY + 1
        )
    )
    assert [e.event_time_ms for e in window.items] == [
        T0 + 2 * DAY + 1,
        T0 + 2 * DAY,
        T0 + DAY + 2,
        T0 + DAY + 1,
    ]


async def test_events_without_an_assignment_are_not_listed_under_the_empty_token(store: EventStore) -> None:
    await store.add("acme", [measurement(), measurement()])
    assert (await store.list_assignment_events(AssignmentEventQuery("acme", ""))).total == 0
    assert (await store.list_assignment_events(AssignmentEventQuery("acme", "nope"))).total == 0


async def test_assignment_events_are_per_tenant(store: EventStore) -> None:
    await store.add("acme", [assigned(measurement(), "shared")])
    await store.add("globex", [assigned(measurement(tenant="globex"), "shared")])
    acme = await store.list_assignment_events(AssignmentEventQuery("acme", "shared"))
    assert acme.total == 1 and acme.items[0].tenant == "acme"
    globex = await store.list_assignment_events(AssignmentEventQuery("globex", "shared"))
    assert globex.total == 1 and globex.items[0].tenant == "globex"


async def test_invalid_assignment_queries_are_rejected(store: EventStore) -> None:
    for bad in (
        AssignmentEventQuery("acme", "A1", kind="bogus"),
        AssignmentEventQuery("acme", "A1", page=0),
        AssignmentEventQuery("acme", "A1", page_size=0),
    ):
        with pytest.raises(InvalidRequest):
            await store.list_assignment_events(bad)
    with pytest.raises(InvalidRequest):
        await store.events_for_invocation("acme", "x", limit=0)


async def test_an_invocation_and_all_its_responses_oldest_first_and_bounded(store: EventStore) -> None:
    inv_id, other = uuid.uuid4().hex, uuid.uuid4().hex
    inv = invocation_event(inv_id)
    responses = [response(inv_id, T0 + 10 + i) for i in range(5)]
    stray = response(other, T0)
    stored = await store.add("acme", [responses[3], inv, *responses[:3], responses[4], stray])
    assert len(stored) == 7
    assert await store.events_for_invocation("acme", inv_id) == [inv, *responses]
    assert await store.events_for_invocation("acme", inv_id, limit=2) == [inv, responses[0]]
    assert await store.events_for_invocation("acme", other) == [stray]
    assert await store.events_for_invocation("acme", "unknown") == []
    assert await store.events_for_invocation("globex", inv_id) == []


async def test_a_refused_response_is_kept_but_not_filed_under_the_invocation(store: EventStore) -> None:
    t0 = now_ms() - 60_000
    inv_id = uuid.uuid4().hex
    inv = invocation_event(inv_id, t0)
    intruder = response(inv_id, t0 + 1, device="dev-2", refused=REFUSED_OTHER_DEVICE)
    own = response(inv_id, t0 + 2)
    assert len(await store.add("acme", [inv, intruder, own])) == 3

    linked = await store.events_for_invocation("acme", inv_id)
    assert [(e.device, e.WhichOneof("payload")) for e in linked] == [
        ("dev-1", "command_invocation"),
        ("dev-1", "command_response"),
    ]
    # The refused response is the other device's data: in its history, with the reason.
    page = await store.list_device_events(EventQuery(tenant="acme", device="dev-2", kind="command_response"))
    assert [e.command_response.refused for e in page.items] == [REFUSED_OTHER_DEVICE]
    assert page.items[0].command_response.invocation == inv_id
