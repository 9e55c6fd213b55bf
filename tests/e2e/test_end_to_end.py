"""The whole suite end to end: MQTT device → edge agent → cloud → REST, and commands back down.

Everything is real: the embedded amqtt broker, paho clients, the gRPC uplink, the embedded bus,
the SQLite stores and the REST API over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldgate.suite import Suite, SuiteOptions
from tests.e2e.conftest import login
from tests.helpers.edge_mqtt import CommandDevice
from tests.helpers.publisher import AckedPublisher
from tests.helpers.waiting import eventually, never

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def events_of(api: httpx.AsyncClient, device: str, **params: Any) -> list[dict[str, Any]]:
    r = await api.get(f"/api/v1/devices/{device}/events", params={"page_size": 1000, **params})
    if r.status_code == 404:
        return []
    r.raise_for_status()
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def publish_once(port: int, topic: str, payload: Any) -> None:
    pub = AckedPublisher("127.0.0.1", port)
    pub.connect()
    pub.publish(topic, payload, "x")
    assert pub.wait_all_acked(10), "broker never acknowledged the QoS 1 publish"
    pub.close()


async def test_measurement_reaches_rest(suite: Suite, api: httpx.AsyncClient) -> None:
    await asyncio.to_thread(
        publish_once,
        suite.mqtt_port,
        "fieldgate/default/devices/thermo-1/events",
        {"type": "measurement", "values": {"temperature": 21.5}},
    )

    async def stored() -> list[dict[str, Any]]:
        return [e for e in await events_of(api, "thermo-1", type="measurement")]

    events = await eventually(stored, timeout=10, what="measurement in REST")
    assert events[0]["values"] == {"temperature": 21.5}
    # The unknown device was auto-registered with the default device type.
    r = await api.get("/api/v1/devices/thermo-1")
    assert r.status_code == 200 and r.json()["device_type"] == "default"


async def test_all_event_types_and_sitewhere(suite: Suite, api: httpx.AsyncClient) -> None:
    topic = "fieldgate/default/devices/multi-1/events"
    batch = [
        {"type": "measurement", "values": {"t": 1.0}, "ts": "2026-01-01T00:00:00Z"},
        {"type": "location", "lat": 52.5, "lon": 13.4, "ele": 34.0},
        {"type": "alert", "alert_type": "overheat", "level": "critical", "message": "hot"},
    ]
    await asyncio.to_thread(publish_once, suite.mqtt_port, topic, batch)
    sw = {
        "deviceToken": "sw-1",
        "type": "DeviceMeasurement",
        "request": {"name": "humidity", "value": 40.5, "eventDate": 1767225600000},
    }
    await asyncio.to_thread(publish_once, suite.mqtt_port, "SiteWhere/default/input/json", sw)

    async def multi() -> bool:
        return len(await events_of(api, "multi-1")) >= 3

    await eventually(multi, timeout=10, what="three events of multi-1")
    kinds = {e["type"] for e in await events_of(api, "multi-1")}
    assert {"measurement", "location", "alert"} <= kinds

    async def sw_stored() -> list[dict[str, Any]]:
        return await events_of(api, "sw-1", type="measurement")

    sw_events = await eventually(sw_stored, timeout=10, what="SiteWhere measurement")
    assert sw_events[0]["values"] == {"humidity": 40.5}


async def test_command_round_trip(suite: Suite, api: httpx.AsyncClient) -> None:
    dev = CommandDevice(suite.mqtt_port, "default", "actor-1")
    try:
        await asyncio.to_thread(dev.start)
        # The device must be known to the cloud (and routed through this edge): one event first.
        await asyncio.to_thread(
            publish_once,
            suite.mqtt_port,
            "fieldgate/default/devices/actor-1/events",
            {"type": "measurement", "values": {"x": 1}},
        )
        await eventually(lambda: events_of(api, "actor-1"), timeout=10, what="first event")

        r = await api.post("/api/v1/devices/actor-1/commands", json={"command": "ping", "params": {}})
        assert r.status_code == 201, r.text
        inv = r.json()

        async def answered() -> dict[str, Any] | None:
            body: dict[str, Any] = (await api.get(f"/api/v1/invocations/{inv['id']}")).json()
            return body if body["status"] == "answered" else None

        final = await eventually(answered, timeout=15, what="invocation answered")
        assert final["response"] == {"pong": True}
        assert dev.received and dev.received[0]["command"] == "ping"
        # The invocation and the response are both in the device's event history.
        kinds = {e["type"] for e in await events_of(api, "actor-1")}
        assert {"command_invocation", "command_response"} <= kinds
    finally:
        dev.stop()


async def test_a_device_answers_only_its_own_commands(suite: Suite, api: httpx.AsyncClient) -> None:
    """Another device's command_response (fieldgate JSON, or SiteWhere's Acknowledge) naming
    actor-2's invocation is kept in that device's history with the reason it was refused, and
    the invocation shows only actor-2's own answer."""
    dev = CommandDevice(suite.mqtt_port, "default", "actor-2")
    try:
        await asyncio.to_thread(dev.start)
        await asyncio.to_thread(
            publish_once,
            suite.mqtt_port,
            "fieldgate/default/devices/actor-2/events",
            {"type": "measurement", "values": {"x": 1}},
        )
        await eventually(lambda: events_of(api, "actor-2"), timeout=10, what="first event")
        r = await api.post("/api/v1/devices/actor-2/commands", json={"command": "ping", "params": {}})
        assert r.status_code == 201, r.text
        inv_id = r.json()["id"]

        async def answered() -> dict[str, Any] | None:
            body: dict[str, Any] = (await api.get(f"/api/v1/invocations/{inv_id}")).json()
            return body if body["status"] == "answered" else None

        await eventually(answered, timeout=15, what="invocation answered by its device")
    finally:
        dev.stop()

    intruder = {"type": "command_response", "invocation": inv_id, "response": {"pong": "forged"}}
    await asyncio.to_thread(
        publish_once, suite.mqtt_port, "fieldgate/default/devices/intruder-1/events", intruder
    )
    acknowledge = {
        "deviceToken": "sw-intruder",
        "type": "Acknowledge",
        "request": {"originatingEventId": inv_id, "response": "done"},
    }
    await asyncio.to_thread(publish_once, suite.mqtt_port, "SiteWhere/default/input/json", acknowledge)

    for device in ("intruder-1", "sw-intruder"):

        async def kept(device: str = device) -> list[dict[str, Any]]:
            return await events_of(api, device, type="command_response")

        [event] = await eventually(kept, timeout=15, what=f"{device}'s response stored")
        assert (event["invocation"], event["refused"]) == (inv_id, "the invocation is for another device")

    final = (await api.get(f"/api/v1/invocations/{inv_id}")).json()
    assert (final["status"], final["response"]) == ("answered", {"pong": True})
    linked = (await api.get(f"/api/v1/invocations/{inv_id}/events")).json()["events"]
    assert {(e["device"], e["type"]) for e in linked} == {
        ("actor-2", "command_invocation"),
        ("actor-2", "command_response"),
    }


async def test_command_validation(suite: Suite, api: httpx.AsyncClient) -> None:
    await asyncio.to_thread(
        publish_once,
        suite.mqtt_port,
        "fieldgate/default/devices/val-1/events",
        {"type": "measurement", "values": {"x": 1}},
    )
    await eventually(lambda: events_of(api, "val-1"), timeout=10, what="device registered")
    bad = await api.post("/api/v1/devices/val-1/commands", json={"command": "self-destruct", "params": {}})
    assert bad.status_code == 422
    wrong = await api.post(
        "/api/v1/devices/val-1/commands", json={"command": "set-interval", "params": {"seconds": "soon"}}
    )
    assert wrong.status_code == 422
    missing = await api.post("/api/v1/devices/nope/commands", json={"command": "ping", "params": {}})
    assert missing.status_code == 404


async def test_command_waits_for_offline_device(suite: Suite, api: httpx.AsyncClient) -> None:
    """A command for a device that is not subscribed waits at the edge until it comes online."""
    if suite.options.mqtt_mode == "external":
        pytest.skip(
            "an external broker does not tell the agent who is subscribed (docs/operations/mosquitto.md)"
        )
    await asyncio.to_thread(
        publish_once,
        suite.mqtt_port,
        "fieldgate/default/devices/sleepy-1/events",
        {"type": "measurement", "values": {"x": 1}},
    )
    await eventually(lambda: events_of(api, "sleepy-1"), timeout=10, what="device registered")
    r = await api.post(
        "/api/v1/devices/sleepy-1/commands",
        json={"command": "set-interval", "params": {"seconds": 5}, "ttl_s": 600},
    )
    assert r.status_code == 201, r.text
    inv_id = r.json()["id"]

    async def not_queued() -> str | None:
        status = str((await api.get(f"/api/v1/invocations/{inv_id}")).json()["status"])
        return status if status != "queued" else None

    # Nobody is subscribed: it waits at the edge.
    await never(not_queued, within=1.0, what="the command for the offline device leaving QUEUED")

    dev = CommandDevice(suite.mqtt_port, "default", "sleepy-1")
    try:
        await asyncio.to_thread(dev.start)

        async def answered() -> bool:
            return bool((await api.get(f"/api/v1/invocations/{inv_id}")).json()["status"] == "answered")

        await eventually(answered, timeout=15, what="queued command delivered once the device is online")
        assert dev.received[0]["params"] == {"seconds": 5}
    finally:
        dev.stop()


async def test_malformed_payloads_are_kept_aside(suite: Suite, api: httpx.AsyncClient) -> None:
    topic = "fieldgate/default/devices/mixed-1/events"
    bad_payloads: list[bytes] = [
        b"{not json",
        json.dumps({"type": "measurement", "values": {"t": "hot"}}).encode(),
        json.dumps({"type": "teleport"}).encode(),
        b"[" + b'{"type":"measurement","values":{"a":1}},' * 30000 + b"{}]",  # oversized
    ]

    def publish_mixed() -> None:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="mixed")
        c.connect("127.0.0.1", suite.mqtt_port)
        c.loop_start()
        for i in range(10):
            c.publish(topic, json.dumps({"type": "measurement", "values": {"i": i}}), qos=1).wait_for_publish(
                10
            )
            c.publish(topic, bad_payloads[i % len(bad_payloads)], qos=1).wait_for_publish(10)
        c.disconnect()
        c.loop_stop()

    await asyncio.to_thread(publish_mixed)

    async def ten_good() -> bool:
        return len(await events_of(api, "mixed-1", type="measurement")) >= 10

    await eventually(ten_good, timeout=10, what="the good events")
    assert suite.edge is not None
    failed = await suite.edge.buffer.failed_decodes(100)
    assert len(failed) == 10
    reasons = " ".join(str(f) for f in failed)
    assert "JSON" in reasons or "json" in reasons
    assert len(await events_of(api, "mixed-1", type="measurement")) == 10


async def test_edge_as_its_own_process(tmp_path: Path) -> None:
    """`fieldgate up`'s layout: the edge agent runs as a child process (`fieldgate edge run`)."""
    opts = SuiteOptions(data_dir=tmp_path / "fg", admin_password="pw-of-the-proc", edge_process=True)
    async with Suite(opts) as suite:
        assert suite.edge is None and suite.edge_pid != os.getpid()
        api = await login(suite.rest_url, "pw-of-the-proc")
        try:
            await asyncio.to_thread(
                publish_once,
                suite.mqtt_port,
                "fieldgate/default/devices/proc-1/events",
                {"type": "measurement", "values": {"v": 7.0}},
            )

            async def stored() -> list[dict[str, Any]]:
                return await events_of(api, "proc-1", type="measurement")

            events = await eventually(stored, timeout=15, what="event through the edge process")
            assert events[0]["values"] == {"v": 7.0}
        finally:
            await api.aclose()
        proc = suite.edge_proc
    assert proc is not None and proc.returncode == 0, "the edge process did not stop cleanly"
