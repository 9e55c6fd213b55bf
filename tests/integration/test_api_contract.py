"""The REST API says what it does and does what it says, checked over every route of the real
cloud (CloudApp, embedded) where a rule is the whole API's, and on the test stack where it needs
data:

* every paged list bounds ``page`` and ``page_size`` the same way, in the document and in fact
  (no page number reaches a store that cannot hold it);
* a method a path does not have is a 405 whose ``Allow`` lists every method it has;
* every operation with a body documents 413; ``POST /tenants`` requires ``token``;
* request bodies are strict: no integer, number or boolean field takes a string;
* a request naming something that does not exist is a 422 naming it (``reference``);
* device types and devices are changed and deleted like every other record, with the rules a
  user expects (nothing in use goes; a deleted device's token can be registered again);
* ``/assignments?customer=``, ``/customers?search=`` filter;
* user names do not tell a tenant admin about other tenants' users; passwords have a minimum.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fastapi.routing import RouteContext
from pydantic import TypeAdapter

from fieldgate.cli import main
from fieldgate.cloud.api.grpc.server import ApiAuth, add_grpc_api
from fieldgate.cloud.api.rest.app import MAX_BODY_BYTES
from fieldgate.cloud.api.rest.routes.tenants import PipelineChange, TenantChange, TenantIn
from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.config import CloudConfig
from fieldgate.cloud.domain.users import MIN_PASSWORD
from fieldgate.cloud.jsontypes import integral
from fieldgate.cloud.services.access import api_routes
from fieldgate.cloud.services.auth import TokenAuthority
from fieldgate.cloud.services.management import MAX_PAGE, MAX_PAGE_SIZE
from fieldgate.cloud.zk.models import PipelineSettings, TenantSettings
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc
from tests.helpers.api_stack import SECRET, THERMOSTAT, ApiStack, api_stack, login
from tests.helpers.grpc_auth import bearer

pytestmark = pytest.mark.integration

PASSWORD = "contract-test-pw"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


# --- the whole cloud's API -----------------------------------------------------------------------


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[tuple[CloudApp, httpx.AsyncClient]]:
    app = CloudApp(CloudConfig(data_dir=tmp_path / "cloud", rest_port=0, grpc_port=0))
    await app.start()
    try:
        await app.ensure_admin(PASSWORD)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.rest_port}", timeout=30) as client:
            r = await client.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
            assert r.status_code == 200, r.text
            client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
            yield app, client
    finally:
        await app.stop()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method.upper() in METHODS:
                yield path, method.upper(), op


def filled(path: str) -> str:
    """A path with every parameter filled (with a token nothing has)."""
    parts = path.split("/")
    return "/".join("no-such-thing" if p.startswith("{") else p for p in parts)


@pytest.fixture
async def openapi(cloud: tuple[CloudApp, httpx.AsyncClient]) -> dict[str, Any]:
    r = await cloud[1].get("/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


async def test_every_paged_list_bounds_its_page(
    cloud: tuple[CloudApp, httpx.AsyncClient], openapi: dict[str, Any]
) -> None:
    _, client = cloud
    paged = 0
    for path, method, op in operations(openapi):
        params = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "query"}
        if "page" not in params:
            continue
        paged += 1
        where = f"{method} {path}"
        assert "page_size" in params, where
        assert params["page"]["schema"]["maximum"] == MAX_PAGE, where
        assert params["page_size"]["schema"]["maximum"] == MAX_PAGE_SIZE, where
        url = filled(path)
        for query in (
            {"page": MAX_PAGE + 1},
            {"page": 10**30},
            {"page_size": MAX_PAGE_SIZE + 1},
            {"page": 0},
        ):
            r = await client.request(method, url, params=query)
            assert r.status_code == 422, f"{where} {query}: {r.status_code} {r.text}"
        # The largest page there is: empty or not found, never a server error.
        r = await client.request(method, url, params={"page": MAX_PAGE, "page_size": MAX_PAGE_SIZE})
        assert r.status_code in (200, 404), f"{where}: {r.status_code} {r.text}"
    assert paged >= 20


async def test_a_wrong_method_is_told_every_method_of_the_path(
    cloud: tuple[CloudApp, httpx.AsyncClient], openapi: dict[str, Any]
) -> None:
    _, client = cloud
    for path, item in openapi["paths"].items():
        documented = sorted(m.upper() for m in item if m.upper() in METHODS)
        for wrong in [*[m for m in METHODS if m not in documented][:2], "OPTIONS"]:
            r = await client.request(wrong, filled(path))
            assert r.status_code == 405, f"{wrong} {path}: {r.status_code}"
            allowed = sorted(m.strip() for m in r.headers["allow"].split(","))
            assert [m for m in allowed if m != "HEAD"] == documented, f"{wrong} {path}: {allowed}"
            assert r.json()["detail"], path


async def test_the_document_says_what_bodies_need(
    cloud: tuple[CloudApp, httpx.AsyncClient], openapi: dict[str, Any]
) -> None:
    _, client = cloud
    with_body = [(p, m, op) for p, m, op in operations(openapi) if "requestBody" in op]
    assert len(with_body) >= 30
    for path, method, op in with_body:
        assert "413" in op["responses"], f"{method} {path}"
    schemas = openapi["components"]["schemas"]
    tenant_in = openapi["paths"]["/api/v1/tenants"]["post"]["requestBody"]["content"]["application/json"]
    ref = tenant_in["schema"]["$ref"].rsplit("/", 1)[-1]
    assert "token" in schemas[ref]["required"]
    assert "reference" in schemas["ErrorOut"]["properties"]
    # ... and a body over the limit is that 413, announced or not.
    big = b"{" + b" " * MAX_BODY_BYTES + b"}"
    json_type = {"Content-Type": "application/json"}
    r = await client.post("/api/v1/devices", content=big, headers=json_type)
    assert r.status_code == 413 and str(MAX_BODY_BYTES) in r.json()["detail"]

    async def streamed() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    r = await client.post("/api/v1/devices", content=streamed(), headers=json_type)
    assert r.status_code == 413 and str(MAX_BODY_BYTES) in r.json()["detail"]


def untruthful_scalars(annotation: Any) -> list[str]:
    """The integer, number and boolean fields of a body type that do not take exactly what JSON
    Schema calls one: those pydantic would fill from a string ("5", "true"), and integers that
    refuse ``5.0`` (cloud/jsontypes.py). Every one of them, through nested models, lists, dicts
    and unions."""
    defs: dict[str, Any] = {}
    found: list[str] = []
    seen: set[tuple[str, bool]] = set()

    def walk(node: Any, strict: bool, where: str, integral_ok: bool = False) -> None:
        if isinstance(node, list):
            for n in node:
                walk(n[0] if isinstance(n, tuple) else n, strict, where)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if kind == "definitions":
            defs.update({d["ref"]: d for d in node["definitions"]})
            walk(node["schema"], strict, where)
            return
        if "ref" in node and kind != "definition-ref":
            defs.setdefault(node["ref"], node)
        if kind == "definition-ref":
            key = (node["schema_ref"], strict)
            if key not in seen:
                seen.add(key)
                walk(defs[node["schema_ref"]], strict, where)
            return
        if kind in ("model", "dataclass", "typed-dict"):
            strict = bool((node.get("config") or {}).get("strict", False))
            walk(node.get("schema"), strict, getattr(node.get("cls"), "__name__", where))
            return
        if kind == "function-before" and node["function"].get("function") is integral:
            walk(node["schema"], strict, where, integral_ok=True)
            return
        if kind in ("int", "float", "bool"):
            if not node.get("strict", strict):
                found.append(f"{where}: {kind} takes strings")
            elif kind == "int" and not integral_ok:
                found.append(f"{where}: int refuses 5.0")
            return
        if kind in ("model-fields", "typed-dict-fields", "dataclass-args"):
            fields = node["fields"]
            items = fields.items() if isinstance(fields, dict) else [(f["name"], f) for f in fields]
            for name, field in items:
                walk(field.get("schema"), strict, f"{where}.{name}")
            return
        if kind == "tagged-union":
            for choice in node["choices"].values():
                walk(choice, strict, where)
            return
        for part in ("schema", "items_schema", "keys_schema", "values_schema", "choices"):
            if part in node:
                walk(node[part], strict, where)

    walk(TypeAdapter(annotation).core_schema, False, "body")
    return found


def body_routes(app: CloudApp) -> list[RouteContext]:
    api = app.rest_app
    assert api is not None
    return [r for r in api_routes(api) if r.body_field is not None]


async def test_no_body_takes_a_string_for_a_number(cloud: tuple[CloudApp, httpx.AsyncClient]) -> None:
    app, client = cloud
    routes = body_routes(app)
    assert len(routes) >= 30
    untruthful = {
        f"{sorted(r.methods or ())} {r.path}": found
        for r in routes
        if (found := untruthful_scalars(r.body_field.field_info.annotation))
    }
    assert not untruthful, untruthful
    # What that means for the client:
    r = await client.put("/api/v1/presence-intervals", json={"default": "5"})
    assert r.status_code == 422 and "default" in r.json()["detail"], r.text
    r = await client.put("/api/v1/presence-intervals", json={"default": 5.5})
    assert r.status_code == 422, r.text
    r = await client.put("/api/v1/presence-intervals", json={"default": 5.0})  # JSON's integer 5
    assert r.status_code == 200 and r.json() == {"default": 5}
    r = await client.post("/api/v1/tenants", json={"token": "strict", "auto_register": "false"})
    assert r.status_code == 422 and "auto_register" in r.json()["detail"], r.text
    r = await client.patch("/api/v1/tenants/default", json={"presence_interval_s": "60"})
    assert r.status_code == 422, r.text
    r = await client.patch("/api/v1/tenants/default", json={"presence_interval_s": 60.0, "pipeline": {}})
    assert r.status_code == 200 and r.json()["settings"]["presence_interval_s"] == 60, r.text


def test_the_tenant_bodies_have_the_settings_bounds() -> None:
    """TenantIn / TenantChange restate TenantSettings' fields for JSON: the same fields, the
    same bounds."""

    def bounds(schema: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, prop in schema["properties"].items():
            options = prop.get("anyOf", [prop])
            out[name] = [
                {k: v for k, v in o.items() if k in ("minimum", "maximum", "exclusiveMinimum", "minLength")}
                for o in options
            ]
        return out

    settings = bounds(TenantSettings.model_json_schema())
    assert bounds(TenantIn.model_json_schema()) == settings
    change = bounds(TenantChange.model_json_schema())
    assert change == {k: v for k, v in settings.items() if k != "token"}
    assert set(PipelineChange.model_fields) == set(PipelineSettings.model_fields)


async def test_presence_intervals_name_existing_device_types(
    cloud: tuple[CloudApp, httpx.AsyncClient],
) -> None:
    _, client = cloud
    assert (await client.put("/api/v1/presence-intervals", json={"default": 5})).status_code == 200
    r = await client.put("/api/v1/presence-intervals", json={"default": 60, "no-such-type": 5})
    assert r.status_code == 422, r.text
    assert r.json()["reference"] == {"kind": "device type", "token": "no-such-type"}
    assert (await client.get("/api/v1/presence-intervals")).json() == {"default": 5}  # unchanged
    assert (await client.put("/api/v1/presence-intervals", json={})).status_code == 200
    # A deleted type's interval goes with it.
    assert (await client.post("/api/v1/device-types", json={"token": "brief"})).status_code == 201
    assert (await client.put("/api/v1/presence-intervals", json={"brief": 7})).status_code == 200
    assert (await client.delete("/api/v1/device-types/brief")).status_code == 200
    assert (await client.get("/api/v1/presence-intervals")).json() == {}
    # The tenant's default type (auto-registration gives it) is not deleted.
    r = await client.delete("/api/v1/device-types/default")
    assert r.status_code == 409 and "default_device_type" in r.json()["detail"]


# --- on the test stack -----------------------------------------------------------------------------


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(tmp_path) as s:
        yield s


async def test_unknown_references_are_422_naming_them(stack: ApiStack) -> None:
    async with stack.client() as client:
        h = await login(client, "admin")
        assert (await client.post("/api/v1/device-types", json=THERMOSTAT, headers=h)).status_code == 201
        assert (
            await client.post("/api/v1/devices", json={"token": "d1", "device_type": "thermostat"}, headers=h)
        ).status_code == 201
        cases: list[tuple[str, str, dict[str, Any], tuple[str, str]]] = [
            ("POST", "/api/v1/devices", {"token": "d2", "device_type": "ghost"}, ("device type", "ghost")),
            ("PUT", "/api/v1/devices/d1", {"device_type": "ghost"}, ("device type", "ghost")),
            ("POST", "/api/v1/assignments", {"device": "ghost"}, ("device", "ghost")),
            ("POST", "/api/v1/assignments", {"device": "d1", "customer": "ghost"}, ("customer", "ghost")),
            ("POST", "/api/v1/assignments", {"device": "d1", "area": "ghost"}, ("area", "ghost")),
            (
                "POST",
                "/api/v1/customers",
                {"token": "c", "customer_type": "ghost"},
                ("customer type", "ghost"),
            ),
            ("POST", "/api/v1/area-types", {"token": "at"}, ("", "")),
            ("POST", "/api/v1/areas", {"token": "a", "area_type": "ghost"}, ("area type", "ghost")),
            (
                "POST",
                "/api/v1/areas",
                {"token": "a", "area_type": "at", "parent": "ghost"},
                ("area", "ghost"),
            ),
            ("POST", "/api/v1/device-groups", {"token": "g"}, ("", "")),
            (
                "POST",
                "/api/v1/device-groups/g/elements",
                {"kind": "device", "token": "ghost"},
                ("device", "ghost"),
            ),
            (
                "POST",
                "/api/v1/device-groups/g/elements",
                {"kind": "group", "token": "ghost"},
                ("device group", "ghost"),
            ),
            (
                "POST",
                "/api/v1/users",
                {"name": "cu", "password": PASSWORD, "role": "customer", "customer": "ghost"},
                ("customer", "ghost"),
            ),
        ]
        for method, path, body, (kind, token) in cases:
            r = await client.request(method, path, json=body, headers=h)
            if not kind:  # a record the next cases need
                assert r.status_code == 201, r.text
                continue
            assert r.status_code == 422, f"{method} {path} {body}: {r.status_code} {r.text}"
            assert r.json()["reference"] == {"kind": kind, "token": token}, r.text
            assert f"'{token}' does not exist" in r.json()["detail"]
        # The thing a path names is still a 404.
        r = await client.post(
            "/api/v1/device-groups/ghost/elements", json={"kind": "device", "token": "d1"}, headers=h
        )
        assert r.status_code == 404 and "reference" not in r.json()


async def test_device_types_and_devices_change_and_go(stack: ApiStack) -> None:
    async with stack.client() as client:
        h = await login(client, "admin")
        assert (await client.post("/api/v1/device-types", json=THERMOSTAT, headers=h)).status_code == 201
        assert (
            await client.post("/api/v1/device-types", json={"token": "default"}, headers=h)
        ).status_code == 201
        r = await client.put(
            "/api/v1/device-types/thermostat",
            json={"name": "Thermo 2", "commands": [{"name": "reboot"}]},
            headers=h,
        )
        assert r.status_code == 200 and [c["name"] for c in r.json()["commands"]] == ["reboot"]
        assert (await client.get("/api/v1/device-types/thermostat", headers=h)).json()["name"] == "Thermo 2"
        assert (await client.put("/api/v1/device-types/ghost", json={}, headers=h)).status_code == 404
        dev = {"token": "d1", "device_type": "thermostat", "comments": "roof", "metadata": {"floor": "3"}}
        created = (await client.post("/api/v1/devices", json=dev, headers=h)).json()
        # A command the type no longer has is refused; the new one is taken.
        r = await client.post("/api/v1/devices/d1/commands", json={"command": "ping"}, headers=h)
        assert r.status_code == 422
        r = await client.post("/api/v1/devices/d1/commands", json={"command": "reboot"}, headers=h)
        assert r.status_code == 201, r.text

        # a device type in use is not deleted; the answer names a device of it
        r = await client.delete("/api/v1/device-types/thermostat", headers=h)
        assert r.status_code == 409 and "'d1'" in r.json()["detail"]
        r = await client.put(
            "/api/v1/devices/d1", json={"device_type": "default", "comments": "cellar"}, headers=h
        )
        assert r.status_code == 200, r.text
        changed = r.json()
        assert changed["device_type"] == "default" and changed["metadata"] == {}
        assert changed["created"] == created["created"] and changed["token"] == "d1"
        assert (await client.delete("/api/v1/device-types/thermostat", headers=h)).json() == {
            "token": "thermostat",
            "deleted": True,
        }
        assert (await client.get("/api/v1/device-types/thermostat", headers=h)).status_code == 404

        # a device with an active assignment, or in a device group, is not deleted
        asg = (await client.post("/api/v1/assignments", json={"device": "d1"}, headers=h)).json()
        r = await client.delete("/api/v1/devices/d1", headers=h)
        assert r.status_code == 409 and asg["token"] in r.json()["detail"]
        assert (
            await client.post(f"/api/v1/assignments/{asg['token']}/release", headers=h)
        ).status_code == 200
        await client.post("/api/v1/device-groups", json={"token": "g"}, headers=h)
        await client.post(
            "/api/v1/device-groups/g/elements", json={"kind": "device", "token": "d1"}, headers=h
        )
        r = await client.delete("/api/v1/devices/d1", headers=h)
        assert r.status_code == 409 and "device group 'g'" in r.json()["detail"]
        await client.delete("/api/v1/device-groups/g/elements/d1", headers=h)

        event = pb.Event(
            tenant="default",
            device="d1",
            assignment=asg["token"],
            alternate_id="before",
            event_time_ms=1_700_000_000_000,
            received_time_ms=1_700_000_000_001,
            measurement=pb.Measurement(values={"t": 1.0}),
        )
        assert await stack.event_store.add("default", [event])
        assert (await client.delete("/api/v1/devices/d1", headers=h)).status_code == 200
        assert (await client.get("/api/v1/devices/d1", headers=h)).status_code == 404
        assert (await client.get("/api/v1/devices/d1/events", headers=h)).status_code == 404
        assert (await client.delete("/api/v1/devices/d1", headers=h)).status_code == 404
        # The token can be registered again, and then continues the device's history.
        again = {"token": "d1", "device_type": "default"}
        assert (await client.post("/api/v1/devices", json=again, headers=h)).status_code == 201
        events = (await client.get("/api/v1/devices/d1/events", headers=h)).json()
        assert [e["alternate_id"] for e in events["items"]] == ["before"]
        # viewers may read but not change
        viewer = await login(client, "vera")
        assert (await client.put("/api/v1/devices/d1", json=again, headers=viewer)).status_code == 403
        assert (await client.delete("/api/v1/devices/d1", headers=viewer)).status_code == 403


async def test_device_types_and_devices_over_grpc(stack: ApiStack) -> None:
    server = grpc.aio.server()
    add_grpc_api(
        server,
        registry=stack.registry,
        event_store=stack.event_store,
        invocations=stack.invocations,
        commands=stack.commands,
        auth=ApiAuth(TokenAuthority(SECRET, 3600)),
        site=stack.site,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with stack.client() as client:
            token = (await login(client, "admin"))["Authorization"].split()[1]
        metadata = bearer(token)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            dm = svc_grpc.DeviceManagementStub(channel)

            async def code(call: Any) -> grpc.StatusCode:
                try:
                    await call
                except grpc.aio.AioRpcError as err:
                    return err.code()
                return grpc.StatusCode.OK

            for t in ("t", "default"):
                await dm.CreateDeviceType(
                    svc.CreateDeviceTypeRequest(tenant="default", device_type=model.DeviceType(token=t)),
                    metadata=metadata,
                )
            changed = await dm.UpdateDeviceType(
                svc.UpdateDeviceTypeRequest(
                    tenant="default", device_type=model.DeviceType(token="t", name="T")
                ),
                metadata=metadata,
            )
            assert changed.name == "T"
            got = await dm.GetDeviceType(
                svc.GetDeviceTypeRequest(tenant="default", token="t"), metadata=metadata
            )
            assert got.name == "T"
            device = model.Device(token="g1", tenant="default", device_type="t")
            await dm.CreateDevice(svc.CreateDeviceRequest(device=device), metadata=metadata)
            ghost_type = model.Device(token="g1", tenant="default", device_type="ghost")
            assert (
                await code(dm.UpdateDevice(svc.UpdateDeviceRequest(device=ghost_type), metadata=metadata))
                == grpc.StatusCode.INVALID_ARGUMENT
            )
            in_use = dm.DeleteDeviceType(
                svc.DeleteDeviceTypeRequest(tenant="default", token="t"), metadata=metadata
            )
            assert await code(in_use) == grpc.StatusCode.FAILED_PRECONDITION
            moved = model.Device(token="g1", tenant="default", device_type="default", comments="moved")
            assert (
                await dm.UpdateDevice(svc.UpdateDeviceRequest(device=moved), metadata=metadata)
            ).comments == "moved"
            gone = await dm.DeleteDeviceType(
                svc.DeleteDeviceTypeRequest(tenant="default", token="t"), metadata=metadata
            )
            assert gone.token == "t"
            deleted = await dm.DeleteDevice(
                svc.DeleteDeviceRequest(tenant="default", token="g1"), metadata=metadata
            )
            assert deleted.token == "g1"
            again = dm.DeleteDevice(svc.DeleteDeviceRequest(tenant="default", token="g1"), metadata=metadata)
            assert await code(again) == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(grace=None)


async def test_lists_filter_by_customer_and_search(stack: ApiStack) -> None:
    async with stack.client() as client:
        h = await login(client, "admin")
        await client.post("/api/v1/customer-types", json={"token": "site"}, headers=h)
        for token, name in (("c1", "Acme North"), ("c2", "Globex"), ("c3", "acme south")):
            body = {"token": token, "customer_type": "site", "name": name}
            assert (await client.post("/api/v1/customers", json=body, headers=h)).status_code == 201
        found = (await client.get("/api/v1/customers?search=ACME", headers=h)).json()
        assert [c["token"] for c in found["items"]] == ["c1", "c3"] and found["total"] == 2
        assert (await client.get("/api/v1/customers?search=c2", headers=h)).json()["total"] == 1
        paged = (await client.get("/api/v1/customers?search=acme&page=2&page_size=1", headers=h)).json()
        assert [c["token"] for c in paged["items"]] == ["c3"] and paged["total"] == 2

        await client.post("/api/v1/device-types", json={"token": "t"}, headers=h)
        tokens = {}
        for device, customer in (("d1", "c1"), ("d2", "c2"), ("d3", "c1")):
            await client.post("/api/v1/devices", json={"token": device, "device_type": "t"}, headers=h)
            body = {"device": device, "customer": customer}
            tokens[device] = (await client.post("/api/v1/assignments", json=body, headers=h)).json()["token"]
        mine = (await client.get("/api/v1/assignments?customer=c1", headers=h)).json()
        assert [a["token"] for a in mine["items"]] == [tokens["d3"], tokens["d1"]] and mine["total"] == 2
        one = (await client.get("/api/v1/assignments?customer=c1&device=d1", headers=h)).json()
        assert [a["token"] for a in one["items"]] == [tokens["d1"]]
        assert (await client.get("/api/v1/assignments?customer=ghost", headers=h)).status_code == 404
        # a customer user: its own customer's, and nothing of another's
        cora = await login(client, "cora")
        own = (await client.get("/api/v1/assignments?customer=c1", headers=cora)).json()
        assert own["total"] == 2
        assert (await client.get("/api/v1/assignments?customer=c2", headers=cora)).status_code == 404
        assert [
            c["token"]
            for c in (await client.get("/api/v1/customers?search=acme", headers=cora)).json()["items"]
        ] == ["c1"]


async def test_user_names_say_nothing_about_other_tenants(stack: ApiStack) -> None:
    async with stack.client() as client:
        bob = await login(client, "bob")  # the admin of tenant beta
        user = {"password": PASSWORD, "role": "viewer"}
        assert (
            await client.post("/api/v1/users", json={"name": "bea", **user}, headers=bob)
        ).status_code == 201
        answers = {}
        # a name of bob's own tenant, of another tenant, of an instance admin, and a free one
        for name in ("bea", "olga", "root", "free-name"):
            r = await client.post("/api/v1/users", json={"name": name, **user}, headers=bob)
            answers[name] = (r.status_code, r.json().get("detail", "").replace(name, "<name>"))
        assert answers["free-name"][0] == 201
        assert answers["bea"] == answers["olga"] == answers["root"]
        status, detail = answers["olga"]
        assert status == 409 and "exist" not in detail and "default" not in detail
        # and the other tenant's user stays invisible
        assert (await client.get("/api/v1/users/olga", headers=bob)).status_code == 404
        assert "olga" not in (await client.get("/api/v1/users", headers=bob)).text


async def test_passwords_have_a_minimum_everywhere(
    stack: ApiStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    short = "x" * (MIN_PASSWORD - 1)
    async with stack.client() as client:
        h = await login(client, "admin")
        r = await client.post(
            "/api/v1/users", json={"name": "pat", "password": short, "role": "viewer"}, headers=h
        )
        assert r.status_code == 422 and "password" in r.json()["detail"]
        r = await client.post(
            "/api/v1/users", json={"name": "pat", "password": PASSWORD, "role": "viewer"}, headers=h
        )
        assert r.status_code == 201
        assert (
            await client.patch("/api/v1/users/pat", json={"password": short}, headers=h)
        ).status_code == 422
    # The admin bootstrap refuses it before anything starts, saying where it came from.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FIELDGATE_ADMIN_PASSWORD", short)
    monkeypatch.setenv("FIELDGATE_CLOUD_DATA_DIR", str(tmp_path / "data"))
    assert main(["cloud", "run"]) == 2
    err = capsys.readouterr().err
    assert f"FIELDGATE_ADMIN_PASSWORD: password must be at least {MIN_PASSWORD} characters" in err
    assert not (tmp_path / "data").exists()
