"""Presence and rules end to end: an MQTT device → the edge agent → the cloud's state stage →
REST, on the embedded broker, Mosquitto, and the distributed backends (Kafka, Cassandra,
ZooKeeper: there the rule change travels through ZooKeeper to the state service's process)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from fieldgate.protocol import topics
from fieldgate.suite import Suite
from tests.e2e.test_end_to_end import events_of, publish_once
from tests.helpers.mqtt_devices import Device
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def _state(api: httpx.AsyncClient, device: str) -> dict[str, Any] | None:
    r = await api.get(f"/api/v1/devices/{device}/state")
    return r.json() if r.status_code == 200 else None


async def test_presence_missing_and_back_with_a_rule(suite: Suite, api: httpx.AsyncClient) -> None:
    assert (await api.put("/api/v1/presence-intervals", json={"default": 3})).status_code == 200
    rule = {
        "id": "hot",
        "kind": "threshold",
        "measurement": "t",
        "operator": ">",
        "value": 30,
        "level": "error",
    }
    assert (await api.post("/api/v1/rules", json=rule)).status_code == 201
    topic = "fieldgate/default/devices/pres-1/events"
    await asyncio.to_thread(
        publish_once, suite.mqtt_port, topic, {"type": "measurement", "values": {"t": 35}}
    )

    async def alerted() -> list[dict[str, Any]]:
        return [e for e in await events_of(api, "pres-1", type="alert") if e["alert_type"] == "hot"]

    (alert,) = await eventually(alerted, timeout=60, what="rule alert stored")
    assert alert["metadata"]["alert_state"] == "raised" and alert["level"] == "error"

    async def missing() -> dict[str, Any] | None:
        s = await _state(api, "pres-1")
        return s if s and s["presence"] == "missing" else None

    state = await eventually(missing, timeout=60, what="device missing")
    assert state["last_alert"]["rule"] == "hot" and state["measurements"]["t"]["value"] == 35
    # Presence changes (the state stage's); the edge's link changes share the kind (the
    # embedded broker reports the publishing client's connect and disconnect).
    changes = [
        e
        for e in await events_of(api, "pres-1", type="state_change")
        if e["kind"] == "presence" and e["current"] in ("present", "missing")
    ]
    assert [(c["previous"], c["current"]) for c in changes] == [("present", "missing")]
    listed = (await api.get("/api/v1/device-states", params={"presence": "missing"})).json()
    assert "pres-1" in [s["device"] for s in listed["items"]]

    await asyncio.to_thread(
        publish_once, suite.mqtt_port, topic, {"type": "measurement", "values": {"t": 20}}
    )

    async def back() -> list[dict[str, Any]]:
        evs = [e for e in await events_of(api, "pres-1", type="state_change") if e["current"] == "present"]
        s = await _state(api, "pres-1")
        return evs if evs and s and s["presence"] == "present" else []

    await eventually(back, timeout=60, what="present again")
    cleared = await eventually(
        lambda: _alerts_of_state(api, "pres-1", "cleared"), timeout=60, what="rule alert cleared"
    )
    assert cleared


async def _alerts_of_state(api: httpx.AsyncClient, device: str, state: str) -> list[dict[str, Any]]:
    return [
        e for e in await events_of(api, device, type="alert") if e["metadata"].get("alert_state") == state
    ]


async def _listed(api: httpx.AsyncClient, presence: str) -> set[str]:
    r = await api.get("/api/v1/devices", params={"presence": presence, "page_size": 1000})
    r.raise_for_status()
    return {d["token"] for d in r.json()["items"]}


async def test_a_cut_presence_interval_reaches_a_silent_device(suite: Suite, api: httpx.AsyncClient) -> None:
    """The interval is changed while the device is already silent: it does not wait for the
    old 300 s (on the distributed backends the change travels through ZooKeeper to the state
    service, and the states are in Cassandra)."""
    topic = "fieldgate/default/devices/quiet-1/events"
    await asyncio.to_thread(publish_once, suite.mqtt_port, topic, {"type": "measurement", "values": {"t": 1}})

    async def present() -> dict[str, Any] | None:
        s = await _state(api, "quiet-1")
        return s if s and s["presence"] == "present" else None

    await eventually(present, timeout=60, what="device present")
    r = await api.put("/api/v1/presence-intervals", json={"default": 2})
    assert r.status_code == 200, r.text

    async def missing() -> dict[str, Any] | None:
        s = await _state(api, "quiet-1")
        return s if s and s["presence"] == "missing" else None

    await eventually(missing, timeout=30, what="device missing after the interval was cut to 2 s")
    assert "quiet-1" in await _listed(api, "missing")


async def test_an_mqtt_device_that_goes_away_is_offline(suite: Suite, api: httpx.AsyncClient) -> None:
    """Two devices written as docs/protocols/mqtt.md recommends (will and birth message on the
    link topic): one says goodbye and disconnects, the other stops sending, keepalive pings
    included. Both are ``offline`` within seconds, on either broker."""
    devices: dict[str, Device] = {}
    for token, keepalive in (("door-bye", 30), ("door-quiet", 2)):
        link = topics.link_topic("default", token)
        dev = await Device(
            "127.0.0.1", suite.mqtt_port, keepalive=keepalive, will=(link, "disconnected")
        ).connect()
        await asyncio.to_thread(
            dev.client.publish(link, "connected", qos=1, retain=True).wait_for_publish, 10
        )
        await dev.subscribe(topics.commands_topic("default", token))
        await dev.publish_acked(
            topics.events_topic("default", token), {"type": "measurement", "values": {"t": 1}}
        )
        devices[token] = dev

    async def online() -> bool:
        return {"door-bye", "door-quiet"} <= await _listed(api, "online")

    await eventually(online, timeout=60, what="both devices online")
    state = await _state(api, "door-bye")
    assert state is not None and state["link"]["status"] == "connected"

    bye = devices["door-bye"]
    link = topics.link_topic("default", "door-bye")
    await asyncio.to_thread(bye.client.publish(link, "disconnected", qos=1, retain=True).wait_for_publish, 10)
    await bye.close()
    await devices["door-quiet"].go_silent()
    try:

        async def offline() -> bool:
            return {"door-bye", "door-quiet"} <= await _listed(api, "offline")

        await eventually(offline, timeout=30, what="both devices offline")
    finally:
        await devices["door-quiet"].drop()
    state = await _state(api, "door-quiet")
    assert state is not None and state["presence"] == "present" and state["link"]["status"] == "disconnected"
