"""The REST invocation document and its events when devices answer what is not theirs, or late.

The pipeline decides (tests/integration/test_cloud_commands.py); these check what REST shows:
``late`` with the failure's reason and the response, a refused response with its reason in the
answering device's events, and nothing of another device under an invocation — also for events
stored linked before the rule existed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.cloud.bus import COMMAND_INVOCATIONS
from fieldgate.cloud.domain.commands import REFUSED_OTHER_DEVICE
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.api_stack import THERMOSTAT, ApiStack, api_stack, login

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(tmp_path) as s:
        yield s


@pytest.fixture
async def client(stack: ApiStack) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.client() as c:
        yield c


@pytest.fixture
async def admin(client: httpx.AsyncClient) -> dict[str, str]:
    return await login(client, "admin")


async def devices(client: httpx.AsyncClient, auth: dict[str, str], *tokens: str) -> None:
    r = await client.post("/api/v1/device-types", json=THERMOSTAT, headers=auth)
    assert r.status_code == 201, r.text
    for token in tokens:
        r = await client.post(
            "/api/v1/devices", json={"token": token, "device_type": "thermostat"}, headers=auth
        )
        assert r.status_code == 201, r.text


async def invoke(
    stack: ApiStack, client: httpx.AsyncClient, auth: dict[str, str]
) -> tuple[dict[str, Any], pb.Event]:
    """A ping for t-1, and its command_invocation event stored as command delivery would."""
    inv = (await client.post("/api/v1/devices/t-1/commands", json={"command": "ping"}, headers=auth)).json()
    async with stack.bus.consumer("test", COMMAND_INVOCATIONS) as consumer:
        (record,) = await consumer.poll(max_records=10, timeout_s=5)
    sent = pb.Event.FromString(record.value)
    await stack.event_store.add("default", [sent])
    return inv, sent


def answer(device: str, inv_id: str, t: int, body: str, *, refused: str = "") -> pb.Event:
    return pb.Event(
        tenant="default",
        device=device,
        alternate_id=f"answer-{device}",
        event_time_ms=t,
        received_time_ms=t,
        command_response=pb.CommandResponse(invocation=inv_id, response_json=body, refused=refused),
    )


async def test_a_late_answer_shows_late_with_the_reason_and_the_response(
    stack: ApiStack, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await devices(client, admin, "t-1")
    inv, _ = await invoke(stack, client, admin)
    await stack.invocations.update_status("default", inv["id"], svc.COMMAND_STATUS_DELIVERED)
    await stack.invocations.update_status("default", inv["id"], svc.COMMAND_STATUS_FAILED, reason="timeout")
    await stack.invocations.update_status(
        "default", inv["id"], svc.COMMAND_STATUS_ANSWERED, response_json='{"pong": true}'
    )
    body = (await client.get(f"/api/v1/invocations/{inv['id']}", headers=admin)).json()
    assert (body["status"], body["reason"], body["response"]) == ("late", "timeout", {"pong": True})
    listed = (await client.get("/api/v1/devices/t-1/invocations", headers=admin)).json()["items"]
    assert [(i["id"], i["status"]) for i in listed] == [(inv["id"], "late")]


async def test_an_invocation_shows_nothing_of_another_device(
    stack: ApiStack, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await devices(client, admin, "t-1", "t-2")
    inv, sent = await invoke(stack, client, admin)
    t = sent.event_time_ms
    refused = answer("t-2", inv["id"], t + 1, '{"from": "t-2"}', refused=REFUSED_OTHER_DEVICE)
    # Stored linked (as before the rule existed): the invocation's events still leave it out.
    legacy = answer("t-3", inv["id"], t + 2, '{"from": "t-3"}')
    own = answer("t-1", inv["id"], t + 3, '{"from": "t-1"}')
    await stack.event_store.add("default", [refused, legacy, own])

    body = (await client.get(f"/api/v1/invocations/{inv['id']}/events", headers=admin)).json()
    assert [(e["device"], e["type"]) for e in body["events"]] == [
        ("t-1", "command_invocation"),
        ("t-1", "command_response"),
    ]
    assert body["events"][1]["refused"] is None

    # The refused answer is t-2's data: in its events, with the reason.
    r = await client.get("/api/v1/devices/t-2/events", params={"type": "command_response"}, headers=admin)
    [shown] = r.json()["items"]
    assert (shown["invocation"], shown["response"], shown["refused"]) == (
        inv["id"],
        {"from": "t-2"},
        REFUSED_OTHER_DEVICE,
    )
