"""The site model and QR labels over REST (the real app on the real SQLite stores): CRUD,
paging and search, references that must exist, 409 naming what references a record, cycles
and bad input refused with 422 naming the field, group elements and resolved devices, labels
(PNG, SVG with the token), roles and tenants apart."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.api_stack import THERMOSTAT, ApiStack, api_stack, login

pytestmark = pytest.mark.integration

SQUARE = [[52.0, 13.0], [52.0, 13.1], [52.1, 13.1], [52.1, 13.0]]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(tmp_path) as s:
        yield s


@pytest.fixture
async def client(stack: ApiStack) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.client() as c:
        c.headers.update(await login(c, "admin"))
        yield c


async def ok(r: Any, code: int = 200) -> Any:
    response = await r
    assert response.status_code == code, response.text
    return response.json()


async def test_areas_zones_crud_tree_and_refusals(client: httpx.AsyncClient) -> None:
    at = await ok(client.post("/api/v1/area-types", json={"token": "building", "name": "Building"}), 201)
    assert at["token"] == "building" and at["created"].endswith("Z")
    await ok(
        client.post("/api/v1/areas", json={"token": "plant", "area_type": "building", "name": "Plant"}), 201
    )
    hall = {"token": "hall-1", "area_type": "building", "parent": "plant", "metadata": {"floor": "1"}}
    got = await ok(client.post("/api/v1/areas", json=hall), 201)
    assert got["parent"] == "plant" and got["metadata"] == {"floor": "1"}
    zone = await ok(client.post("/api/v1/areas/hall-1/zones", json={"token": "dock", "polygon": SQUARE}), 201)
    assert zone["area"] == "hall-1" and zone["polygon"] == SQUARE
    assert (await ok(client.get("/api/v1/zones/dock")))["polygon"] == SQUARE
    assert [z["token"] for z in (await ok(client.get("/api/v1/areas/hall-1/zones")))["items"]] == ["dock"]
    assert [a["token"] for a in (await ok(client.get("/api/v1/areas?parent=plant")))["items"]] == ["hall-1"]
    assert [a["token"] for a in (await ok(client.get("/api/v1/areas?search=hal")))["items"]] == ["hall-1"]
    assert [a["token"] for a in (await ok(client.get("/api/v1/areas?search=PLA")))["items"]] == ["plant"]
    assert (await client.get("/api/v1/areas?parent=nope")).status_code == 404

    # taken token, unknown references
    assert (
        await client.post("/api/v1/areas", json={"token": "plant", "area_type": "building"})
    ).status_code == 409
    r = await client.post("/api/v1/areas", json={"token": "x", "area_type": "building", "parent": "nope"})
    assert r.status_code == 422 and "area 'nope'" in r.json()["detail"]
    assert r.json()["reference"] == {"kind": "area", "token": "nope"}
    assert (
        await client.post("/api/v1/areas/nope/zones", json={"token": "z", "polygon": SQUARE})
    ).status_code == 404

    # cycles
    r = await client.put("/api/v1/areas/plant", json={"area_type": "building", "parent": "hall-1"})
    assert r.status_code == 409 and "cycle" in r.json()["detail"], r.text
    r = await client.put("/api/v1/areas/plant", json={"area_type": "building", "parent": "plant"})
    assert r.status_code == 409

    # referenced deletes: 409 naming the referrer
    r = await client.delete("/api/v1/areas/plant")
    assert r.status_code == 409 and "area 'hall-1'" in r.json()["detail"], r.text
    r = await client.delete("/api/v1/areas/hall-1")
    assert r.status_code == 409 and "zone 'dock'" in r.json()["detail"], r.text
    r = await client.delete("/api/v1/area-types/building")
    assert r.status_code == 409 and "area '" in r.json()["detail"]

    # then, bottom up, everything goes
    for path in (
        "/api/v1/zones/dock",
        "/api/v1/areas/hall-1",
        "/api/v1/areas/plant",
        "/api/v1/area-types/building",
    ):
        assert (await ok(client.delete(path)))["deleted"] is True
    assert (await client.get("/api/v1/areas/plant")).status_code == 404
    assert (await client.delete("/api/v1/areas/plant")).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"token": "z", "polygon": [[1, 2], [3, 4]]}, "polygon"),
        ({"token": "z", "polygon": [[91, 0], [1, 2], [3, 4]]}, "polygon"),
        ({"token": "z", "polygon": [[0, 181], [1, 2], [3, 4]]}, "polygon"),
        ({"token": "z", "polygon": [[0, 0], [0, 0], [0, 0], [0, 0]]}, "polygon"),
        ({"token": "z", "polygon": [[0, 0, 0], [1, 2], [3, 4]]}, "polygon"),
        ({"token": "z", "polygon": [["a", 0], [1, 2], [3, 4]]}, "polygon"),
        ({"token": "z", "polygon": SQUARE, "name": "n" * 201}, "name"),
        ({"token": "z" * 129, "polygon": SQUARE}, "token"),
        ({"token": "bad token", "polygon": SQUARE}, "token"),
        ({"token": "z", "polygon": SQUARE, "extra": 1}, "extra"),
    ],
)
async def test_bad_zones_are_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    await ok(client.post("/api/v1/area-types", json={"token": "t"}), 201)
    await ok(client.post("/api/v1/areas", json={"token": "a", "area_type": "t"}), 201)
    r = await client.post("/api/v1/areas/a/zones", json=body)
    assert r.status_code == 422 and field in r.json()["detail"], r.text
    assert (await ok(client.get("/api/v1/zones")))["total"] == 0


async def test_assets_and_too_long_strings(client: httpx.AsyncClient) -> None:
    await ok(client.post("/api/v1/asset-types", json={"token": "pump", "description": "d" * 2000}), 201)
    r = await client.post("/api/v1/asset-types", json={"token": "p2", "description": "d" * 2001})
    assert r.status_code == 422 and "description" in r.json()["detail"]
    r = await client.post(
        "/api/v1/assets", json={"token": "a", "asset_type": "pump", "metadata": {"k" * 129: "v"}}
    )
    assert r.status_code == 422 and "metadata" in r.json()["detail"]
    for i in range(3):
        await ok(client.post("/api/v1/assets", json={"token": f"p-{i}", "asset_type": "pump"}), 201)
    assert (await client.post("/api/v1/assets", json={"token": "x", "asset_type": "nope"})).status_code == 422
    page = await ok(client.get("/api/v1/assets?page=2&page_size=2&asset_type=pump"))
    assert page["total"] == 3 and [a["token"] for a in page["items"]] == ["p-2"]
    r = await client.delete("/api/v1/asset-types/pump")
    assert r.status_code == 409 and "asset 'p-0'" in r.json()["detail"]
    changed = await ok(client.put("/api/v1/assets/p-0", json={"asset_type": "pump", "name": "Main pump"}))
    assert changed["name"] == "Main pump"
    assert (await client.put("/api/v1/assets/nope", json={"asset_type": "pump"})).status_code == 404


async def test_device_groups_elements_and_resolved_devices(client: httpx.AsyncClient) -> None:
    await ok(client.post("/api/v1/device-types", json=THERMOSTAT), 201)
    for d in ("d1", "d2", "d3"):
        await ok(client.post("/api/v1/devices", json={"token": d, "device_type": "thermostat"}), 201)
    for g in ("all", "north"):
        await ok(client.post("/api/v1/device-groups", json={"token": g, "roles": ["ops"]}), 201)
    el = {"kind": "device", "token": "d1", "roles": ["primary", "sensor"]}
    assert (await ok(client.post("/api/v1/device-groups/north/elements", json=el), 201))["roles"] == el[
        "roles"
    ]
    await ok(client.post("/api/v1/device-groups/north/elements", json={"kind": "device", "token": "d2"}), 201)
    await ok(client.post("/api/v1/device-groups/all/elements", json={"kind": "group", "token": "north"}), 201)
    await ok(client.post("/api/v1/device-groups/all/elements", json={"kind": "device", "token": "d3"}), 201)
    r = await client.post("/api/v1/device-groups/all/elements", json={"kind": "device", "token": "ghost"})
    assert r.status_code == 422 and r.json()["reference"] == {"kind": "device", "token": "ghost"}
    r = await client.post("/api/v1/device-groups/ghost/elements", json={"kind": "device", "token": "d3"})
    assert r.status_code == 404  # the group the request is about
    r = await client.post("/api/v1/device-groups/north/elements", json={"kind": "group", "token": "all"})
    assert r.status_code == 409 and "cycle" in r.json()["detail"]
    els = await ok(client.get("/api/v1/device-groups/all/elements"))
    assert [(e["kind"], e["token"]) for e in els["items"]] == [("group", "north"), ("device", "d3")]
    assert (await ok(client.get("/api/v1/device-groups/all/devices")))["devices"] == ["d1", "d2", "d3"]
    flat = await ok(client.get("/api/v1/device-groups/all/devices?recursive=false"))
    assert flat["devices"] == ["d3"]
    r = await client.delete("/api/v1/device-groups/north")
    assert r.status_code == 409 and "device group 'all'" in r.json()["detail"]
    await ok(client.delete("/api/v1/device-groups/all/elements/north?kind=group"))
    assert (await client.delete("/api/v1/device-groups/all/elements/north?kind=group")).status_code == 404
    assert (await ok(client.get("/api/v1/device-groups/all/devices")))["devices"] == ["d3"]
    await ok(client.delete("/api/v1/device-groups/north"))
    assert (await client.get("/api/v1/device-groups/north/devices")).status_code == 404


async def test_labels(stack: ApiStack, client: httpx.AsyncClient) -> None:
    await ok(client.post("/api/v1/device-types", json=THERMOSTAT), 201)
    await ok(client.post("/api/v1/devices", json={"token": "thermo-1", "device_type": "thermostat"}), 201)
    await ok(client.post("/api/v1/asset-types", json={"token": "pump"}), 201)
    await ok(client.post("/api/v1/assets", json={"token": "boiler-7", "asset_type": "pump"}), 201)
    await ok(client.post("/api/v1/area-types", json={"token": "site"}), 201)
    await ok(client.post("/api/v1/areas", json={"token": "plant-1", "area_type": "site"}), 201)
    for path, token in (("devices", "thermo-1"), ("assets", "boiler-7"), ("areas", "plant-1")):
        png = await client.get(f"/api/v1/{path}/{token}/label.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
        svg = await client.get(f"/api/v1/{path}/{token}/label.svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        root = ET.fromstring(svg.content)  # well-formed
        ns = "{http://www.w3.org/2000/svg}"
        assert root.tag == f"{ns}svg"
        assert [t.text for t in root.iter(f"{ns}text")] == [token]
        assert root.find(f"{ns}svg") is not None or root.find(f"{ns}path") is not None
        # unknown entity: 404
        assert (await client.get(f"/api/v1/{path}/nope/label.png")).status_code == 404
        assert (await client.get(f"/api/v1/{path}/nope/label.svg")).status_code == 404
    # another tenant's admin: nothing of ours exists
    bob = await login(client, "bob")
    for path, token in (("devices", "thermo-1"), ("assets", "boiler-7"), ("areas", "plant-1")):
        assert (await client.get(f"/api/v1/{path}/{token}/label.svg", headers=bob)).status_code == 404
    # no token: 401
    async with stack.client() as anon:
        assert (await anon.get("/api/v1/devices/thermo-1/label.png")).status_code == 401


async def test_roles_and_tenants(stack: ApiStack, client: httpx.AsyncClient) -> None:
    await ok(client.post("/api/v1/area-types", json={"token": "site", "description": "OURS"}), 201)
    vera = await login(client, "vera")
    assert (await client.get("/api/v1/area-types/site", headers=vera)).status_code == 200
    assert (await client.post("/api/v1/area-types", json={"token": "x"}, headers=vera)).status_code == 403
    assert (await client.delete("/api/v1/area-types/site", headers=vera)).status_code == 403
    bob = await login(client, "bob")
    assert (await client.get("/api/v1/area-types/site", headers=bob)).status_code == 404
    listed = await client.get("/api/v1/area-types", headers=bob)
    assert listed.status_code == 200 and listed.json()["total"] == 0 and "OURS" not in listed.text
    # the same token in another tenant is another record
    assert (await client.post("/api/v1/area-types", json={"token": "site"}, headers=bob)).status_code == 201


async def test_assignments_name_existing_references_and_hold_them(client: httpx.AsyncClient) -> None:
    """An assignment naming a customer, area or asset that does not exist is a 422 naming it;
    while it is active its customer, area and asset cannot be deleted (409 naming it); once
    released they can (a second release gives nothing back twice)."""
    await ok(client.post("/api/v1/device-types", json=THERMOSTAT), 201)
    await ok(client.post("/api/v1/devices", json={"token": "t-1", "device_type": "thermostat"}), 201)
    await ok(client.post("/api/v1/area-types", json={"token": "building"}), 201)
    await ok(client.post("/api/v1/areas", json={"token": "hall", "area_type": "building"}), 201)
    await ok(client.post("/api/v1/asset-types", json={"token": "pump"}), 201)
    await ok(client.post("/api/v1/assets", json={"token": "p-7", "asset_type": "pump"}), 201)
    await ok(client.post("/api/v1/customer-types", json={"token": "site"}), 201)
    await ok(client.post("/api/v1/customers", json={"token": "acme", "customer_type": "site"}), 201)

    for field, missing in (("customer", "nope-c"), ("area", "nope-a"), ("asset", "nope-x")):
        r = await client.post("/api/v1/assignments", json={"device": "t-1", field: missing})
        assert r.status_code == 422 and f"{field} '{missing}' does not exist" in r.json()["detail"], r.text
    assert (await ok(client.get("/api/v1/assignments")))["total"] == 0

    asg = await ok(
        client.post(
            "/api/v1/assignments", json={"device": "t-1", "customer": "acme", "area": "hall", "asset": "p-7"}
        ),
        201,
    )
    for path, what in (
        ("/api/v1/areas/hall", "area 'hall'"),
        ("/api/v1/assets/p-7", "asset 'p-7'"),
        ("/api/v1/customers/acme", "customer 'acme'"),
    ):
        r = await client.delete(path)
        assert r.status_code == 409, r.text
        assert asg["token"] in r.json()["detail"] and "assignment" in r.json()["detail"], r.text
        assert what.split("'")[1] in r.json()["detail"]

    await ok(client.post(f"/api/v1/assignments/{asg['token']}/release"))
    await ok(client.post(f"/api/v1/assignments/{asg['token']}/release"))  # idempotent
    # A second active assignment holds the area: one release must not free it for both.
    await ok(client.post("/api/v1/devices", json={"token": "t-2", "device_type": "thermostat"}), 201)
    other = await ok(client.post("/api/v1/assignments", json={"device": "t-2", "area": "hall"}), 201)
    r = await client.delete("/api/v1/areas/hall")
    assert r.status_code == 409 and other["token"] in r.json()["detail"], r.text
    await ok(client.post(f"/api/v1/assignments/{other['token']}/release"))
    for path in ("/api/v1/areas/hall", "/api/v1/assets/p-7", "/api/v1/customers/acme"):
        assert (await client.delete(path)).status_code in (200, 204), path
