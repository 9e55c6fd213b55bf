"""The REST API against real SQLite stores and the embedded bus: auth, CRUD, events, commands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from fieldgate.cloud.bus import COMMAND_INVOCATIONS
from fieldgate.cloud.services.auth import key_id
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.api_stack import SECRET, THERMOSTAT, ApiStack, api_stack, login

pytestmark = pytest.mark.integration

T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z


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


async def make_device(client: httpx.AsyncClient, auth: dict[str, str], token: str = "t-1") -> dict[str, Any]:
    if (await client.get(f"/api/v1/device-types/{THERMOSTAT['token']}", headers=auth)).status_code == 404:
        r = await client.post("/api/v1/device-types", json=THERMOSTAT, headers=auth)
        assert r.status_code == 201, r.text
    r = await client.post(
        "/api/v1/devices",
        json={"token": token, "device_type": "thermostat", "comments": "hall", "metadata": {"floor": "2"}},
        headers=auth,
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


# --- auth ---------------------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/api/v1/device-types"),
    ("POST", "/api/v1/device-types"),
    ("GET", "/api/v1/devices"),
    ("POST", "/api/v1/devices"),
    ("GET", "/api/v1/devices/t-1"),
    ("GET", "/api/v1/devices/t-1/events"),
    ("GET", "/api/v1/devices/t-1/assignments"),
    ("POST", "/api/v1/devices/t-1/commands"),
    ("GET", "/api/v1/assignments"),
    ("POST", "/api/v1/assignments"),
    ("POST", "/api/v1/assignments/abc/release"),
    ("GET", "/api/v1/assignments/abc/events"),
    ("GET", "/api/v1/invocations/abc"),
    ("GET", "/api/v1/invocations/abc/events"),
]


async def test_every_api_endpoint_needs_a_bearer_token(client: httpx.AsyncClient) -> None:
    for method, path in PROTECTED:
        r = await client.request(method, path, json={})
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert isinstance(r.json()["detail"], str)


async def test_wrong_password_and_unknown_user_are_refused(client: httpx.AsyncClient) -> None:
    for user, password in [("admin", "wrong"), ("nobody", "admin-pw"), ("admin", "")]:
        r = await client.post("/api/v1/auth/token", data={"username": user, "password": password})
        assert r.status_code in (401, 422), r.text
        assert r.status_code == 401 or password == ""
    r = await client.post("/api/v1/auth/token", json={"username": "admin", "password": "admin-pw"})
    assert r.status_code == 422  # the token endpoint takes an OAuth2 form, not JSON


async def test_token_from_login_opens_the_api(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/auth/token", data={"username": "admin", "password": "admin-pw"})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer"
    claims = jwt.decode(body["access_token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "admin" and claims["tenant"] == "default"
    assert claims["exp"] - claims["iat"] == 3600
    r = await client.get("/api/v1/devices", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert r.status_code == 200
    assert r.json() == {"items": [], "page": 1, "page_size": 100, "total": 0}


async def test_forged_expired_and_garbage_tokens_are_refused(client: httpx.AsyncClient) -> None:
    now_s = now_ms() // 1000
    forged = jwt.encode({"sub": "admin", "tenant": "beta", "exp": now_s + 60}, "another-secret-" * 4)
    expired = jwt.encode(
        {"sub": "admin", "tenant": "default", "role": "tenant-admin", "exp": now_s - 10},
        SECRET,
        headers={"kid": key_id(SECRET)},
    )
    no_tenant = jwt.encode({"sub": "admin", "exp": now_s + 60}, SECRET)
    none_alg = jwt.encode({"sub": "admin", "tenant": "default", "exp": now_s + 60}, "", algorithm="none")
    for token in [forged, expired, no_tenant, none_alg, "garbage", ""]:
        r = await client.get("/api/v1/devices", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, token
    r = await client.get("/api/v1/devices", headers={"Authorization": f"Bearer {expired}"})
    assert r.json()["detail"] == "token expired"


async def test_health_docs_and_dashboard_need_no_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    spec = (await client.get("/openapi.json")).json()
    for path in ("/api/v1/devices/{token}/events", "/api/v1/devices/{token}/commands", "/api/v1/auth/token"):
        assert path in spec["paths"]
    assert (await client.get("/docs")).status_code == 200
    page = await client.get("/")
    if page.status_code == 503:  # no dashboard build in this checkout: the page says how to build it
        assert "make dashboard" in page.text
    else:
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert page.headers["content-security-policy"].startswith("default-src 'self'")


# --- device types, devices, assignments -----------------------------------------------------------


async def test_device_types_create_list_and_conflict(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    r = await client.post("/api/v1/device-types", json=THERMOSTAT, headers=admin)
    assert r.status_code == 201
    assert r.json() == THERMOSTAT | {
        "commands": [
            {"name": "ping", "description": "are you there", "params": []},
            {"name": "configure", "description": "", "params": THERMOSTAT["commands"][1]["params"]},
        ]
    }
    r = await client.post("/api/v1/device-types", json=THERMOSTAT, headers=admin)
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    listed = (await client.get("/api/v1/device-types", headers=admin)).json()
    assert [d["token"] for d in listed["items"]] == ["thermostat"] and listed["total"] == 1


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"commands": [{"name": "x", "params": [{"name": "a", "type": "double"}]}]}, "type"),
        ({"commands": [{"name": "x"}, {"name": "x"}]}, "defined twice"),
        ({"commands": [{"name": "x", "params": [{"name": "a", "type": "int"}] * 2}]}, "defined twice"),
        ({"token": "has space"}, "token"),
        ({"token": "a/b"}, "token"),
        ({"commands": "ping"}, "commands"),
        ({"colour": "red"}, "colour"),
        (
            {"commands": [{"name": "x", "params": [{"name": "a", "type": "int", "required": "yes"}]}]},
            "required",
        ),
    ],
)
async def test_invalid_device_types_are_422_naming_the_problem(
    client: httpx.AsyncClient, admin: dict[str, str], change: dict[str, Any], needle: str
) -> None:
    r = await client.post("/api/v1/device-types", json={"token": "bad-type"} | change, headers=admin)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


async def test_devices_create_get_list_and_errors(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    created = await make_device(client, admin, "t-1")
    assert created["token"] == "t-1" and created["device_type"] == "thermostat"
    assert created["metadata"] == {"floor": "2"} and created["comments"] == "hall"
    assert created["created"].endswith("Z")
    got = await client.get("/api/v1/devices/t-1", headers=admin)
    assert got.status_code == 200 and got.json() == created

    r = await client.post(
        "/api/v1/devices", json={"token": "t-1", "device_type": "thermostat"}, headers=admin
    )
    assert r.status_code == 409
    r = await client.post("/api/v1/devices", json={"token": "t-2", "device_type": "toaster"}, headers=admin)
    assert r.status_code == 422 and "toaster" in r.json()["detail"]
    r = await client.get("/api/v1/devices/nope", headers=admin)
    assert r.status_code == 404 and r.json() == {"detail": "device 'nope' does not exist"}

    for i in range(2, 8):
        await make_device(client, admin, f"t-{i}")
    page = (await client.get("/api/v1/devices?page=2&page_size=3", headers=admin)).json()
    assert page["total"] == 7 and page["page"] == 2 and page["page_size"] == 3 and len(page["items"]) == 3
    everything = (await client.get("/api/v1/devices?page_size=1000", headers=admin)).json()["items"]
    assert sorted(d["token"] for d in everything) == [f"t-{i}" for i in range(1, 8)]


async def test_assignments_lifecycle(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await make_device(client, admin, "t-1")
    body = {"device": "t-1", "customer": "acme", "area": "plant-1", "asset": "boiler", "metadata": {"k": "v"}}
    r = await client.post("/api/v1/assignments", json=body, headers=admin)
    assert r.status_code == 422 and "customer 'acme' does not exist" in r.json()["detail"]
    assert (
        await client.post("/api/v1/customer-types", json={"token": "site"}, headers=admin)
    ).status_code == 201
    r = await client.post("/api/v1/customers", json={"token": "acme", "customer_type": "site"}, headers=admin)
    assert r.status_code == 201, r.text
    # the area and the asset must exist too
    r = await client.post("/api/v1/assignments", json=body, headers=admin)
    assert r.status_code == 422 and "area 'plant-1' does not exist" in r.json()["detail"]
    for path, doc in (
        ("/api/v1/area-types", {"token": "building"}),
        ("/api/v1/areas", {"token": "plant-1", "area_type": "building"}),
        ("/api/v1/asset-types", {"token": "boilers"}),
    ):
        assert (await client.post(path, json=doc, headers=admin)).status_code == 201
    r = await client.post("/api/v1/assignments", json=body, headers=admin)
    assert r.status_code == 422 and "asset 'boiler' does not exist" in r.json()["detail"]
    asset = {"token": "boiler", "asset_type": "boilers"}
    assert (await client.post("/api/v1/assets", json=asset, headers=admin)).status_code == 201
    r = await client.post("/api/v1/assignments", json=body, headers=admin)
    assert r.status_code == 201, r.text
    a = r.json()
    assert a["status"] == "active" and a["device"] == "t-1" and a["customer"] == "acme" and a["token"]
    assert a["released"] is None

    r = await client.post("/api/v1/assignments", json=body, headers=admin)
    assert r.status_code == 409 and a["token"] in r.json()["detail"]
    r = await client.post("/api/v1/assignments", json=body | {"device": "ghost"}, headers=admin)
    assert r.status_code == 422

    listed = (await client.get("/api/v1/assignments?device=t-1", headers=admin)).json()
    assert [x["token"] for x in listed["items"]] == [a["token"]]
    via_device = (await client.get("/api/v1/devices/t-1/assignments", headers=admin)).json()
    assert via_device["items"] == listed["items"]
    assert (await client.get("/api/v1/devices/ghost/assignments", headers=admin)).status_code == 404

    r = await client.post(f"/api/v1/assignments/{a['token']}/release", headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "released" and r.json()["released"]
    assert (await client.post("/api/v1/assignments/nope/release", headers=admin)).status_code == 404
    # released: the device can be assigned again
    r = await client.post("/api/v1/assignments", json=body, headers=admin)
    assert r.status_code == 201
    assert (await client.get("/api/v1/assignments", headers=admin)).json()["total"] == 2


# --- events -------------------------------------------------------------------------------------


def _event(device: str, alt: str, t: int, **payload: Any) -> pb.Event:
    return pb.Event(
        tenant="default", device=device, alternate_id=alt, event_time_ms=t, received_time_ms=t + 5, **payload
    )


async def seed_events(stack: ApiStack, device: str = "t-1") -> None:
    events = [
        _event(device, f"m{i}", T0 + i * 1000, measurement=pb.Measurement(values={"temperature": 20.0 + i}))
        for i in range(30)
    ]
    events += [
        _event(device, "loc", T0 + 500, location=pb.Location(latitude=52.5, longitude=13.4, elevation=34.0)),
        _event(
            device,
            "al",
            T0 + 1500,
            alert=pb.Alert(alert_type="overheat", level=pb.ALERT_LEVEL_WARNING, message="hot"),
            metadata={"source": "test"},
        ),
        _event(
            device,
            "resp",
            T0 + 2500,
            command_response=pb.CommandResponse(invocation="inv1", response_json='{"pong": true}'),
        ),
        _event(
            device,
            "reg",
            T0 - 1000,
            state_change=pb.StateChange(kind=pb.STATE_CHANGE_KIND_REGISTRATION, current="thermostat"),
        ),
        _event(
            device,
            "ci",
            T0 + 3500,
            command_invocation=pb.CommandInvocation(invocation="inv1", command="ping", params_json="{}"),
        ),
    ]
    stored = await stack.event_store.add("default", events)
    assert len(stored) == len(events)


async def test_events_newest_first_with_type_time_and_paging(
    stack: ApiStack, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await make_device(client, admin, "t-1")
    await seed_events(stack)
    url = "/api/v1/devices/t-1/events"

    everything = (await client.get(url, headers=admin)).json()
    assert everything["total"] == 35
    times = [e["event_time_ms"] for e in everything["items"]]
    assert times == sorted(times, reverse=True)
    assert {e["type"] for e in everything["items"]} == {
        "measurement",
        "location",
        "alert",
        "command_response",
        "command_invocation",
        "state_change",
    }

    m = (
        await client.get(url, params={"type": "measurement", "page_size": 10, "page": 2}, headers=admin)
    ).json()
    assert m["total"] == 30 and m["page"] == 2 and len(m["items"]) == 10
    assert [e["values"]["temperature"] for e in m["items"]] == [20.0 + i for i in range(19, 9, -1)]
    first = m["items"][0]
    assert first["device"] == "t-1" and first["alternate_id"] == "m19" and first["id"]
    assert first["event_time"] == "2024-05-01T12:00:19.000Z" and first["received_time_ms"] == T0 + 19_005

    # since/until: inclusive, ISO 8601 or epoch ms, mixable
    window = {"type": "measurement", "since": "2024-05-01T12:00:05Z", "until": str(T0 + 9000)}
    w = (await client.get(url, params=window, headers=admin)).json()
    assert [e["alternate_id"] for e in w["items"]] == ["m9", "m8", "m7", "m6", "m5"]

    alert = (await client.get(url, params={"type": "alert"}, headers=admin)).json()["items"]
    assert alert == [
        {
            "id": alert[0]["id"],
            "alternate_id": "al",
            "device": "t-1",
            "assignment": "",
            "event_time": "2024-05-01T12:00:01.500Z",
            "event_time_ms": T0 + 1500,
            "received_time": "2024-05-01T12:00:01.505Z",
            "received_time_ms": T0 + 1505,
            "metadata": {"source": "test"},
            "type": "alert",
            "alert_type": "overheat",
            "level": "warning",
            "message": "hot",
            "source": "unspecified",
        }
    ]
    loc = (await client.get(url, params={"type": "location"}, headers=admin)).json()["items"][0]
    assert (loc["lat"], loc["lon"], loc["ele"]) == (52.5, 13.4, 34.0)
    resp = (await client.get(url, params={"type": "command_response"}, headers=admin)).json()["items"][0]
    assert resp["invocation"] == "inv1" and resp["response"] == {"pong": True}
    sc = (await client.get(url, params={"type": "state_change"}, headers=admin)).json()["items"][0]
    assert sc["kind"] == "registration" and sc["current"] == "thermostat"
    ci = (await client.get(url, params={"type": "command_invocation"}, headers=admin)).json()["items"][0]
    assert ci["command"] == "ping" and ci["params"] == {}


@pytest.mark.parametrize(
    "params",
    [
        {"type": "temperature"},
        {"since": "yesterday"},
        {"until": "2024-13-45T00:00:00Z"},
        {"since": "-5"},
        {"since": "99999999999999999999999999"},
        {"page": "0"},
        {"page_size": "1001"},
        {"page": "abc"},
    ],
)
async def test_bad_event_queries_are_422(
    client: httpx.AsyncClient, admin: dict[str, str], params: dict[str, str]
) -> None:
    await make_device(client, admin, "t-1")
    r = await client.get("/api/v1/devices/t-1/events", params=params, headers=admin)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


async def test_events_of_an_unknown_device_are_404(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    r = await client.get("/api/v1/devices/ghost/events", headers=admin)
    assert r.status_code == 404


def _assigned(device: str, alt: str, t: int, assignment: str) -> pb.Event:
    e = _event(device, alt, t, measurement=pb.Measurement(values={"v": float(t - T0)}))
    e.assignment = assignment  # what inbound enrichment stamps
    return e


async def test_assignment_events_with_type_time_and_paging(
    stack: ApiStack, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await make_device(client, admin, "t-1")
    first = (await client.post("/api/v1/assignments", json={"device": "t-1"}, headers=admin)).json()["token"]
    await client.post(f"/api/v1/assignments/{first}/release", headers=admin)
    second = (await client.post("/api/v1/assignments", json={"device": "t-1"}, headers=admin)).json()["token"]
    events = [_assigned("t-1", f"a{i}", T0 + i * 1000, first) for i in range(12)]
    events += [_assigned("t-1", f"b{i}", T0 + 100_000 + i, second) for i in range(3)]
    alert = _event("t-1", "al", T0 + 5500, alert=pb.Alert(alert_type="overheat", message="hot"))
    alert.assignment = first
    events += [alert, _event("t-1", "none", T0, location=pb.Location(latitude=1.0))]
    assert len(await stack.event_store.add("default", events)) == 17

    url = f"/api/v1/assignments/{first}/events"
    everything = (await client.get(url, headers=admin)).json()
    assert everything["total"] == 13 and {e["assignment"] for e in everything["items"]} == {first}
    assert [e["event_time_ms"] for e in everything["items"]][:3] == [T0 + 11_000, T0 + 10_000, T0 + 9000]
    page2 = (
        await client.get(url, params={"type": "measurement", "page": 2, "page_size": 5}, headers=admin)
    ).json()
    assert page2["total"] == 12 and page2["page"] == 2
    assert [e["alternate_id"] for e in page2["items"]] == ["a6", "a5", "a4", "a3", "a2"]
    window = {"since": "2024-05-01T12:00:04Z", "until": str(T0 + 6000)}
    w = (await client.get(url, params=window, headers=admin)).json()
    assert [e["alternate_id"] for e in w["items"]] == ["a6", "al", "a5", "a4"]
    only_alerts = (await client.get(url, params={"type": "alert"}, headers=admin)).json()["items"]
    assert [(e["type"], e["alert_type"]) for e in only_alerts] == [("alert", "overheat")]

    current = (await client.get(f"/api/v1/assignments/{second}/events", headers=admin)).json()
    assert [e["alternate_id"] for e in current["items"]] == ["b2", "b1", "b0"]


async def test_events_of_an_unknown_assignment_are_404(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    r = await client.get("/api/v1/assignments/ghost/events", headers=admin)
    assert r.status_code == 404 and r.json() == {"detail": "assignment 'ghost' does not exist"}


@pytest.mark.parametrize(
    "params",
    [
        {"type": "temperature"},
        {"since": "yesterday"},
        {"until": "2024-13-45T00:00:00Z"},
        {"since": "-5"},
        {"page": "0"},
        {"page_size": "1001"},
        {"page": "abc"},
    ],
)
async def test_bad_assignment_event_queries_are_422(
    client: httpx.AsyncClient, admin: dict[str, str], params: dict[str, str]
) -> None:
    await make_device(client, admin, "t-1")
    a = (await client.post("/api/v1/assignments", json={"device": "t-1"}, headers=admin)).json()["token"]
    r = await client.get(f"/api/v1/assignments/{a}/events", params=params, headers=admin)
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


# --- commands -----------------------------------------------------------------------------------


async def test_command_is_queued_published_and_visible(
    stack: ApiStack, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await make_device(client, admin, "t-1")
    r = await client.post(
        "/api/v1/devices/t-1/commands",
        json={"command": "configure", "params": {"seconds": 10, "target": 21, "enabled": True}, "ttl_s": 60},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    inv = r.json()
    assert inv["status"] == "queued" and inv["device"] == "t-1" and inv["command"] == "configure"
    assert inv["params"] == {"seconds": 10, "target": 21.0, "enabled": True}
    assert inv["response"] is None and inv["reason"] == ""
    assert inv["expires"] > inv["created"]

    got = await client.get(f"/api/v1/invocations/{inv['id']}", headers=admin)
    assert got.status_code == 200 and got.json() == inv

    # The command_invocation event is on the tenant's [command-invocations] topic.
    async with stack.bus.consumer("test", COMMAND_INVOCATIONS) as consumer:
        records = await consumer.poll(max_records=10, timeout_s=5)
    assert len(records) == 1 and records[0].key == b"t-1"
    assert records[0].topic == "fieldgate.tenant.default.command-invocations"
    event = pb.Event.FromString(records[0].value)
    assert event.id == event.alternate_id == inv["id"]
    assert event.device == "t-1" and event.tenant == "default"
    assert event.command_invocation.command == "configure"
    assert event.command_invocation.invocation == inv["id"]
    assert event.command_invocation.initiator == "admin"
    assert event.command_invocation.expires_ms - event.event_time_ms == 60_000

    # The pipeline marks it answered; the API shows the parsed response.
    await stack.invocations.update_status(
        "default", inv["id"], svc.COMMAND_STATUS_ANSWERED, response_json='{"ok": true, "interval": 10}'
    )
    answered = (await client.get(f"/api/v1/invocations/{inv['id']}", headers=admin)).json()
    assert answered["status"] == "answered" and answered["response"] == {"ok": True, "interval": 10}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            {"command": "reboot"},
            "command 'reboot' does not exist (device type 'thermostat' has no such command)",
        ),
        ({"command": "configure", "params": {}}, "'seconds'"),
        ({"command": "configure", "params": {"seconds": "10"}}, "'seconds' must be of type int"),
        ({"command": "configure", "params": {"seconds": True}}, "'seconds' must be of type int"),
        ({"command": "configure", "params": {"seconds": 1.5}}, "'seconds' must be of type int"),
        (
            {"command": "configure", "params": {"seconds": 1, "target": "hot"}},
            "'target' must be of type float",
        ),
        ({"command": "configure", "params": {"seconds": 1, "enabled": 1}}, "'enabled' must be of type bool"),
        ({"command": "configure", "params": {"seconds": 1, "label": 7}}, "'label' must be of type string"),
        ({"command": "configure", "params": {"seconds": 1, "colour": "red"}}, "unknown parameter 'colour'"),
        ({"command": "ping", "params": {"x": 1}}, "unknown parameter 'x'"),
        ({"command": "configure", "params": {"seconds": 2**70}}, "'seconds'"),
        ({"command": "ping", "ttl_s": 0}, "ttl_s"),
        ({"command": "ping", "ttl_s": 8 * 24 * 3600}, "ttl_s"),
        ({"command": "ping", "ttl_s": "60"}, "ttl_s"),
        ({"command": "ping", "params": [1, 2]}, "params"),
        ({"params": {}}, "command"),
        ({"command": "ping", "extra": 1}, "extra"),
    ],
)
async def test_invalid_commands_are_422_naming_the_problem(
    stack: ApiStack, client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any], needle: str
) -> None:
    await make_device(client, admin, "t-1")
    r = await client.post("/api/v1/devices/t-1/commands", json=body, headers=admin)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]
    # nothing was queued or published
    async with stack.bus.consumer("test", COMMAND_INVOCATIONS) as consumer:
        assert await consumer.poll(max_records=10, timeout_s=0.2) == []


async def test_an_invocation_with_its_events(
    stack: ApiStack, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await make_device(client, admin, "t-1")
    a = (await client.post("/api/v1/assignments", json={"device": "t-1"}, headers=admin)).json()["token"]
    inv = (await client.post("/api/v1/devices/t-1/commands", json={"command": "ping"}, headers=admin)).json()
    url = f"/api/v1/invocations/{inv['id']}/events"
    # Queued, not yet persisted by command delivery: the invocation without events.
    r = await client.get(url, headers=admin)
    assert r.status_code == 200 and r.json() == {"invocation": inv, "events": []}

    # Command delivery stores the published command_invocation event; the device answers twice.
    async with stack.bus.consumer("test", COMMAND_INVOCATIONS) as consumer:
        (record,) = await consumer.poll(max_records=10, timeout_s=5)
    sent = pb.Event.FromString(record.value)
    answers = [
        _event(
            "t-1",
            f"r{i}",
            sent.event_time_ms + 10 + i,
            command_response=pb.CommandResponse(invocation=inv["id"], response_json=f'{{"pong": {i}}}'),
        )
        for i in range(2)
    ]
    unrelated = _event(
        "t-1", "r-other", sent.event_time_ms, command_response=pb.CommandResponse(invocation="x")
    )
    await stack.event_store.add("default", [answers[1], sent, unrelated, answers[0]])
    await stack.invocations.update_status(
        "default", inv["id"], svc.COMMAND_STATUS_ANSWERED, response_json='{"pong": 0}'
    )

    body = (await client.get(url, headers=admin)).json()
    assert body["invocation"]["status"] == "answered" and body["invocation"]["id"] == inv["id"]
    assert [e["type"] for e in body["events"]] == [
        "command_invocation",
        "command_response",
        "command_response",
    ]
    assert body["events"][0]["id"] == inv["id"] and body["events"][0]["command"] == "ping"
    assert [e["response"] for e in body["events"][1:]] == [{"pong": 0}, {"pong": 1}]
    assert all(e.get("invocation", inv["id"]) == inv["id"] for e in body["events"])

    # The command was sent under the device's active assignment: it is one of the assignment's events.
    r = await client.get(
        f"/api/v1/assignments/{a}/events", params={"type": "command_invocation"}, headers=admin
    )
    assert [e["invocation"] for e in r.json()["items"]] == [inv["id"]]

    r = await client.get("/api/v1/invocations/0123456789abcdef/events", headers=admin)
    assert r.status_code == 404 and r.json() == {"detail": "invocation '0123456789abcdef' does not exist"}
    bob = await login(client, "bob")
    assert (await client.get(url, headers=bob)).status_code == 404


async def test_commands_for_unknown_devices_and_invocations_are_404(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    r = await client.post("/api/v1/devices/ghost/commands", json={"command": "ping"}, headers=admin)
    assert r.status_code == 404 and r.json() == {"detail": "device 'ghost' does not exist"}
    r = await client.get("/api/v1/invocations/0123456789abcdef", headers=admin)
    assert r.status_code == 404


# --- tenants ------------------------------------------------------------------------------------


async def test_a_user_of_another_tenant_sees_nothing_of_this_one(
    stack: ApiStack, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await make_device(client, admin, "t-1")
    await seed_events(stack, "t-1")
    a = (await client.post("/api/v1/assignments", json={"device": "t-1"}, headers=admin)).json()
    inv = (await client.post("/api/v1/devices/t-1/commands", json={"command": "ping"}, headers=admin)).json()

    bob = await login(client, "bob")
    for path in ("/api/v1/devices", "/api/v1/device-types", "/api/v1/assignments"):
        r = await client.get(path, headers=bob)
        assert r.status_code == 200 and r.json()["total"] == 0 and r.json()["items"] == [], path
    for path in (
        "/api/v1/devices/t-1",
        "/api/v1/devices/t-1/events",
        "/api/v1/devices/t-1/assignments",
        f"/api/v1/assignments/{a['token']}/events",
        f"/api/v1/invocations/{inv['id']}",
        f"/api/v1/invocations/{inv['id']}/events",
    ):
        assert (await client.get(path, headers=bob)).status_code == 404, path
    r = await client.post("/api/v1/devices/t-1/commands", json={"command": "ping"}, headers=bob)
    assert r.status_code == 404
    assert (await client.post(f"/api/v1/assignments/{a['token']}/release", headers=bob)).status_code == 404
    r = await client.post("/api/v1/assignments", json={"device": "t-1"}, headers=bob)
    assert r.status_code == 422

    # bob's tenant has its own namespace: the same tokens are free there
    await make_device(client, bob, "t-1")
    assert (await client.get("/api/v1/devices/t-1/events", headers=bob)).json()["total"] == 0
    # and admin's data is untouched
    assert (await client.get("/api/v1/devices/t-1/events", headers=admin)).json()["total"] == 35
    assert (await client.get("/api/v1/assignments?device=t-1", headers=admin)).json()["items"][0][
        "status"
    ] == "active"
