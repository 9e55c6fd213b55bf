"""Batch operations and schedules over REST on the whole suite (embedded cloud, a real edge agent
with its embedded MQTT broker): 100 MQTT devices (one gateway-style paho client that subscribes
to each online device's commands topic and answers for it), a few of them offline until the end."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldgate.protocol import topics
from fieldgate.suite import Suite, SuiteOptions
from fieldgate.timeutil import now_ms
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.integration

PASSWORD = "batch-test-pw"
T = "default"


class GatewaySim:
    """One MQTT client speaking for many devices: it publishes their events and, for the devices
    it holds "online" (subscribed to their commands topic), answers every command."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="batch-gateway-sim")
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.received: dict[str, list[str]] = {}  # device -> invocation ids, in arrival order
        self._lock = threading.Lock()
        self._subacks: set[int] = set()
        self._port = port

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        self._subacks.add(mid)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        device = message.topic.split("/")[-2]
        command = json.loads(message.payload)
        with self._lock:
            self.received.setdefault(device, []).append(command["invocation"])
        answer = {
            "type": "command_response",
            "invocation": command["invocation"],
            "response": {"pong": device},
        }
        client.publish(topics.events_topic(T, device), json.dumps(answer), qos=1)

    def connect(self) -> None:
        self.client.connect("127.0.0.1", self._port, keepalive=30)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    async def online(self, devices: list[str]) -> None:
        mids = []
        for d in devices:
            rc, mid = self.client.subscribe(topics.commands_topic(T, d), qos=1)
            assert rc == mqtt.MQTT_ERR_SUCCESS
            mids.append(mid)

        async def acked() -> bool:
            return set(mids) <= self._subacks

        await eventually(acked, timeout=20, what="SUBACKs")

    async def publish_events(self, devices: list[str]) -> None:
        infos = [
            self.client.publish(
                topics.events_topic(T, d),
                json.dumps({"type": "measurement", "values": {"t": 1.0}, "id": f"hello-{d}"}),
                qos=1,
            )
            for d in devices
        ]

        async def published() -> bool:
            return all(i.is_published() for i in infos)

        await eventually(published, timeout=20, what="PUBACKs")


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    async with Suite(SuiteOptions(data_dir=tmp_path / "fg", admin_password=PASSWORD)) as s:
        yield s


@pytest.fixture
async def api(suite: Suite) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=suite.rest_url, timeout=15) as client:
        r = await client.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
        r.raise_for_status()
        client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        yield client


async def registered(api: httpx.AsyncClient, tokens: list[str]) -> None:
    async def all_there() -> bool:
        r = await api.get("/api/v1/devices", params={"page_size": 1000})
        have = {d["token"] for d in r.json()["items"]}
        return set(tokens) <= have

    await eventually(all_there, timeout=30, what="devices auto-registered")


async def progress(api: httpx.AsyncClient, op_id: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/batch-operations/{op_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_batch_to_100_devices_some_offline(suite: Suite, api: httpx.AsyncClient) -> None:
    devices = [f"bd-{i:03d}" for i in range(100)]
    offline = devices[95:]
    sim = GatewaySim(suite.mqtt_port)
    await asyncio.to_thread(sim.connect)
    try:
        await sim.publish_events(devices)  # registers them and teaches the cloud their edge
        await registered(api, devices)
        await sim.online(devices[:95])

        r = await api.post(
            "/api/v1/batch-operations",
            json={"command": "ping", "params": {}, "selection": {"filter": {"token_prefix": "bd-"}}},
        )
        assert r.status_code == 201, r.text
        op_id = r.json()["operation"]["id"]
        assert r.json()["progress"]["total"] == 100

        async def online_answered() -> dict[str, Any] | None:
            p = (await progress(api, op_id))["progress"]
            return p if p["answered"] == 95 and p["queued"] == 5 else None

        p = await eventually(online_answered, timeout=60, what="95 answered, 5 queued")
        assert p is not None and p["pending"] == 0 and p["failed"] == 0 and p["done"] == 95

        r = await api.get(f"/api/v1/batch-operations/{op_id}/devices", params={"page": 2, "page_size": 50})
        page2 = r.json()
        assert page2["total"] == 100 and len(page2["items"]) == 50
        by_device = {e["device"]: e for e in page2["items"]}
        for d in offline:
            assert by_device[d]["status"] == "queued" and by_device[d]["invocation"]
            inv = (await api.get(f"/api/v1/invocations/{by_device[d]['invocation']}")).json()
            assert inv["status"] == "queued"
        assert (await progress(api, op_id))["operation"]["status"] == "running"

        await sim.online(offline)  # they come back: the waiting commands are delivered

        async def all_answered() -> dict[str, Any] | None:
            body = await progress(api, op_id)
            return body if body["progress"]["answered"] == 100 else None

        body = await eventually(all_answered, timeout=60, what="all 100 answered")
        assert body is not None and body["operation"]["status"] == "completed"
        assert body["progress"]["done"] == 100 and body["progress"]["queued"] == 0
        # One invocation per device, each delivered once, none to a device outside the batch.
        assert set(sim.received) == set(devices)
        invocation_ids = [ids[0] for ids in sim.received.values()]
        assert len(set(invocation_ids)) == 100
        assert all(len(set(ids)) == 1 for ids in sim.received.values())

        listed = (await api.get("/api/v1/batch-operations")).json()
        assert listed["total"] == 1 and listed["items"][0]["id"] == op_id
        r = await api.post(f"/api/v1/batch-operations/{op_id}/cancel")
        assert r.status_code == 409, r.text  # completed
    finally:
        await asyncio.to_thread(sim.close)


async def test_bad_input_is_refused_naming_the_field(suite: Suite, api: httpx.AsyncClient) -> None:
    sim = GatewaySim(suite.mqtt_port)
    await asyncio.to_thread(sim.connect)
    try:
        await sim.publish_events(["bad-1", "bad-2"])
        await registered(api, ["bad-1", "bad-2"])
    finally:
        await asyncio.to_thread(sim.close)

    async def refused(path: str, body: dict[str, Any], field: str) -> None:
        r = await api.post(path, json=body)
        assert r.status_code == 422, r.text
        assert field in r.json()["detail"], r.text

    sel = {"devices": ["bad-1", "bad-2"]}
    await refused(
        "/api/v1/batch-operations", {"command": "reboot", "params": {}, "selection": sel}, "command"
    )
    await refused(
        "/api/v1/batch-operations",
        {"command": "set-interval", "params": {"seconds": "five"}, "selection": sel},
        "params: parameter 'seconds'",
    )
    await refused("/api/v1/batch-operations", {"command": "ping", "selection": {"devices": []}}, "selection")
    await refused(
        "/api/v1/batch-operations",
        {"command": "ping", "selection": {"filter": {"token_prefix": "zz-"}}},
        "selection",
    )
    await refused(
        "/api/v1/batch-operations", {"command": "ping", "selection": {"devices": ["nope"]}}, "selection"
    )
    await refused(
        "/api/v1/batch-operations", {"command": "ping", "selection": {"group": "g1"}}, "selection.group"
    )
    await refused(
        "/api/v1/schedules",
        {
            "id": "s1",
            "cron": "61 * * * *",
            "action": {"kind": "command", "device": "bad-1", "command": "ping"},
        },
        "cron",
    )
    await refused(
        "/api/v1/schedules",
        {
            "id": "s1",
            "cron": "* * * * *",
            "action": {"kind": "command", "device": "bad-1", "command": "reboot"},
        },
        "action.command",
    )
    assert (await api.get("/api/v1/batch-operations")).json()["total"] == 0
    assert (await api.get("/api/v1/schedules")).json()["items"] == []

    # A device group (the site store) is a selection too.
    assert (await api.post("/api/v1/device-groups", json={"token": "g2"})).status_code == 201
    r = await api.post("/api/v1/device-groups/g2/elements", json={"kind": "device", "token": "bad-2"})
    assert r.status_code in (200, 201), r.text
    r = await api.post("/api/v1/batch-operations", json={"command": "ping", "selection": {"group": "g2"}})
    assert r.status_code == 201, r.text
    assert r.json()["progress"]["total"] == 1
    devices = (await api.get(f"/api/v1/batch-operations/{r.json()['operation']['id']}/devices")).json()
    assert [e["device"] for e in devices["items"]] == ["bad-2"]


async def test_schedule_crud_and_a_one_shot_firing(suite: Suite, api: httpx.AsyncClient) -> None:
    sim = GatewaySim(suite.mqtt_port)
    await asyncio.to_thread(sim.connect)
    try:
        await sim.publish_events(["sch-1"])
        await registered(api, ["sch-1"])
        await sim.online(["sch-1"])
        r = await api.post(
            "/api/v1/schedules",
            json={
                "id": "nightly",
                "cron": "0 3 * * *",
                "action": {"kind": "command", "device": "sch-1", "command": "ping"},
            },
        )
        assert r.status_code == 201, r.text
        assert r.json()["next_ms"] > now_ms()
        r = await api.put(
            "/api/v1/schedules/nightly",
            json={
                "id": "nightly",
                "cron": "0 4 * * *",
                "enabled": False,
                "action": {"kind": "command", "device": "sch-1", "command": "ping"},
            },
        )
        assert (
            r.status_code == 200
            and r.json()["schedule"]["cron"] == "0 4 * * *"
            and r.json()["next_ms"] is None
        )
        r = await api.post(
            "/api/v1/schedules",
            json={
                "id": "soon",
                "at_ms": now_ms() + 500,
                "action": {"kind": "batch", "command": "ping", "selection": {"devices": ["sch-1"]}},
            },
        )
        assert r.status_code == 201, r.text

        async def fired() -> list[Any]:
            runs: list[Any] = (await api.get("/api/v1/schedules/soon/runs")).json()["items"]
            return runs if runs and runs[0]["result"] else []

        runs = await eventually(fired, timeout=20, what="the one-shot schedule ran")
        assert len(runs) == 1 and runs[0]["result"].startswith("batch ")
        op_id = runs[0]["result"].split()[1]

        async def answered() -> bool:
            return bool((await progress(api, op_id))["progress"]["answered"] == 1)

        await eventually(answered, timeout=30, what="the scheduled batch answered")
        soon = (await api.get("/api/v1/schedules/soon")).json()
        assert soon["schedule"]["enabled"] is False and soon["next_ms"] is None
        assert len((await api.get("/api/v1/schedules/soon/runs")).json()["items"]) == 1
        assert (await api.delete("/api/v1/schedules/nightly")).status_code == 204
        assert (await api.get("/api/v1/schedules/nightly")).status_code == 404
        assert [s["schedule"]["id"] for s in (await api.get("/api/v1/schedules")).json()["items"]] == ["soon"]
    finally:
        await asyncio.to_thread(sim.close)
