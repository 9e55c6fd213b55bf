"""Commands through the cloud pipeline: CommandService → [command-invocations] → command
delivery → the edge's uplink stream, status reports from the edge, responses as events, and
expiry. The edge is a real gRPC client on the real server; stores and bus are the real ones."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldgate.cloud.domain.commands import REFUSED_OTHER_DEVICE, REFUSED_UNKNOWN
from fieldgate.cloud.services.batch import element_invocation_id
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.cloud_pipeline import CloudPipeline, edge, measurement
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[CloudPipeline]:
    async with CloudPipeline(tmp_path / "cloud") as c:
        yield c


async def register(cloud: CloudPipeline, device: str) -> None:
    await cloud.registry.create_device(model.Device(token=device, tenant="default", device_type="default"))


async def status_of(cloud: CloudPipeline, inv_id: str) -> svc.InvocationState:
    state = await cloud.invocations.get("default", inv_id)
    assert state is not None
    return state


async def wait_status(
    cloud: CloudPipeline, inv_id: str, status: svc.CommandStatus.ValueType, wait_s: float = 10.0
) -> svc.InvocationState:
    async def probe() -> svc.InvocationState | None:
        state = await status_of(cloud, inv_id)
        return state if state.status == status else None

    state = await eventually(probe, timeout=wait_s, what=f"invocation {svc.CommandStatus.Name(status)}")
    assert state is not None
    return state


def response_event(device: str, inv_id: str, body: dict[str, object], *, refused: str = "") -> pb.Event:
    return pb.Event(
        tenant="default",
        device=device,
        alternate_id=f"resp-{device}-{inv_id}",
        event_time_ms=now_ms(),
        command_response=pb.CommandResponse(
            invocation=inv_id, response_json=json.dumps(body), refused=refused
        ),
    )


async def test_command_round_trip_with_connected_edge(cloud: CloudPipeline) -> None:
    await register(cloud, "actor-1")
    async with edge(cloud.port) as e:
        await e.send_and_ack([measurement("actor-1", "a-1")])  # the cloud learns the route

        inv = await cloud.commands.invoke("default", "actor-1", "set-interval", {"seconds": 5}, None, "test")
        down = await e.next_command()
        assert (down.tenant, down.device) == ("default", "actor-1")
        assert down.invocation.invocation == inv.id
        assert down.invocation.command == "set-interval"
        assert json.loads(down.invocation.params_json) == {"seconds": 5}
        # Sent, but not delivered until the edge says so.
        assert (await status_of(cloud, inv.id)).status == svc.COMMAND_STATUS_QUEUED

        await e.status(down, svc.COMMAND_STATUS_DELIVERED)
        await wait_status(cloud, inv.id, svc.COMMAND_STATUS_DELIVERED)

        await e.send_and_ack([response_event("actor-1", inv.id, {"ok": True})])
        final = await wait_status(cloud, inv.id, svc.COMMAND_STATUS_ANSWERED)
        assert json.loads(final.response_json) == {"ok": True}

    kinds = {ev.WhichOneof("payload") for ev in await cloud.device_events("actor-1")}
    assert {"measurement", "command_invocation", "command_response"} <= kinds


async def test_command_for_offline_device_is_delivered_when_its_edge_sends(cloud: CloudPipeline) -> None:
    await register(cloud, "sleepy-1")
    inv = await cloud.commands.invoke("default", "sleepy-1", "ping", {}, 600, "test")
    # Stored in the device's history and waiting.
    await eventually(
        lambda: cloud.device_events("sleepy-1", kind="command_invocation"), what="invocation event stored"
    )
    assert (await status_of(cloud, inv.id)).status == svc.COMMAND_STATUS_QUEUED

    async with edge(cloud.port, "edge-late") as e:
        assert e.commands.empty()
        await e.send_and_ack([measurement("sleepy-1", "s-1")])
        down = await e.next_command()
        assert down.invocation.invocation == inv.id and down.invocation.command == "ping"
        await e.status(down, svc.COMMAND_STATUS_FAILED, reason="timeout")
        failed = await wait_status(cloud, inv.id, svc.COMMAND_STATUS_FAILED)
        assert failed.reason == "timeout"


async def test_reconnecting_edge_gets_queued_commands_without_sending_events(cloud: CloudPipeline) -> None:
    await register(cloud, "roamer-1")
    async with edge(cloud.port, "edge-r") as e:
        await e.send_and_ack([measurement("roamer-1", "r-1")])
    await eventually(lambda: _no_edges(cloud), what="edge disconnected")

    inv = await cloud.commands.invoke("default", "roamer-1", "ping", {}, 600, "test")
    await eventually(lambda: cloud.delivery.stats.waiting_offline >= 1, what="invocation waiting")

    async with edge(cloud.port, "edge-r") as e:  # same edge id: its devices are known
        down = await e.next_command()
        assert down.invocation.invocation == inv.id


async def _no_edges(cloud: CloudPipeline) -> bool:
    return not cloud.sessions.connected_edges


async def test_queued_invocation_expires(cloud: CloudPipeline) -> None:
    await register(cloud, "gone-1")
    inv = await cloud.commands.invoke("default", "gone-1", "ping", {}, 1, "test")
    expired = await wait_status(cloud, inv.id, svc.COMMAND_STATUS_EXPIRED, wait_s=15)
    assert expired.expires_ms <= now_ms()
    # An edge showing up later does not get the stale command.
    async with edge(cloud.port) as e:
        await e.send_and_ack([measurement("gone-1", "g-1")])
        await eventually(lambda: _count_events(cloud, "gone-1"), what="event stored")
        assert e.commands.empty()


async def _count_events(cloud: CloudPipeline, device: str) -> bool:
    return len(await cloud.device_events(device, kind="measurement")) >= 1


async def test_response_for_unknown_invocation_is_counted(cloud: CloudPipeline) -> None:
    await register(cloud, "chatty-1")
    async with edge(cloud.port) as e:
        await e.send_and_ack([response_event("chatty-1", "no-such-invocation", {"x": 1})])
    await eventually(lambda: cloud.delivery.stats.responses_unmatched == 1, what="counted")
    assert cloud.delivery.stats.responses_refused == 1
    # The event itself is kept in the device's history, with the reason it was not linked.
    [kept] = await cloud.device_events("chatty-1", kind="command_response")
    assert kept.command_response.refused == REFUSED_UNKNOWN
    assert await cloud.events.events_for_invocation("default", "no-such-invocation") == []


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch-derived-id"])
async def test_a_device_answers_only_its_own_invocation(cloud: CloudPipeline, batch: bool) -> None:
    """Another device of the tenant answering actor-1's invocation is refused: the invocation is
    not answered, shows nothing of it, and the intruder's event is kept with the reason. A
    device cannot mark its own answer refused or linked (the cloud overwrites the field)."""
    for device in ("actor-1", "actor-2"):
        await register(cloud, device)
    inv_id = element_invocation_id("default", "op-1", "actor-1") if batch else None
    async with edge(cloud.port) as e:
        await e.send_and_ack([measurement("actor-1", "a-1"), measurement("actor-2", "b-1")])
        inv = await cloud.commands.invoke(
            "default", "actor-1", "ping", {}, None, "test", invocation_id=inv_id
        )
        down = await e.next_command()
        assert down.invocation.invocation == inv.id
        await e.status(down, svc.COMMAND_STATUS_DELIVERED)
        await wait_status(cloud, inv.id, svc.COMMAND_STATUS_DELIVERED)

        await e.send_and_ack([response_event("actor-2", inv.id, {"from": "actor-2"})])
        await eventually(lambda: cloud.delivery.stats.responses_refused == 1, what="refused")
        assert cloud.inbound.stats.responses_refused == 1
        assert cloud.delivery.stats.responses_unmatched == 0
        state = await status_of(cloud, inv.id)
        assert (state.status, state.response_json) == (svc.COMMAND_STATUS_DELIVERED, "")
        [kept] = await cloud.device_events("actor-2", kind="command_response")
        assert (kept.command_response.invocation, kept.command_response.refused) == (
            inv.id,
            REFUSED_OTHER_DEVICE,
        )

        # The device's own answer, even with a forged verdict on it, is linked.
        await e.send_and_ack([response_event("actor-1", inv.id, {"from": "actor-1"}, refused="forged")])
        final = await wait_status(cloud, inv.id, svc.COMMAND_STATUS_ANSWERED)
        assert json.loads(final.response_json) == {"from": "actor-1"}

    linked = await cloud.events.events_for_invocation("default", inv.id)
    assert [(ev.device, ev.WhichOneof("payload")) for ev in linked] == [
        ("actor-1", "command_invocation"),
        ("actor-1", "command_response"),
    ]
    assert linked[1].command_response.refused == ""
    assert cloud.delivery.stats.responses_refused == 1


async def test_an_answer_after_the_response_timeout_is_late(cloud: CloudPipeline) -> None:
    """The edge gave up waiting (FAILED "timeout"); the device's answer still comes: the
    invocation is linked to it and shows LATE, the reason kept."""
    await register(cloud, "slow-1")
    async with edge(cloud.port) as e:
        await e.send_and_ack([measurement("slow-1", "s-1")])
        inv = await cloud.commands.invoke("default", "slow-1", "ping", {}, None, "test")
        down = await e.next_command()
        await e.status(down, svc.COMMAND_STATUS_DELIVERED)
        await e.status(down, svc.COMMAND_STATUS_FAILED, reason="timeout")
        await wait_status(cloud, inv.id, svc.COMMAND_STATUS_FAILED)

        await e.send_and_ack([response_event("slow-1", inv.id, {"pong": True})])
        late = await wait_status(cloud, inv.id, svc.COMMAND_STATUS_LATE)
    assert (late.reason, json.loads(late.response_json)) == ("timeout", {"pong": True})
    assert cloud.delivery.stats.late == 1
    linked = await cloud.events.events_for_invocation("default", inv.id)
    assert [ev.WhichOneof("payload") for ev in linked] == ["command_invocation", "command_response"]
