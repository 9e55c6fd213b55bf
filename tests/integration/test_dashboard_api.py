"""The dashboard's REST/SSE backend (issue 10) through the real all-in-one cloud: embedded bus,
SQLite stores, REST over HTTP on a real uvicorn, edge agents over real gRPC. Events enter at
[decoded] as ingest would publish them (or through a real edge agent), and come out of the
live stream after the whole pipeline (inbound, persistence, [persisted])."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.bus import DECODED, Message, topic_name
from fieldgate.cloud.config import CloudConfig, TenantConfig
from fieldgate.cloud.services.access import Role
from fieldgate.cloud.services.live import QUEUE_SIZE
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.api_stack import api_stack
from tests.helpers.edge_adapters import LoopbackAdapter
from tests.helpers.waiting import eventually, not_yet

pytestmark = pytest.mark.integration

PASSWORD = "dashboard-pw"
USERS = {"ted": ("default", Role.TENANT_ADMIN), "bea": ("beta", Role.TENANT_ADMIN)}


def _config(data_dir: Path) -> CloudConfig:
    return CloudConfig(
        data_dir=data_dir,
        grpc_port=0,
        rest_port=0,
        tenants=(TenantConfig(token="default"), TenantConfig(token="beta")),
    )


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[CloudApp]:
    app = CloudApp(_config(tmp_path / "cloud"))
    await app.start()
    await app.ensure_admin(PASSWORD)  # admin: instance admin
    for user, (tenant, role) in USERS.items():
        await app.parts.users.set_password(user, PASSWORD, tenant=tenant, role=role)
    assert app.live is not None
    await eventually(lambda: app.live is not None and app.live.ready, what="live hub subscribed")
    yield app
    await app.stop()


async def login(app: CloudApp, user: str = "ted") -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.rest_port}", timeout=10)
    r = await client.post("/api/v1/auth/token", data={"username": user, "password": PASSWORD})
    r.raise_for_status()
    client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    return client


@pytest.fixture
async def ted(cloud: CloudApp) -> AsyncIterator[httpx.AsyncClient]:
    client = await login(cloud, "ted")
    yield client
    await client.aclose()


def _event(tenant: str, device: str, alt: str, value: float) -> pb.Event:
    ev = pb.Event(
        tenant=tenant, device=device, alternate_id=alt, event_time_ms=now_ms(), received_time_ms=now_ms()
    )
    ev.measurement.values["temp"] = value
    return ev


async def send(app: CloudApp, tenant: str, device: str, *events: pb.Event) -> None:
    batch = pb.EventBatch(events=list(events))
    await app.parts.bus.publish(
        topic_name(tenant, DECODED), [Message(device.encode(), batch.SerializeToString())]
    )


async def registered(app: CloudApp, tenant: str, device: str, alt: str | None = None) -> None:
    """Send a first event of ``device`` (auto-registration) and wait until the live hub has read
    it and the registration's own state_change event, so that both are history for a stream
    opened next. (Stored is not enough: the hub reads [persisted], written after the store.)"""
    hub = app.live
    assert hub is not None
    alt = alt or f"first-{device}"
    seen: set[str] = set()

    def read() -> bool:
        seen.update(item.alternate_id for kind, item in sub.take()[1] if isinstance(item, pb.Event))
        return {alt, f"registration:{device}"} <= seen

    with hub.subscribe(tenant, "test-registered", device=device) as sub:
        await send(app, tenant, device, _event(tenant, device, alt, 0.0))
        await eventually(read, what=f"{device}: its first event and registration read by the live hub")


class Sse:
    """A live stream read message by message (event name, JSON data, or a comment)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, within_s: float = 15.0) -> tuple[str, Any]:
        event, data = "", []
        async with asyncio.timeout(within_s):
            async for line in self._lines:
                if line.startswith(":"):
                    return "comment", line
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and event:
                    return event, json.loads("\n".join(data))
        raise AssertionError("stream ended")

    async def until(self, predicate: Any, within_s: float = 20.0) -> list[tuple[str, Any]]:
        """Messages up to and including the first that satisfies ``predicate``."""
        seen = []
        async with asyncio.timeout(within_s):
            while True:
                msg = await self.next(within_s)
                seen.append(msg)
                if predicate(msg):
                    return seen


@asynccontextmanager
async def live(client: httpx.AsyncClient, **params: str) -> AsyncIterator[Sse]:
    async with client.stream("GET", "/api/v1/live", params=params, timeout=30) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        sse = Sse(r)
        kind, hello = await sse.next()
        assert kind == "hello" and hello["queue"] == QUEUE_SIZE
        yield sse


# -- live stream ---------------------------------------------------------------------------


async def test_live_stream_sends_new_events_not_history(cloud: CloudApp, ted: httpx.AsyncClient) -> None:
    await registered(cloud, "default", "d1", "old-1")
    async with live(ted) as sse:
        await send(cloud, "default", "d1", _event("default", "d1", "new-1", 2.0))
        seen = await sse.until(lambda m: m[0] == "event" and m[1]["alternate_id"] == "new-1")
    alts = [m[1]["alternate_id"] for m in seen if m[0] == "event"]
    assert "old-1" not in alts
    ev = seen[-1][1]
    assert ev["type"] == "measurement" and ev["device"] == "d1" and ev["values"] == {"temp": 2.0}
    assert ev["id"] and ev["event_time"]


async def test_live_stream_is_tenant_scoped_and_device_filtered(
    cloud: CloudApp, ted: httpx.AsyncClient
) -> None:
    bea = await login(cloud, "bea")
    await registered(cloud, "default", "d2")
    await registered(cloud, "beta", "b1")
    try:
        async with live(bea) as beta_sse, live(ted, device="d2") as d2_sse:
            await send(cloud, "default", "d1", _event("default", "d1", "a-d1", 1.0))
            await send(cloud, "default", "d2", _event("default", "d2", "a-d2", 1.0))
            await send(cloud, "beta", "b1", _event("beta", "b1", "b-1", 3.0))
            beta_seen = await beta_sse.until(lambda m: m[0] == "event" and m[1]["alternate_id"] == "b-1")
            d2_seen = await d2_sse.until(lambda m: m[0] == "event" and m[1]["alternate_id"] == "a-d2")
            # the default tenant's events reach [persisted] before beta's: they would have been seen
            await send(cloud, "beta", "b1", _event("beta", "b1", "b-2", 3.0))
            beta_seen += await beta_sse.until(lambda m: m[0] == "event" and m[1]["alternate_id"] == "b-2")
            await send(cloud, "default", "d2", _event("default", "d2", "a-d2-2", 1.0))
            d2_seen += await d2_sse.until(lambda m: m[0] == "event" and m[1]["alternate_id"] == "a-d2-2")
        assert {m[1]["device"] for m in beta_seen if m[0] == "event"} == {"b1"}
        assert {m[1]["device"] for m in d2_seen if m[0] == "event"} == {"d2"}
        r = await bea.get("/api/v1/live", params={"device": "d1"})
        assert r.status_code == 404  # another tenant's device does not exist for bea
    finally:
        await bea.aclose()


async def test_slow_client_gets_dropped_and_queue_stays_bounded(
    cloud: CloudApp, ted: httpx.AsyncClient
) -> None:
    hub = cloud.live
    assert hub is not None
    await registered(cloud, "default", "d3")
    hub.queue_size = 8  # new subscriptions get 8 slots (the hello tells the client)
    async with ted.stream("GET", "/api/v1/live", timeout=30) as r:
        sse = Sse(r)
        _kind, hello = await sse.next()
        assert hello["queue"] == 8
        events = [_event("default", "d3", f"burst-{i}", float(i)) for i in range(200)]
        await send(cloud, "default", "d3", *events)  # one record: fanned out at once
        seen = await sse.until(lambda m: m[0] == "dropped")
        dropped = seen[-1][1]["dropped"]
        after = await sse.until(lambda m: m[0] == "event" and m[1]["alternate_id"] == "burst-199")
    assert dropped > 0
    assert hub.stats.dropped >= dropped
    got = [m for m in seen + after if m[0] == "event"]
    assert len(got) + dropped == 200  # every event was either delivered or counted as dropped
    assert len(after) - 1 <= 8  # after the drop only the queue's worth was left


async def test_hub_subscription_queue_is_bounded(cloud: CloudApp) -> None:
    """Without any HTTP in between: a subscriber that never reads holds at most its queue."""
    hub = cloud.live
    assert hub is not None
    ted = await login(cloud)
    await registered(cloud, "default", "d4")
    await ted.aclose()
    with hub.subscribe("default", "someone") as sub:
        await send(
            cloud, "default", "d4", *[_event("default", "d4", f"q-{i}", 1.0) for i in range(QUEUE_SIZE + 44)]
        )

        await eventually(lambda: sub.dropped >= 44, what="44 dropped")
        dropped, items = sub.take()
    assert dropped == 44 and len(items) == QUEUE_SIZE
    assert items[-1][1].alternate_id == f"q-{QUEUE_SIZE + 43}"  # type: ignore[union-attr]


async def test_stream_limits_and_auth(cloud: CloudApp, ted: httpx.AsyncClient) -> None:
    hub = cloud.live
    assert hub is not None
    hub.max_per_subject = 2
    r = await ted.get("/api/v1/live", headers={"Authorization": ""})
    assert r.status_code == 401
    async with httpx.AsyncClient(base_url=str(ted.base_url)) as anon:
        assert (await anon.get("/api/v1/live")).status_code == 401
        assert (await anon.get("/api/v1/live?token=x")).status_code == 401
    async with live(ted), live(ted):
        r = await ted.get("/api/v1/live")
        assert r.status_code == 429 and "per user" in r.json()["detail"]
        hub.max_streams = 2
        bea = await login(cloud, "bea")
        r = await bea.get("/api/v1/live")
        await bea.aclose()
        assert r.status_code == 429 and "this server" in r.json()["detail"]
    await eventually(lambda: hub.stats.subscribers == 0, what="streams closed after the clients left")
    async with live(ted):  # a slot is free again
        pass


async def test_server_stop_ends_open_streams(tmp_path: Path) -> None:
    app = CloudApp(_config(tmp_path / "cloud"))
    await app.start()
    await app.ensure_admin(PASSWORD)
    client = await login(app, "admin")
    try:
        async with live(client) as sse:
            async with asyncio.timeout(15):  # a hanging stream would block uvicorn's shutdown
                await app.stop()
            with pytest.raises((AssertionError, httpx.HTTPError)):
                while True:
                    await sse.next(5)
    finally:
        await client.aclose()


async def test_invocation_status_changes_are_streamed(cloud: CloudApp, ted: httpx.AsyncClient) -> None:
    await registered(cloud, "default", "d5")
    async with live(ted, device="d5") as sse:
        r = await ted.post("/api/v1/devices/d5/commands", json={"command": "ping", "params": {}, "ttl_s": 2})
        if r.status_code == 422:  # the default device type may define no ping: any command of it
            pytest.skip(r.text)
        assert r.status_code == 201, r.text
        inv = r.json()["id"]
        seen = await sse.until(
            lambda m: m[0] == "invocation" and m[1]["id"] == inv and m[1]["status"] == "expired"
        )
    statuses = [m[1]["status"] for m in seen if m[0] == "invocation" and m[1]["id"] == inv]
    assert statuses[0] == "queued" and statuses[-1] == "expired"
    r = await ted.get("/api/v1/devices/d5/invocations")
    assert r.status_code == 200
    assert [i["id"] for i in r.json()["items"]] == [inv] and r.json()["items"][0]["status"] == "expired"
    assert (await ted.get("/api/v1/devices/nope/invocations")).status_code == 404


async def test_a_late_answer_is_streamed(cloud: CloudApp, ted: httpx.AsyncClient) -> None:
    """The invocation expired (its watch ended there); its device answers after all: the stream
    sends it again, now late, with the answer and the reason it had expired."""
    await registered(cloud, "default", "d6")
    async with live(ted, device="d6") as sse:
        r = await ted.post("/api/v1/devices/d6/commands", json={"command": "ping", "params": {}, "ttl_s": 1})
        if r.status_code == 422:  # the default device type may define no ping: any command of it
            pytest.skip(r.text)
        assert r.status_code == 201, r.text
        inv = r.json()["id"]
        await sse.until(lambda m: m[0] == "invocation" and m[1]["id"] == inv and m[1]["status"] == "expired")
        answer = pb.Event(
            tenant="default",
            device="d6",
            alternate_id="late-answer",
            event_time_ms=now_ms(),
            received_time_ms=now_ms(),
        )
        answer.command_response.invocation = inv
        answer.command_response.response_json = '{"pong": true}'
        await send(cloud, "default", "d6", answer)
        seen = await sse.until(
            lambda m: m[0] == "invocation" and m[1]["id"] == inv and m[1]["status"] == "late"
        )
    late = seen[-1][1]
    assert late["response"] == {"pong": True} and late["reason"]


# -- fleet, devices, alerts, me ------------------------------------------------------------


async def _device_type(api: httpx.AsyncClient, token: str) -> None:
    r = await api.post("/api/v1/device-types", json={"token": token, "name": token, "commands": []})
    assert r.status_code == 201, r.text


async def _device(api: httpx.AsyncClient, token: str, dtype: str, name: str = "") -> None:
    body: dict[str, Any] = {"token": token, "device_type": dtype}
    if name:
        body["metadata"] = {"name": name}
    r = await api.post("/api/v1/devices", json=body)
    assert r.status_code == 201, r.text


async def test_fleet_counts_and_device_filters(cloud: CloudApp, ted: httpx.AsyncClient) -> None:
    await _device_type(ted, "meter")
    await _device_type(ted, "valve")
    await _device(ted, "m-1", "meter", "Kitchen meter")
    await _device(ted, "m-2", "meter")
    await _device(ted, "v-1", "valve")
    await send(cloud, "default", "m-1", _event("default", "m-1", "m1-a", 1.0))
    await send(cloud, "default", "v-1", _event("default", "v-1", "v1-a", 1.0))

    async def fleet() -> dict[str, Any]:
        r = await ted.get("/api/v1/fleet")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def counted() -> Any:
        f = await fleet()
        return f if f["online"] == 2 and f["events_last_minute"] >= 2 else not_yet(f)

    f = await eventually(counted, what="two online devices and their events in /fleet")
    assert f["devices"] == 3 and f["online"] == 2 and f["unknown"] == 1
    assert f["offline"] == 0 and f["missing"] == 0 and f["alerts_raised"] == 0
    assert f["events_last_minute"] >= 2 and f["events_per_s"] > 0
    assert f["failed_decodes_last_hour"] == 0 and f["edges_connected"] == 0
    assert f["tenants"] is None  # not an instance admin
    admin = await login(cloud, "admin")
    r = await admin.get("/api/v1/fleet")
    me = await admin.get("/api/v1/auth/me")
    await admin.aclose()
    assert r.json()["tenants"] == ["beta", "default"]
    assert me.json() == {
        "user": "admin",
        "tenant": "default",
        "role": "instance-admin",
        "instance_admin": True,
        "customer": None,
    }

    async def tokens(**params: str) -> list[str]:
        r = await ted.get("/api/v1/devices", params=params)
        assert r.status_code == 200, r.text
        return [d["token"] for d in r.json()["items"]]

    assert await tokens(search="kitchen") == ["m-1"]
    assert await tokens(search="M-") == ["m-1", "m-2"]
    assert await tokens(device_type="meter") == ["m-1", "m-2"]
    assert await tokens(presence="online") == ["m-1", "v-1"]
    assert await tokens(presence="present", device_type="valve") == ["v-1"]
    assert await tokens(presence="offline") == []
    r = await ted.post("/api/v1/device-groups", json={"token": "g1", "name": "group one"})
    assert r.status_code == 201, r.text
    r = await ted.post("/api/v1/device-groups/g1/elements", json={"kind": "device", "token": "m-2"})
    assert r.status_code in (200, 201), r.text
    assert await tokens(group="g1") == ["m-2"]
    r = await ted.get("/api/v1/devices", params={"group": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = await ted.get("/api/v1/devices", params={"area": "nowhere"})
    assert r.status_code == 404
    r = await ted.get("/api/v1/devices", params={"page_size": 2, "device_type": "meter", "page": 2})
    assert r.json()["items"] == [] and r.json()["total"] == 2
    r = await ted.get("/api/v1/alerts")
    assert r.status_code == 200 and r.json()["items"] == []


async def test_alerts_lists_device_alerts(cloud: CloudApp, ted: httpx.AsyncClient) -> None:
    ev = pb.Event(
        tenant="default",
        device="a-1",
        alternate_id="alert-1",
        event_time_ms=now_ms(),
        received_time_ms=now_ms(),
    )
    ev.alert.alert_type = "overheat"
    ev.alert.level = pb.ALERT_LEVEL_WARNING
    ev.alert.message = "too hot"
    ev.alert.source = pb.ALERT_SOURCE_DEVICE
    await send(cloud, "default", "a-1", ev)

    async def alerts() -> list[dict[str, Any]]:
        return list((await ted.get("/api/v1/alerts")).json()["items"])

    items = await eventually(alerts, what="the device's alert in /alerts")
    assert [(i["device"], i["alert_type"], i["message"], i["level"]) for i in items] == [
        ("a-1", "overheat", "too hot", "warning")
    ]


def _device_alert(device: str, alt: str, at_ms: int) -> pb.Event:
    ev = pb.Event(
        tenant="default", device=device, alternate_id=alt, event_time_ms=at_ms, received_time_ms=now_ms()
    )
    ev.alert.alert_type = "door-open"
    ev.alert.level = pb.ALERT_LEVEL_WARNING
    ev.alert.message = "cabinet door open"
    ev.alert.source = pb.ALERT_SOURCE_DEVICE
    return ev


async def test_fleet_counts_devices_with_device_sent_alerts(cloud: CloudApp, ted: httpx.AsyncClient) -> None:
    """The fleet's "devices with raised alerts" counts the devices the alerts page lists as raised: a rule
    raised now, or an alert the device sent itself within the last hour (not an older one)."""
    hot = {"id": "hot", "kind": "threshold", "measurement": "temp", "operator": ">", "value": 30}
    r = await ted.post("/api/v1/rules", json=hot)
    assert r.status_code == 201, r.text
    await send(cloud, "default", "rule-1", _event("default", "rule-1", "rule-1-a", 35.0))
    await send(cloud, "default", "dev-1", _device_alert("dev-1", "dev-1-a", now_ms()))
    await send(cloud, "default", "old-1", _device_alert("old-1", "old-1-a", now_ms() - 2 * 3_600_000))
    await send(cloud, "default", "calm-1", _event("default", "calm-1", "calm-1-a", 20.0))

    async def states_in() -> bool:
        r = await ted.get("/api/v1/device-states", params={"page_size": 100})
        s = {i["device"]: i for i in r.json()["items"]}
        return (
            {"rule-1", "dev-1", "old-1", "calm-1"} <= s.keys()
            and s["rule-1"]["raised_rules"] == ["hot"]
            and s["dev-1"]["last_alert"] is not None
            and s["old-1"]["last_alert"] is not None
        )

    await eventually(states_in, timeout=20, what="the four devices' states")
    r = await ted.get("/api/v1/fleet")
    assert r.status_code == 200, r.text
    assert r.json()["alerts_raised"] == 2, r.json()
    raised = (await ted.get("/api/v1/alerts", params={"state": "raised"})).json()["items"]
    assert sorted(i["device"] for i in raised) == ["dev-1", "rule-1"]
    every = (await ted.get("/api/v1/alerts", params={"state": "all"})).json()["items"]
    assert sorted(i["device"] for i in every) == ["dev-1", "old-1", "rule-1"]


# -- edges ---------------------------------------------------------------------------------


async def test_edges_show_connected_agents_with_buffer(
    cloud: CloudApp, ted: httpx.AsyncClient, tmp_path: Path
) -> None:
    def agent(edge_id: str, status_s: float) -> tuple[EdgeAgent, LoopbackAdapter]:
        adapter = LoopbackAdapter()
        config = EdgeConfig(
            edge_id=edge_id,
            data_dir=tmp_path / edge_id,
            mqtt=MqttConfig(enabled=False),
            uplink=UplinkConfig(
                target=f"127.0.0.1:{cloud.grpc_port}", batch_max_delay_ms=2, status_interval_s=status_s
            ),
        )
        return EdgeAgent(config, [adapter]), adapter

    new_agent, new_adapter = agent("edge-new", 0.2)
    old_agent, old_adapter = agent("edge-old", 0)  # like an edge from before EdgeStatus
    async with new_agent, old_agent:
        await new_adapter.publish([_event("default", "e-1", "e1", 1.0)])
        await old_adapter.publish([_event("default", "e-2", "e2", 1.0)])

        async def edges() -> dict[str, dict[str, Any]]:
            r = await ted.get("/api/v1/edges")
            assert r.status_code == 200, r.text
            return {e["edge_id"]: e for e in r.json()["items"]}

        async def both_reported() -> Any:
            found = await edges()
            ok = set(found) == {"edge-new", "edge-old"} and found["edge-new"]["buffer_depth"] is not None
            return found if ok else not_yet(found)

        found = await eventually(both_reported, what="both edges, the new one with its buffer depth")
        new, old = found["edge-new"], found["edge-old"]
        assert new["connected"] and new["connected_since"] and new["version"]
        assert new["buffer_depth"] == 0 and new["uplink_lag_ms"] == 0 and new["failed_decodes"] == 0
        assert old["connected"] and old["buffer_depth"] is None and old["uplink_lag_ms"] is None
        r = await ted.get("/api/v1/fleet")
        assert r.json()["edges_connected"] == 2
        bea = await login(cloud, "bea")
        r = await bea.get("/api/v1/edges")
        await bea.aclose()
        assert r.json()["items"] == []  # these edges never carried beta's events

    async def disconnected() -> Any:
        found = await edges()
        return found if not found["edge-new"]["connected"] else not_yet(found["edge-new"])

    found = await eventually(disconnected, what="edge-new disconnected in /edges")
    assert not found["edge-new"]["connected"] and found["edge-new"]["connected_since"] is None


# -- static dashboard ----------------------------------------------------------------------

CSP_START = "default-src 'self'; script-src 'self'"


async def test_dashboard_static_files_csp_and_spa_fallback(tmp_path: Path) -> None:
    build = tmp_path / "build"
    (build / "assets").mkdir(parents=True)
    (build / "index.html").write_text(
        '<!doctype html><script type="module" src="/assets/app-1a2b.js"></script>'
    )
    (build / "assets" / "app-1a2b.js").write_text("console.log('fieldgate')")
    (build / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    async with api_stack(tmp_path / "stack", static_dir=build) as stack, stack.client() as client:
        r = await client.get("/")
        assert r.status_code == 200 and "app-1a2b.js" in r.text
        assert r.headers["content-security-policy"].startswith(CSP_START)
        assert "'unsafe-inline'" not in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-cache"
        r = await client.get("/assets/app-1a2b.js")
        assert r.status_code == 200 and "fieldgate" in r.text
        assert "javascript" in r.headers["content-type"]
        assert "immutable" in r.headers["cache-control"]
        assert r.headers["content-security-policy"].startswith(CSP_START)
        assert (await client.get("/assets/missing.js")).status_code == 404
        assert (await client.get("/assets/../index.html")).status_code in (200, 404)  # never outside
        assert (await client.get("/assets/%2e%2e/%2e%2e/pyproject.toml")).status_code == 404
        for spa in ("/devices/x", "/devices/sensor.1", "/alerts", "/edges", "/login"):
            r = await client.get(spa)
            assert r.status_code == 200 and "app-1a2b.js" in r.text, spa
            assert r.headers["content-security-policy"].startswith(CSP_START)
        r = await client.get("/favicon.svg")
        assert r.status_code == 200 and "svg" in r.headers["content-type"]
        for api_path in ("/api/v1/nope", "/api/nope/x"):
            r = await client.get(api_path)
            assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
            assert "content-security-policy" not in r.headers
        r = await client.post("/api/v1/nope")
        assert r.status_code == 404
        assert (await client.get("/missing.js")).status_code == 404
        r = await client.get("/docs")  # its own policy (tests/integration/test_api_docs.py)
        assert r.status_code == 200 and not r.headers["content-security-policy"].startswith(CSP_START)
        assert (await client.get("/openapi.json")).status_code == 200


async def test_dashboard_without_build_says_how_to_build(tmp_path: Path) -> None:
    async with (
        api_stack(tmp_path / "stack", static_dir=tmp_path / "missing") as stack,
        stack.client() as client,
    ):
        r = await client.get("/")
        assert r.status_code == 503 and "make dashboard" in r.text
        assert r.headers["content-type"].startswith("text/plain")
        assert (await client.get("/api/v1/devices")).status_code == 401


async def test_customer_stream_sees_only_its_devices(cloud: CloudApp, ted: httpx.AsyncClient) -> None:
    await registered(cloud, "default", "mine")
    await registered(cloud, "default", "theirs")
    assert (await ted.post("/api/v1/customer-types", json={"token": "site"})).status_code == 201
    r = await ted.post("/api/v1/customers", json={"token": "c1", "customer_type": "site"})
    assert r.status_code == 201, r.text
    r = await ted.post("/api/v1/assignments", json={"device": "mine", "customer": "c1"})
    assert r.status_code == 201, r.text
    await cloud.parts.users.set_password(
        "cora", PASSWORD, tenant="default", role=Role.CUSTOMER, customer="c1"
    )
    cora = await login(cloud, "cora")
    try:
        assert (await cora.get("/api/v1/live", params={"device": "theirs"})).status_code == 404
        async with live(cora) as sse:
            await send(cloud, "default", "theirs", _event("default", "theirs", "t-1", 1.0))
            await send(cloud, "default", "mine", _event("default", "mine", "m-1", 1.0))
            seen = await sse.until(lambda m: m[0] == "event" and m[1]["alternate_id"] == "m-1")
        assert {m[1]["device"] for m in seen if m[0] == "event"} == {"mine"}
        r = await cora.get("/api/v1/fleet")
        assert r.json()["devices"] == 1 and r.json()["edges_connected"] == 0
        assert (await cora.get("/api/v1/edges")).json()["items"] == []
    finally:
        await cora.aclose()
