"""Issue 9's acceptance walkthrough, as a new user would try it: through the REST API only,
against the real suite (embedded broker, edge agent, gRPC uplink, cloud pipeline, SQLite
stores) with simulated MQTT devices.

One story, in order: model a small site (an area type and an area with two zones, a customer
type and a customer, an asset type and assets, a device group); assign a device to the
customer, area and asset; move it through a zone (a geofence alert raised, then cleared on
leaving); stream measurements past a threshold (raised, held by the hysteresis, cleared);
point a webhook at a receiver that answers 500 for a while and then recovers (nothing lost,
duplicates carry the same idempotency key); run a batch command on the group (one device
answering, one offline: per-device status); stop the device and watch it go ``missing`` and
come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.suite import Suite, SuiteOptions
from tests.e2e.conftest import PASSWORD, login
from tests.e2e.test_end_to_end import events_of, publish_once
from tests.helpers.edge_mqtt import CommandDevice
from tests.helpers.waiting import eventually, never, not_yet
from tests.helpers.webhook_receiver import webhook_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DOCK = [[52.0, 13.0], [52.0, 13.01], [52.01, 13.01], [52.01, 13.0]]
YARD = [[52.02, 13.0], [52.02, 13.01], [52.03, 13.01], [52.03, 13.0]]
OUTSIDE = (52.015, 13.005)  # between the two zones
IN_DOCK = (52.005, 13.005)


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    # The webhook receiver below listens on 127.0.0.1: the operator allows loopback targets.
    options = SuiteOptions(
        data_dir=tmp_path / "fg", admin_password=PASSWORD, connector_networks=("127.0.0.0/8",)
    )
    async with Suite(options) as s:
        yield s


@pytest.fixture
async def api(suite: Suite) -> AsyncIterator[httpx.AsyncClient]:
    client = await login(suite.rest_url)
    yield client
    await client.aclose()


async def _ok(api: httpx.AsyncClient, method: str, path: str, body: Any = None, code: int = 201) -> Any:
    r = await api.request(method, path, json=body)
    assert r.status_code == code, f"{method} {path}: {r.status_code} {r.text}"
    return r.json() if r.content else None


async def _alerts(api: httpx.AsyncClient, device: str, rule: str) -> list[tuple[str, str]]:
    """(alert_state, level) of the rule's alerts, oldest first."""
    evs = [e for e in await events_of(api, device, type="alert") if e["alert_type"] == rule]
    return [(e["metadata"]["alert_state"], e["level"]) for e in reversed(evs)]


async def test_site_walkthrough(suite: Suite, api: httpx.AsyncClient) -> None:
    port = suite.mqtt_port
    topic = "fieldgate/default/devices/trk-1/events"

    async def send(payload: Any, device: str = "trk-1") -> None:
        await asyncio.to_thread(publish_once, port, f"fieldgate/default/devices/{device}/events", payload)

    # --- model the site ------------------------------------------------------------------------
    await _ok(api, "POST", "/api/v1/area-types", {"token": "warehouse", "name": "Warehouse"})
    await _ok(api, "POST", "/api/v1/areas", {"token": "depot", "area_type": "warehouse", "name": "Depot"})
    await _ok(api, "POST", "/api/v1/areas/depot/zones", {"token": "dock", "polygon": DOCK, "name": "Dock"})
    await _ok(api, "POST", "/api/v1/areas/depot/zones", {"token": "yard", "polygon": YARD})
    await _ok(api, "POST", "/api/v1/customer-types", {"token": "tenant-co"})
    await _ok(api, "POST", "/api/v1/customers", {"token": "acme", "customer_type": "tenant-co"})
    await _ok(api, "POST", "/api/v1/asset-types", {"token": "forklift"})
    await _ok(api, "POST", "/api/v1/assets", {"token": "fl-1", "asset_type": "forklift"})
    await _ok(api, "POST", "/api/v1/assets", {"token": "fl-2", "asset_type": "forklift"})
    tracker = {"token": "tracker", "name": "Tracker", "commands": [{"name": "ping"}]}
    await _ok(api, "POST", "/api/v1/device-types", tracker)
    for d in ("trk-1", "trk-2", "trk-3"):
        await _ok(api, "POST", "/api/v1/devices", {"token": d, "device_type": "tracker"})
    await _ok(api, "POST", "/api/v1/device-groups", {"token": "fleet", "roles": ["mover"]})
    await _ok(api, "POST", "/api/v1/device-groups/fleet/elements", {"kind": "device", "token": "trk-2"})
    await _ok(api, "POST", "/api/v1/device-groups/fleet/elements", {"kind": "device", "token": "trk-3"})
    zones = await _ok(api, "GET", "/api/v1/areas/depot/zones", code=200)
    assert [z["token"] for z in zones["items"]] == ["dock", "yard"]

    # An assignment naming what does not exist is refused, and what it names is then held.
    r = await api.post("/api/v1/assignments", json={"device": "trk-1", "area": "depot-2"})
    assert r.status_code == 422 and "area 'depot-2' does not exist" in r.json()["detail"]
    asg = await _ok(
        api,
        "POST",
        "/api/v1/assignments",
        {"device": "trk-1", "customer": "acme", "area": "depot", "asset": "fl-1"},
    )
    r = await api.delete("/api/v1/assets/fl-1")
    assert r.status_code == 409 and asg["token"] in r.json()["detail"]
    assert (await api.delete("/api/v1/assets/fl-2")).status_code in (200, 204)  # unused: deletable

    # --- rules and the webhook, before the device speaks ---------------------------------------
    await _ok(
        api, "POST", "/api/v1/rules", {"id": "at-dock", "kind": "geofence", "zone": "dock", "on": "enter"}
    )
    hot = {"id": "hot", "kind": "threshold", "measurement": "t", "operator": ">", "value": 30}
    await _ok(api, "POST", "/api/v1/rules", {**hot, "hysteresis": 2, "level": "critical"})
    async with webhook_receiver() as rx:
        rx.mode = "500"
        hook = {
            "id": "hook",
            "kind": "webhook",
            "webhook": {"url": rx.url},
            "filter": {"event_types": ["measurement"], "areas": ["depot"]},
            "delivery": {"max_attempts": 100, "initial_backoff_s": 0.1, "max_backoff_s": 0.5, "timeout_s": 2},
        }
        # It delivers every event stored from now on, whenever the stage notices it.
        await _ok(api, "POST", "/api/v1/connectors", hook)

        # --- the geofence: outside, into the dock, out again ------------------------------------
        for lat, lon in (OUTSIDE, IN_DOCK, OUTSIDE):
            await send({"type": "location", "lat": lat, "lon": lon})
        fence = await eventually(
            lambda: _want(_alerts(api, "trk-1", "at-dock"), 2), timeout=30, what="geofence raised and cleared"
        )
        assert [s for s, _ in fence] == ["raised", "cleared"]

        # --- the threshold under a stream of measurements ---------------------------------------
        values = [25.0, 29.0, 31.5, 33.0, 29.5, 28.5, 27.0, 26.0]
        for v in values:  # raised at 31.5; 29.5 and 28.5 are within the hysteresis; cleared at 27
            await send({"type": "measurement", "values": {"t": v}})
        heat = await eventually(lambda: _want(_alerts(api, "trk-1", "hot"), 2), timeout=30, what="hot alerts")
        assert heat == [("raised", "critical"), ("cleared", "critical")]
        stored = [e for e in await events_of(api, "trk-1", type="measurement")]
        assert len(stored) == len(values) and all(e["assignment"] == asg["token"] for e in stored)

        # The state stage reads what persistence stored: the last value lands there a moment later.
        async def last_value_in_state() -> Any:
            state = await _ok(api, "GET", "/api/v1/devices/trk-1/state", code=200)
            return state if state["measurements"]["t"]["value"] == 26.0 else not_yet(state["measurements"])

        state = await eventually(last_value_in_state, what="the last measurement in the device's state")
        assert state["location"]["lat"] == pytest.approx(OUTSIDE[0])

        # --- the receiver was down all along: let it recover ------------------------------------
        await eventually(lambda: rx.failed >= 3, timeout=20, what="webhook retried against 500s")
        assert rx.accepted == []
        rx.mode = "ok"
        want = {e["id"] for e in stored}
        await eventually(lambda: want <= set(rx.event_ids()), timeout=30, what="every measurement delivered")
        # Nothing that is not a depot measurement arrives after them.
        await never(lambda: set(rx.event_ids()) - want, within=1.0, what="an event the filter excludes")
        got = rx.event_ids()
        assert set(got) == want  # nothing lost, and nothing that is not a depot measurement
        assert len(rx.keys) == len(want)  # a duplicate of an event carries that event's key
        assert sum(rx.keys.values()) == len(got)
        letters = await _ok(api, "GET", "/api/v1/connectors/hook/dead-letters", code=200)
        assert letters["items"] == []

    # --- a batch command on the group: trk-2 answers, trk-3 is offline ------------------------
    dev = CommandDevice(port, "default", "trk-2")
    await asyncio.to_thread(dev.start)
    try:
        await send({"type": "measurement", "values": {"t": 20}}, device="trk-2")  # routes it to the edge
        await eventually(lambda: events_of(api, "trk-2"), timeout=15, what="trk-2 heard")
        op = await _ok(
            api,
            "POST",
            "/api/v1/batch-operations",
            {"command": "ping", "params": {}, "selection": {"group": "fleet"}},
        )
        op_id = op["operation"]["id"]
        assert op["progress"]["total"] == 2

        async def per_device() -> dict[str, str] | None:
            items = (await _ok(api, "GET", f"/api/v1/batch-operations/{op_id}/devices", code=200))["items"]
            status = {e["device"]: e["status"] for e in items}
            return status if status.get("trk-2") == "answered" and status.get("trk-3") else None

        status = await eventually(per_device, timeout=30, what="batch: trk-2 answered")
        assert status == {"trk-2": "answered", "trk-3": "queued"}
        progress = (await _ok(api, "GET", f"/api/v1/batch-operations/{op_id}", code=200))["progress"]
        assert progress["answered"] == 1 and progress["queued"] == 1
        assert [c["command"] for c in dev.received] == ["ping"]
    finally:
        await asyncio.to_thread(dev.stop)

    # --- presence: a short interval, the device stops, goes missing, comes back ---------------
    # Presence intervals are per device type; the device speaks once more, then stops.
    await _ok(api, "PUT", "/api/v1/presence-intervals", {"tracker": 2}, code=200)
    await send({"type": "measurement", "values": {"t": 21}})

    async def presence() -> str:
        return str((await _ok(api, "GET", "/api/v1/devices/trk-1/state", code=200))["presence"])

    await eventually(lambda: _want_eq(presence(), "missing"), timeout=30, what="trk-1 missing")
    listed = await _ok(api, "GET", "/api/v1/device-states?presence=missing", code=200)
    assert "trk-1" in {s["device"] for s in listed["items"]}
    await asyncio.to_thread(publish_once, port, topic, {"type": "measurement", "values": {"t": 22}})
    await eventually(lambda: _want_eq(presence(), "present"), timeout=30, what="trk-1 present again")
    changes = [  # presence, not the link changes the embedded broker reports beside them
        e
        for e in await events_of(api, "trk-1", type="state_change")
        if e["kind"] == "presence" and e["current"] in ("present", "missing")
    ]
    assert [(c["previous"], c["current"]) for c in reversed(changes)][:2] == [
        ("present", "missing"),
        ("missing", "present"),
    ]


async def _want(coro: Any, n: int) -> Any:
    got = await coro
    return got if len(got) >= n else None


async def _want_eq(coro: Any, want: str) -> bool:
    return bool(await coro == want)
