"""A SiteWhere device, unchanged, against the whole suite (embedded broker, edge agent, gRPC
uplink, cloud, REST): it registers and reports in SiteWhere's protobuf, takes a command sent
from the REST API on SiteWhere's command topic in SiteWhere's JSON encoding, and its
acknowledgement lands on the invocation; another device's acknowledgement does not.

The device is fieldgate.sims.sitewhere_agent (what SiteWhere's Java agent does on the wire).
Behind an external broker the edge cannot see SiteWhere subscriptions (docs/protocols/sitewhere.md),
so this runs with the embedded broker only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.sims.sitewhere_agent import SiteWhereAgentSim
from fieldgate.suite import Suite, SuiteOptions
from tests.e2e.conftest import PASSWORD, login
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    async with Suite(SuiteOptions(data_dir=tmp_path / "fg", admin_password=PASSWORD)) as s:
        yield s


@pytest.fixture
async def api(suite: Suite) -> AsyncIterator[httpx.AsyncClient]:
    client = await login(suite.rest_url)
    yield client
    await client.aclose()


async def _events(api: httpx.AsyncClient, device: str, **params: Any) -> list[dict[str, Any]]:
    r = await api.get(f"/api/v1/devices/{device}/events", params={"page_size": 1000, **params})
    if r.status_code == 404:
        return []
    r.raise_for_status()
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_a_sitewhere_agent_works_unchanged_against_the_suite(
    suite: Suite, api: httpx.AsyncClient
) -> None:
    agent = SiteWhereAgentSim("127.0.0.1", suite.mqtt_port, "default", "sw-e2e-1", device_type="default")
    intruder = SiteWhereAgentSim("127.0.0.1", suite.mqtt_port, "default", "sw-e2e-2", auto_ack=False)
    await asyncio.to_thread(agent.start)
    await asyncio.to_thread(intruder.start)
    try:
        await asyncio.to_thread(agent.send_registration)
        await asyncio.to_thread(agent.send_measurement, "temp", 21.5)

        async def measured() -> list[dict[str, Any]]:
            return await _events(api, "sw-e2e-1", type="measurement")

        [event] = await eventually(measured, timeout=15, what="the agent's measurement stored")
        assert event["values"] == {"temp": 21.5}

        r = await api.post(
            "/api/v1/devices/sw-e2e-1/commands", json={"command": "set-interval", "params": {"seconds": 30}}
        )
        assert r.status_code == 201, r.text
        inv_id = r.json()["id"]
        received = await asyncio.to_thread(agent.commands.get, True, 15)
        assert (received.invocation, received.name, received.parameters) == (
            inv_id,
            "set-interval",
            {"seconds": 30},
        )

        async def answered() -> dict[str, Any] | None:
            body: dict[str, Any] = (await api.get(f"/api/v1/invocations/{inv_id}")).json()
            return body if body["status"] == "answered" else None

        final = await eventually(
            answered, timeout=15, what="invocation answered by the agent's acknowledgement"
        )
        assert final["response"] == {"message": "Acknowledged set-interval"}

        # Another SiteWhere device acknowledging the same invocation changes nothing.
        await asyncio.to_thread(intruder.send_ack, inv_id, "forged")

        async def refused() -> list[dict[str, Any]]:
            return await _events(api, "sw-e2e-2", type="command_response")

        [forged] = await eventually(refused, timeout=15, what="the intruder's acknowledgement stored")
        assert (forged["invocation"], forged["refused"]) == (inv_id, "the invocation is for another device")
        again = (await api.get(f"/api/v1/invocations/{inv_id}")).json()
        assert (again["status"], again["response"]) == ("answered", {"message": "Acknowledged set-interval"})
        assert agent.undecodable == [] and intruder.commands.empty()
    finally:
        await asyncio.to_thread(agent.stop)
        await asyncio.to_thread(intruder.stop)
