"""``fieldgate up --distributed``: the whole suite on real ZooKeeper, Kafka and Cassandra.

The Suite starts the three servers itself (under its data_dir), runs every cloud service as its
own ``fieldgate cloud run <service>`` process and the edge agent as another: a paho QoS 1
publish reaches REST, and a REST command reaches a device on MQTT and its answer comes back.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.cloud.composition import SERVICES
from fieldgate.suite import Suite, SuiteOptions
from tests.e2e.test_end_to_end import events_of, publish_once
from tests.helpers.edge_mqtt import CommandDevice
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.distributed, pytest.mark.integration]

PASSWORD = "distributed-admin-pw"


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    options = SuiteOptions(
        data_dir=tmp_path / "fg", admin_password=PASSWORD, distributed=True, edge_process=True
    )
    async with Suite(options) as running:
        yield running


@pytest.fixture
async def api(suite: Suite) -> AsyncIterator[httpx.AsyncClient]:
    client = httpx.AsyncClient(base_url=suite.rest_url, timeout=10)
    r = await client.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
    r.raise_for_status()
    client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    yield client
    await client.aclose()


async def test_publish_and_command_round_trip(suite: Suite, api: httpx.AsyncClient) -> None:
    # Each cloud service is its own process, and the edge agent too.
    assert set(suite.cloud_procs) == set(SERVICES)
    assert suite.edge_proc is not None and suite.edge is None
    await asyncio.to_thread(
        publish_once,
        suite.mqtt_port,
        "fieldgate/default/devices/dist-1/events",
        {"type": "measurement", "values": {"temperature": 21.5}},
    )

    async def stored() -> list[dict[str, Any]]:
        return [e for e in await events_of(api, "dist-1") if e["type"] == "measurement"]

    events = await eventually(stored, timeout=30, what="the measurement through Kafka and Cassandra")
    assert events[0]["values"] == {"temperature": 21.5}

    dev = CommandDevice(suite.mqtt_port, "default", "dist-actor")
    try:
        await asyncio.to_thread(dev.start)
        await asyncio.to_thread(
            publish_once,
            suite.mqtt_port,
            "fieldgate/default/devices/dist-actor/events",
            {"type": "measurement", "values": {"x": 1}},
        )
        await eventually(lambda: events_of(api, "dist-actor"), timeout=30, what="the actor's first event")
        r = await api.post("/api/v1/devices/dist-actor/commands", json={"command": "ping", "params": {}})
        assert r.status_code == 201, r.text
        inv_id = r.json()["id"]

        async def answered() -> dict[str, Any] | None:
            body: dict[str, Any] = (await api.get(f"/api/v1/invocations/{inv_id}")).json()
            return body if body["status"] == "answered" else None

        final = await eventually(answered, timeout=30, what="the ping answered")
        assert final["response"] == {"pong": True}
        assert dev.received and dev.received[0]["command"] == "ping"
    finally:
        dev.stop()

    # kill -9 of a service: the suite starts it again, and events flow on (none lost).
    for service in ("event-store", "ingest"):
        victim = suite.cloud_procs[service]
        victim.send_signal(signal.SIGKILL)
        await victim.wait()

        async def restarted(s: str = service, v: asyncio.subprocess.Process = victim) -> bool:
            return suite.cloud_procs[s].pid != v.pid and suite.cloud_procs[s].returncode is None

        await eventually(restarted, timeout=60, what=f"{service} started again")
        device = f"after-kill-{service}"
        await asyncio.to_thread(
            publish_once,
            suite.mqtt_port,
            f"fieldgate/default/devices/{device}/events",
            {"type": "measurement", "values": {"n": 1}},
        )
        await eventually(
            lambda d=device: events_of(api, d), timeout=90, what=f"an event after {service} restarted"
        )


async def test_southbound_sims_in_distributed_mode(tmp_path: Path) -> None:
    """`fieldgate up --distributed --sims serial,modbus,ble`: every transport's events reach
    REST through Kafka and Cassandra, and a command is answered over Modbus."""
    from tests.e2e.conftest import login
    from tests.e2e.test_southbound import invoke, measurements

    options = SuiteOptions(
        data_dir=tmp_path / "fg",
        admin_password=PASSWORD,
        distributed=True,
        edge_process=True,
        southbound=("serial", "modbus", "ble"),
        sim_rate_hz=5.0,
    )
    async with Suite(options) as suite:
        api = await login(suite.rest_url, PASSWORD)
        try:
            for device in ("sim-serial-1", "sim-modbus-1", "sim-ble-env-1"):
                await eventually(lambda d=device: measurements(api, d), timeout=60, what=f"{device} events")
            written = await invoke(api, "sim-modbus-2", "set-setpoint", {"value": 21.5})
            assert written["status"] == "answered", written
            assert suite.southbound is not None and suite.southbound.modbus is not None
            assert suite.southbound.modbus.values(2)["setpoint"] == pytest.approx(21.5)
        finally:
            await api.aclose()
