"""The site store's contract on both backends (SQLite files; a real Cassandra, distributed):
tokens unique per tenant and kind (also between two replicas racing), references that must
exist and keep their targets from deletion (409-style InUse naming the referrer), cycles
refused (areas, nested groups), paging and prefix search, recursive group members, tenants
apart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fieldgate.cloud.errors import Conflict, Cycle, InUse, NotFound, UnknownReference
from fieldgate.cloud.store.site import (
    Area,
    AreaType,
    Asset,
    AssetType,
    DeviceGroup,
    GroupElement,
    SiteStore,
    Zone,
)
from tests.contract.conftest import Backend

pytestmark = pytest.mark.integration

T, U = "default", "other"
SQUARE = ((52.0, 13.0), (52.0, 13.1), (52.1, 13.1), (52.1, 13.0))


@pytest.fixture
async def site(backend: Backend) -> AsyncIterator[SiteStore]:
    store = backend.site()
    await store.start()
    yield store
    await store.stop()


async def _replica(backend: Backend) -> SiteStore:
    other = backend.site()
    await other.start()
    return other


async def test_areas_zones_and_their_references(site: SiteStore) -> None:
    at = await site.create(T, AreaType(token="building", name="Building"))
    assert at.created_ms > 0
    await site.create(T, Area(token="plant", area_type="building", name="Plant", metadata={"k": "v"}))
    await site.create(T, Area(token="hall-1", area_type="building", parent="plant", name="Hall 1"))
    await site.create(T, Zone(token="dock", area="hall-1", polygon=SQUARE, name="Dock"))
    with pytest.raises(Conflict):
        await site.create(T, Area(token="plant", area_type="building"))
    with pytest.raises(UnknownReference, match="area type 'nope'"):
        await site.create(T, Area(token="x", area_type="nope"))
    with pytest.raises(UnknownReference, match="area 'nope'"):
        await site.create(T, Zone(token="z2", area="nope", polygon=SQUARE))
    got = await site.get(T, "zone", "dock")
    assert isinstance(got, Zone) and got.polygon == SQUARE and got.area == "hall-1"
    # children and zones of an area
    kids = await site.find(T, "area", 1, 10, referencing=("area", "plant"))
    assert [a.token for a in kids.items] == ["hall-1"]
    zones = await site.find(T, "zone", 1, 10, referencing=("area", "hall-1"))
    assert [z.token for z in zones.items] == ["dock"]
    # referenced: refused, naming the referrer
    with pytest.raises(InUse, match="area 'hall-1'"):
        await site.delete(T, "area", "plant")
    with pytest.raises(InUse, match="zone 'dock'"):
        await site.delete(T, "area", "hall-1")
    with pytest.raises(InUse, match=r"area 'hall-1'|area 'plant'"):
        await site.delete(T, "area_type", "building")
    # cycles
    with pytest.raises(Cycle, match="cycle"):
        await site.update(T, Area(token="plant", area_type="building", parent="hall-1"))
    with pytest.raises(Cycle):
        await site.update(T, Area(token="plant", area_type="building", parent="plant"))
    # moving the zone frees hall-1's reference
    await site.update(T, Zone(token="dock", area="plant", polygon=SQUARE, name="Dock 2"))
    moved = await site.get(T, "zone", "dock")
    assert moved is not None and moved.name == "Dock 2" and moved.created_ms == got.created_ms
    await site.delete(T, "area", "hall-1")
    await site.delete(T, "zone", "dock")
    await site.delete(T, "area", "plant")
    await site.delete(T, "area_type", "building")
    assert await site.get(T, "area_type", "building") is None
    with pytest.raises(NotFound):
        await site.delete(T, "area", "plant")


async def test_assets_paging_search_and_tenants(site: SiteStore) -> None:
    await site.create(T, AssetType(token="pump"))
    for i in range(5):
        await site.create(T, Asset(token=f"p-{i}", asset_type="pump", name=f"Pump {i}"))
    await site.create(T, Asset(token="boiler", asset_type="pump", name="Big boiler"))
    page = await site.find(T, "asset", 2, 2)
    assert page.total == 6 and [a.token for a in page.items] == ["p-1", "p-2"]
    assert [a.token for a in (await site.find(T, "asset", 1, 10, search="p-")).items] == [
        f"p-{i}" for i in range(5)
    ]
    assert [a.token for a in (await site.find(T, "asset", 1, 10, search="big")).items] == ["boiler"]
    with pytest.raises(InUse, match="asset '"):
        await site.delete(T, "asset_type", "pump")
    # another tenant sees nothing of it and may reuse the tokens
    assert (await site.find(U, "asset", 1, 10)).total == 0
    assert await site.get(U, "asset_type", "pump") is None
    await site.create(U, AssetType(token="pump"))
    with pytest.raises(UnknownReference):
        await site.create(U, Asset(token="p-0", asset_type="valve"))


async def test_device_groups_roles_nesting_and_cycles(site: SiteStore) -> None:
    for g in ("all", "north", "south"):
        await site.create(T, DeviceGroup(token=g, roles=("ops",)))
    await site.put_element(T, "north", GroupElement(kind="device", token="d1", roles=("primary",)))
    await site.put_element(T, "north", GroupElement(kind="device", token="d2"))
    await site.put_element(T, "south", GroupElement(kind="device", token="d2"))
    await site.put_element(T, "south", GroupElement(kind="device", token="d3"))
    await site.put_element(T, "all", GroupElement(kind="group", token="north", roles=("region",)))
    await site.put_element(T, "all", GroupElement(kind="group", token="south"))
    await site.put_element(T, "all", GroupElement(kind="device", token="d9"))
    assert await site.members(T, "all") == ["d1", "d2", "d3", "d9"]
    assert await site.members(T, "all", recursive=False) == ["d9"]
    els = await site.elements(T, "all", 1, 10)
    assert [(e.kind, e.token, e.roles) for e in els.items] == [
        ("group", "north", ("region",)),
        ("group", "south", ()),
        ("device", "d9", ()),
    ]
    # roles replaced, not added twice
    await site.put_element(T, "all", GroupElement(kind="group", token="north", roles=("r2",)))
    assert (await site.elements(T, "all", 1, 10)).total == 3
    with pytest.raises(Cycle, match="cycle"):
        await site.put_element(T, "north", GroupElement(kind="group", token="all"))
    with pytest.raises(Cycle, match="cycle"):
        await site.put_element(T, "north", GroupElement(kind="group", token="north"))
    with pytest.raises(UnknownReference):
        await site.put_element(T, "north", GroupElement(kind="group", token="nope"))
    with pytest.raises(InUse, match="device group 'all'"):
        await site.delete(T, "device_group", "north")
    await site.remove_element(T, "all", "group", "north")
    with pytest.raises(NotFound):
        await site.remove_element(T, "all", "group", "north")
    assert await site.members(T, "all") == ["d2", "d3", "d9"]
    await site.delete(T, "device_group", "north")
    # deleting a group releases the groups nested in it
    await site.delete(T, "device_group", "all")
    await site.delete(T, "device_group", "south")
    with pytest.raises(NotFound):
        await site.members(T, "all")


async def test_two_replicas_race_for_a_token_and_a_delete(site: SiteStore, backend: Backend) -> None:
    other = await _replica(backend)
    try:
        await site.create(T, AreaType(token="t"))
        results = await asyncio.gather(
            *(
                s.create(T, Area(token="same", area_type="t", name=str(i)))
                for i, s in enumerate([site, other] * 3)
            ),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1
        assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))
        # a delete of the type racing new areas naming it: either the delete wins (and every
        # create fails: UnknownReference) or the creates that won keep the type
        outcome = await asyncio.gather(
            other.delete(T, "area_type", "t"),
            *(site.create(T, Area(token=f"new-{i}", area_type="t")) for i in range(3)),
            return_exceptions=True,
        )
        created = [r for r in outcome[1:] if not isinstance(r, BaseException)]
        assert all(isinstance(r, (UnknownReference, InUse)) for r in outcome if isinstance(r, BaseException))
        still = await site.get(T, "area_type", "t")
        assert still is not None  # "same" references it, so the delete must have been refused
        assert isinstance(outcome[0], InUse)
        assert (await site.find(T, "area", 1, 10)).total == 1 + len(created)
    finally:
        await other.stop()


async def test_holds_from_outside_keep_records_and_are_given_back_once(
    site: SiteStore, backend: Backend
) -> None:
    """What an active assignment does: it holds its area and asset (deletes refused naming it),
    an unknown one is NotFound and nothing stays held, and giving back twice (two replicas
    releasing at once) counts once — the other holder still keeps the record."""
    await site.create(T, AreaType(token="b"))
    await site.create(T, Area(token="hall", area_type="b"))
    await site.create(T, AssetType(token="pump"))
    await site.create(T, Asset(token="p-1", asset_type="pump"))
    with pytest.raises(UnknownReference, match="asset 'nope'"):
        await site.hold(T, ("assignment", "a0"), [("area", "hall"), ("asset", "nope")])
    await site.delete(T, "area", "hall")  # nothing was kept by the failed hold
    await site.create(T, Area(token="hall", area_type="b"))

    await site.hold(T, ("assignment", "a1"), [("area", "hall"), ("asset", "p-1")])
    await site.hold(T, ("assignment", "a2"), [("area", "hall")])
    with pytest.raises(InUse, match="assignment 'a1'"):
        await site.delete(T, "asset", "p-1")
    other = await _replica(backend)
    try:
        await asyncio.gather(
            site.let_go(T, ("assignment", "a1"), [("area", "hall"), ("asset", "p-1")]),
            other.let_go(T, ("assignment", "a1"), [("area", "hall"), ("asset", "p-1")]),
        )
    finally:
        await other.stop()
    with pytest.raises(InUse, match="assignment 'a2'"):
        await site.delete(T, "area", "hall")
    await site.delete(T, "asset", "p-1")
    await site.let_go(T, ("assignment", "a2"), [("area", "hall")])
    await site.delete(T, "area", "hall")
