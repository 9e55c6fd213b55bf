"""Geofence rules naming a zone (cloud/pipeline/zones.py) through the real all-in-one cloud: the
zone is made over REST, the rule names its token, a device's locations entering and leaving it
raise and clear the alert; a zone moved over REST moves the fence; a rule naming an unknown
zone fires nothing; inline polygons keep working beside it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.domain.rules.engine import evaluate_event
from fieldgate.cloud.domain.rules.model import RULE_ADAPTER, GeofenceRule
from fieldgate.cloud.pipeline.zones import ZonePolygons
from fieldgate.cloud.store.site import Area, AreaType, Zone
from fieldgate.cloud.store.sqlite.site import SqliteSiteStore
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.waiting import eventually
from tests.integration.test_state_rules import T0, _n, add_rule, api, cloud, send  # noqa: F401

pytestmark = pytest.mark.integration

YARD = [[52.0, 13.0], [52.0, 14.0], [53.0, 14.0], [53.0, 13.0]]


async def test_a_device_entering_and_leaving_a_zone(cloud: CloudApp, api: httpx.AsyncClient) -> None:  # noqa: F811
    assert (await api.post("/api/v1/area-types", json={"token": "site"})).status_code == 201
    assert (await api.post("/api/v1/areas", json={"token": "depot", "area_type": "site"})).status_code == 201
    r = await api.post("/api/v1/areas/depot/zones", json={"token": "yard", "polygon": YARD, "name": "Yard"})
    assert r.status_code == 201, r.text
    await cloud.parts.zone_polygons.refresh("default")  # what the refresh loop does every refresh_s
    await add_rule(api, {"id": "in-yard", "kind": "geofence", "on": "enter", "zone": "yard", "level": "info"})
    path = [(51.5, 13.5), (52.5, 13.5), (52.6, 13.6), (54.0, 13.5), (52.2, 13.2)]
    for i, (lat, lon) in enumerate(path):
        await send(cloud, "truck-1", f"l{i}", T0 + i * 1000, lat=lat, lon=lon)
    alerts = await eventually(lambda: _n(api, "truck-1", 3), timeout=15, what="zone alerts")
    assert alerts == [("in-yard", "raised"), ("in-yard", "cleared"), ("in-yard", "raised")]
    # the zone moves away (over REST): the device at the same place is now outside it
    far = [[10.0, 10.0], [10.0, 11.0], [11.0, 11.0]]
    r = await api.put("/api/v1/zones/yard", json={"area": "depot", "polygon": far})
    assert r.status_code == 200, r.text
    await cloud.parts.zone_polygons.refresh("default")
    await send(cloud, "truck-1", "l9", T0 + 9000, lat=52.2, lon=13.2)
    alerts = await eventually(lambda: _n(api, "truck-1", 4), timeout=15, what="cleared by the moved zone")
    assert alerts[-1] == ("in-yard", "cleared")


async def test_zone_polygons_unit(tmp_path: Path) -> None:
    site = SqliteSiteStore(tmp_path / "site")
    await site.start()
    try:
        await site.create("t", AreaType(token="at"))
        await site.create("t", Area(token="a", area_type="at"))
        await site.create("t", Zone(token="z", area="a", polygon=tuple((p[0], p[1]) for p in YARD)))
        zones = ZonePolygons(site)
        by_zone = RULE_ADAPTER.validate_python({"id": "g", "kind": "geofence", "on": "enter", "zone": "z"})
        ghost = RULE_ADAPTER.validate_python({"id": "h", "kind": "geofence", "on": "leave", "zone": "nope"})
        inline = RULE_ADAPTER.validate_python({"id": "i", "kind": "geofence", "polygon": YARD})
        assert isinstance(by_zone, GeofenceRule) and isinstance(ghost, GeofenceRule)
        ev = pb.Event(
            device="d", alternate_id="x", event_time_ms=1, location=pb.Location(latitude=52.5, longitude=13.5)
        )
        # not loaded yet: nothing is judged (no alert on a fence it cannot see)
        assert evaluate_event("t", by_zone, None, ev, zones) == (None, None)
        await zones.refresh("t")
        _, firing = evaluate_event("t", by_zone, None, ev, zones)
        assert firing is not None and firing.state == "raised"
        # a zone that does not exist: the leave rule does not fire although nothing contains the point
        assert evaluate_event("t", ghost, None, ev, zones) == (None, None)
        # inline polygons still work through the same source
        outside = pb.Event(
            device="d", alternate_id="y", event_time_ms=2, location=pb.Location(latitude=1, longitude=1)
        )
        _, firing = evaluate_event("t", inline, None, outside, zones)
        assert firing is not None and firing.state == "raised"
    finally:
        await site.stop()


def test_a_geofence_rule_needs_a_polygon_or_a_zone() -> None:
    for bad in (
        {"id": "g", "kind": "geofence"},
        {"id": "g", "kind": "geofence", "zone": "z", "polygon": YARD},
        {"id": "g", "kind": "geofence", "zone": "bad token!"},
        {"id": "g", "kind": "geofence", "polygon": [[1, 2], [3, 4]]},
    ):
        with pytest.raises(ValueError):
            RULE_ADAPTER.validate_python(bad)


async def test_a_deleted_tenants_site_records_go_with_it(cloud: CloudApp, api: httpx.AsyncClient) -> None:  # noqa: F811
    assert (await api.post("/api/v1/tenants", json={"token": "acme"})).status_code == 201, (
        "admin is an instance admin"
    )
    acme = {"X-Fieldgate-Tenant": "acme"}
    assert (await api.post("/api/v1/area-types", json={"token": "site"}, headers=acme)).status_code == 201
    assert (await api.delete("/api/v1/tenants/acme?confirm=acme")).status_code == 200

    async def gone() -> bool | None:
        return True if await cloud.parts.site_store.get("acme", "area_type", "site") is None else None

    await eventually(gone, timeout=10, what="site records of the deleted tenant removed")
    assert (await api.post("/api/v1/tenants", json={"token": "acme"})).status_code == 201
    listed = await api.get("/api/v1/area-types", headers=acme)
    assert listed.status_code == 200 and listed.json()["total"] == 0
