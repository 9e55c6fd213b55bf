"""Presence and rules end to end: an MQTT device → the edge agent → the cloud's state stage →
REST, on the embedded broker, Mosquitto, and the distributed backends (Kafka, Cassandra,
ZooKeeper: there the rule change travels through ZooKeeper to the state service's process)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from fieldgate.suite import Suite
from tests.e2e.test_end_to_end import events_of, publish_once
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
    changes = [e for e in await events_of(api, "pres-1", type="state_change") if e["kind"] == "presence"]
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
