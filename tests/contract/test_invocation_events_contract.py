"""Which events the event store files under an invocation, on every backend (SQLite files,
Cassandra): the invocation event and the responses of its own device, never a response that
inbound processing refused (``command_response.refused``: another device's answer, an unknown
invocation) — that one is stored all the same, in its device's history, with its reason.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from fieldgate.cloud.domain.commands import REFUSED_OTHER_DEVICE
from fieldgate.cloud.store.events import EventQuery, EventStore
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from tests.contract.conftest import Backend


@pytest.fixture
async def events(backend: Backend) -> AsyncIterator[EventStore]:
    store = backend.events()
    await store.start()
    yield store
    await store.stop()


def response(device: str, inv_id: str, t: int, *, refused: str = "") -> pb.Event:
    e = pb.Event(tenant="acme", device=device, alternate_id=uuid.uuid4().hex, event_time_ms=t)
    e.command_response.invocation = inv_id
    e.command_response.response_json = f'{{"from": "{device}"}}'
    e.command_response.refused = refused
    return e


async def test_a_refused_response_is_kept_but_not_filed_under_the_invocation(events: EventStore) -> None:
    t0 = now_ms() - 60_000
    inv_id = uuid.uuid4().hex
    inv = pb.Event(tenant="acme", device="dev-1", id=inv_id, alternate_id=inv_id, event_time_ms=t0)
    inv.command_invocation.invocation = inv_id
    inv.command_invocation.command = "ping"
    intruder = response("dev-2", inv_id, t0 + 1, refused=REFUSED_OTHER_DEVICE)
    own = response("dev-1", inv_id, t0 + 2)
    assert len(await events.add("acme", [inv, intruder, own])) == 3

    linked = await events.events_for_invocation("acme", inv_id)
    assert [(e.device, e.WhichOneof("payload")) for e in linked] == [
        ("dev-1", "command_invocation"),
        ("dev-1", "command_response"),
    ]
    # The refused response is the other device's data: in its history, with the reason.
    page = await events.list_device_events(EventQuery(tenant="acme", device="dev-2", kind="command_response"))
    assert [e.command_response.refused for e in page.items] == [REFUSED_OTHER_DEVICE]
    assert page.items[0].command_response.invocation == inv_id
