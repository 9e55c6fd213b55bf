"""Device state, presence and rules → alerts through the real all-in-one cloud (embedded bus,
SQLite stores, REST over HTTP). Events enter at [decoded] as ingest would publish them, with
chosen event times, so conditions with durations and rates are exact."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.bus import DECODED, Message, topic_name
from fieldgate.cloud.config import CloudConfig, TenantConfig
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.waiting import NotYet, eventually, not_yet

pytestmark = pytest.mark.integration

PASSWORD = "state-rules-pw"


def _config(data_dir: Path) -> CloudConfig:
    return CloudConfig(data_dir=data_dir, grpc_port=0, rest_port=0, tenants=(TenantConfig(token="default"),))


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[CloudApp]:
    app = CloudApp(_config(tmp_path / "cloud"))
    await app.start()
    await app.ensure_admin(PASSWORD)
    yield app
    await app.stop()


async def _client(app: CloudApp) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.rest_port}", timeout=10)
    r = await client.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
    r.raise_for_status()
    client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    return client


@pytest.fixture
async def api(cloud: CloudApp) -> AsyncIterator[httpx.AsyncClient]:
    client = await _client(cloud)
    yield client
    await client.aclose()


T0 = 1_800_000_000_000


async def send(app: CloudApp, device: str, alt: str, t: int, **payload: Any) -> None:
    ev = pb.Event(
        tenant="default", device=device, alternate_id=alt, event_time_ms=t, received_time_ms=now_ms()
    )
    if "values" in payload:
        ev.measurement.values.update(payload["values"])
    elif "lat" in payload:
        ev.location.latitude, ev.location.longitude = payload["lat"], payload["lon"]
    batch = pb.EventBatch(events=[ev])
    await app.parts.bus.publish(
        topic_name("default", DECODED), [Message(device.encode(), batch.SerializeToString())]
    )


async def events(api: httpx.AsyncClient, device: str, kind: str) -> list[dict[str, Any]]:
    r = await api.get(f"/api/v1/devices/{device}/events", params={"type": kind, "page_size": 1000})
    if r.status_code == 404:
        return []
    r.raise_for_status()
    return list(reversed(r.json()["items"]))  # oldest first


async def rule_alerts(api: httpx.AsyncClient, device: str) -> list[tuple[str, str]]:
    return [(e["alert_type"], e["metadata"]["alert_state"]) for e in await events(api, device, "alert")]


async def wait_state(api: httpx.AsyncClient, device: str, check: Any, what: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | NotYet | None:
        r = await api.get(f"/api/v1/devices/{device}/state")
        if r.status_code != 200:
            return None
        body: dict[str, Any] = r.json()
        return body if check(body) else not_yet(body)

    return await eventually(probe, what=what)


async def add_rule(api: httpx.AsyncClient, rule: dict[str, Any]) -> None:
    r = await api.post("/api/v1/rules", json=rule)
    assert r.status_code == 201, r.text


HOT = {
    "id": "hot",
    "kind": "threshold",
    "measurement": "temp",
    "operator": ">",
    "value": 30,
    "hysteresis": 2,
    "for_s": 10,
    "level": "critical",
}


async def test_threshold_with_hysteresis_and_duration(cloud: CloudApp, api: httpx.AsyncClient) -> None:
    await add_rule(api, HOT)
    # 31 at t0, 32 at +5 s: not yet 10 s. 29 at +7 s breaks the condition (timer restarts).
    stream = [(0, 31), (5, 32), (7, 29), (8, 31), (15, 33), (18, 35), (20, 29), (22, 27.5), (30, 31)]
    for i, (dt, v) in enumerate(stream):
        await send(cloud, "tank-1", f"m{i}", T0 + dt * 1000, values={"temp": v})
    # Raised at +18 s (31 since +8 s, 10 s later) ; 29 at +20 is within the hysteresis (> 28):
    # still raised; 27.5 at +22 clears; 31 at +30 starts a new timer that never completes.
    # The last event's state (31 was also the value at +0 s and +8 s: wait for the time).
    state = await wait_state(
        api, "tank-1", lambda s: s["last_seen_ms"] == T0 + 30_000, "the last event's state"
    )
    assert state["measurements"]["temp"]["value"] == 31
    alerts = await eventually(lambda: _n(api, "tank-1", 2), timeout=15, what="raise and clear stored")
    assert alerts == [("hot", "raised"), ("hot", "cleared")]
    raised = (await events(api, "tank-1", "alert"))[0]
    assert raised["event_time_ms"] == T0 + 18_000 and raised["level"] == "critical"
    final = await wait_state(
        api, "tank-1", lambda s: (s["last_alert"] or {}).get("state") == "cleared", "alert"
    )
    assert final["last_alert"]["rule"] == "hot" and final["raised_rules"] == []


async def _n(api: httpx.AsyncClient, device: str, n: int) -> list[tuple[str, str]] | None:
    got = await rule_alerts(api, device)
    return got if len(got) >= n else None


async def test_rate_of_change(cloud: CloudApp, api: httpx.AsyncClient) -> None:
    await add_rule(
        api,
        {
            "id": "surge",
            "kind": "rate_of_change",
            "measurement": "p",
            "operator": ">",
            "value": 1.0,
            "window_s": 10,
        },
    )
    # +0.5/s, then +3/s (raise), then flat (rate over the 10 s window falls below 1: clear).
    for i, (dt, v) in enumerate([(0, 10), (2, 11), (4, 12), (6, 18), (8, 18), (16, 18), (18, 18)]):
        await send(cloud, "pipe-1", f"p{i}", T0 + dt * 1000, values={"p": v})
    alerts = await eventually(lambda: _n(api, "pipe-1", 2), timeout=15, what="rate alerts")
    assert alerts == [("surge", "raised"), ("surge", "cleared")]
    stored = await events(api, "pipe-1", "alert")
    assert [e["event_time_ms"] for e in stored] == [T0 + 6000, T0 + 16000]


async def test_geofence_enter_and_leave(cloud: CloudApp, api: httpx.AsyncClient) -> None:
    square = [[52.0, 13.0], [52.0, 14.0], [53.0, 14.0], [53.0, 13.0]]
    await add_rule(api, {"id": "yard", "kind": "geofence", "on": "enter", "polygon": square, "level": "info"})
    path = [(51.5, 13.5), (52.5, 13.5), (52.6, 13.6), (54.0, 13.5), (52.2, 13.2)]
    for i, (lat, lon) in enumerate(path):
        await send(cloud, "truck-1", f"l{i}", T0 + i * 1000, lat=lat, lon=lon)
    alerts = await eventually(lambda: _n(api, "truck-1", 3), timeout=15, what="geofence alerts")
    assert alerts == [("yard", "raised"), ("yard", "cleared"), ("yard", "raised")]
    state = await wait_state(api, "truck-1", lambda s: s["location"] and s["location"]["lat"] == 52.2, "loc")
    assert state["raised_rules"] == ["yard"]


async def test_missing_data_and_presence(cloud: CloudApp, api: httpx.AsyncClient) -> None:
    r = await api.put("/api/v1/presence-intervals", json={"default": 2})
    assert r.status_code == 200, r.text
    await add_rule(api, {"id": "no-hum", "kind": "missing_data", "measurement": "hum", "after_s": 1})
    await send(cloud, "room-1", "a1", now_ms(), values={"hum": 40})
    # Silent: missing_data fires after 1 s, presence goes missing after 2 s.
    await eventually(lambda: _n(api, "room-1", 1), timeout=15, what="missing data raised")

    async def missing() -> list[dict[str, Any]]:
        return [e for e in await events(api, "room-1", "state_change") if e["current"] == "missing"]

    changes = await eventually(missing, timeout=15, what="presence missing stored")
    assert changes[0]["kind"] == "presence" and changes[0]["previous"] == "present"
    await wait_state(api, "room-1", lambda s: s["presence"] == "missing", "state missing")
    r = await api.get("/api/v1/device-states", params={"presence": "missing"})
    assert [s["device"] for s in r.json()["items"]] == ["room-1"] and r.json()["total"] == 1
    # It speaks again: present (a second state change) and the missing-data alert clears.
    await send(cloud, "room-1", "a2", now_ms(), values={"hum": 41})
    await wait_state(api, "room-1", lambda s: s["presence"] == "present", "present again")

    async def present() -> list[dict[str, Any]]:
        return [e for e in await events(api, "room-1", "state_change") if e["current"] == "present"]

    await eventually(present, timeout=15, what="presence present stored")
    alerts = await eventually(lambda: _n(api, "room-1", 2), timeout=15, what="missing data cleared")
    assert alerts[:2] == [("no-hum", "raised"), ("no-hum", "cleared")]


async def test_live_rule_change_and_bad_rules(cloud: CloudApp, api: httpx.AsyncClient) -> None:
    await send(cloud, "boiler-1", "b0", T0, values={"temp": 50})
    await wait_state(api, "boiler-1", lambda s: "temp" in s["measurements"], "state")
    assert await rule_alerts(api, "boiler-1") == []
    await add_rule(api, {**HOT, "for_s": 0, "id": "boil"})
    await send(cloud, "boiler-1", "b1", T0 + 1000, values={"temp": 51})
    assert await eventually(lambda: _n(api, "boiler-1", 1), timeout=15, what="new rule fires") == [
        ("boil", "raised")
    ]
    # Raise the threshold live: the next value clears it.
    r = await api.put(
        "/api/v1/rules/boil", json={**HOT, "for_s": 0, "id": "boil", "value": 80, "hysteresis": 0}
    )
    assert r.status_code == 200, r.text
    await send(cloud, "boiler-1", "b2", T0 + 2000, values={"temp": 52})
    assert (await eventually(lambda: _n(api, "boiler-1", 2), timeout=15, what="cleared"))[1] == (
        "boil",
        "cleared",
    )
    assert [x["id"] for x in (await api.get("/api/v1/rules")).json()["items"]] == ["boil"]
    # Bad definitions: 422 naming the field; duplicates 409; unknown 404.
    bad = await api.post("/api/v1/rules", json={**HOT, "id": "x", "operator": "=="})
    assert bad.status_code == 422 and "operator" in bad.json()["detail"], bad.text
    bad = await api.post("/api/v1/rules", json={**HOT, "id": "x", "for_s": -1})
    assert bad.status_code == 422 and "for_s" in bad.json()["detail"], bad.text
    bad = await api.post("/api/v1/rules", json={"id": "g", "kind": "geofence", "polygon": [[1, 2], [3, 4]]})
    assert bad.status_code == 422 and "polygon" in bad.json()["detail"], bad.text
    bad = await api.post("/api/v1/rules", json={"id": "x", "kind": "eval", "code": "1"})
    assert bad.status_code == 422 and "kind" in bad.json()["detail"], bad.text
    bad = await api.post("/api/v1/rules", json={**HOT, "id": "x", "extra": 1})
    assert bad.status_code == 422 and "extra" in bad.json()["detail"], bad.text
    assert (await api.post("/api/v1/rules", json={**HOT, "id": "boil"})).status_code == 409
    assert (await api.delete("/api/v1/rules/boil")).status_code == 204
    assert (await api.get("/api/v1/rules/boil")).status_code == 404


async def test_restart_and_replay_do_not_duplicate_alerts(tmp_path: Path) -> None:
    config = _config(tmp_path / "cloud")
    app = CloudApp(config)
    await app.start()
    await app.ensure_admin(PASSWORD)
    api = await _client(app)
    try:
        await add_rule(api, HOT)
        # The condition starts (31 at +0) and the process stops mid-duration.
        await send(app, "tank-9", "r0", T0, values={"temp": 31})
        await wait_state(api, "tank-9", lambda s: "temp" in s["measurements"], "first")
    finally:
        await api.aclose()
        await app.stop()
    app = CloudApp(config)
    await app.start()
    api = await _client(app)
    try:
        for i, dt in enumerate((5, 11, 12), start=1):  # +11 s completes the persisted 10 s timer
            await send(app, "tank-9", f"r{i}", T0 + dt * 1000, values={"temp": 32})
        assert await eventually(lambda: _n(api, "tank-9", 1), timeout=15, what="raise") == [("hot", "raised")]
        await wait_state(api, "tank-9", lambda s: s["last_seen_ms"] == T0 + 12_000, "all seen")
    finally:
        await api.aclose()
        await app.stop()
    # Replay everything the state stage read, from the beginning, in a new process.
    app = CloudApp(config)
    await app.parts.bus.start()
    await app.parts.bus.reset_offsets("state", "persisted", "default", to_offset=0)
    await app.parts.bus.reset_offsets("persistence", "enriched", "default", to_offset=0)
    await app.start()
    api = await _client(app)
    try:

        async def replayed() -> bool:
            return all(
                not s.stage.stats.records == 0
                for s in app.runs
                if hasattr(s, "stage") and s.stage.name == "state"
            )

        await eventually(replayed, timeout=15, what="replay consumed")
        await send(app, "tank-9", "r4", T0 + 13_000, values={"temp": 33})
        await wait_state(api, "tank-9", lambda s: s["last_seen_ms"] == T0 + 13_000, "after replay")
        assert await rule_alerts(api, "tank-9") == [("hot", "raised")]
    finally:
        await api.aclose()
        await app.stop()
