"""REST routes of the site model (docs/model.md): area types, areas, zones, asset types, assets
and device groups. Thin: the rules (references exist, nothing referenced is deleted, no cycles)
are in the site store. Reading needs ``read`` (site records are the tenant's structure, like
device types: customer users read them too, but see only their customer's devices in a
group); changing needs ``write``. Bodies are strict (unknown fields, wrong types → 422).

No ``from __future__ import annotations`` here: FastAPI reads the route signatures at
definition time, and the per-app dependencies are closure locals.
"""

from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from typing import Annotated, Literal, Self, TypeVar, cast

from fastapi import APIRouter, Depends, Path, Query, status
from pydantic import BaseModel, Field, Strict, StrictFloat, field_validator

from fieldgate.cloud.api.rest.models import Metadata, PageOut, _In, error_docs, page_fields
from fieldgate.cloud.api.rest.paging import PageQuery
from fieldgate.cloud.errors import NotFound
from fieldgate.cloud.services.access import Principal
from fieldgate.cloud.services.documents import iso
from fieldgate.cloud.services.management import TOKEN_PATTERN, Management
from fieldgate.cloud.store import Page
from fieldgate.cloud.store.site import (
    MAX_DESCRIPTION,
    MAX_NAME,
    MAX_ROLES,
    MAX_ZONE_POINTS,
    OPT_TOKEN_PATTERN,
    Area,
    AreaType,
    Asset,
    AssetType,
    DeviceGroup,
    GroupElement,
    Kind,
    SiteRecord,
    SiteStore,
    Zone,
    check_polygon,
    describe,
)

Search = Annotated[str | None, Query(max_length=128, description="token prefix, or name prefix (any case)")]
RefQuery = Annotated[str | None, Query(max_length=128)]
ERRORS = error_docs(common=True)
RoleName = Annotated[str, Field(min_length=1, max_length=64)]
RefToken = Annotated[str, Field(max_length=128, pattern=TOKEN_PATTERN)]
# The token of a record a PUT replaces (its body cannot carry one that is not a token).
RecordToken = Annotated[str, Path(max_length=128, pattern=TOKEN_PATTERN)]
Lat = Annotated[StrictFloat, Field(ge=-90, le=90)]
Lon = Annotated[StrictFloat, Field(ge=-180, le=180)]


# --- bodies ------------------------------------------------------------------------------------


class _Common(_In):
    name: str = Field("", max_length=MAX_NAME)
    description: str = Field("", max_length=MAX_DESCRIPTION)
    metadata: Metadata = Field(default_factory=dict)


class _WithToken(_In):
    token: str = Field(max_length=128, pattern=TOKEN_PATTERN)


class SiteTypeChange(_Common):
    """An area type or asset type: name, description, metadata."""


class SiteTypeIn(SiteTypeChange, _WithToken):
    pass


class AreaChange(_Common):
    area_type: RefToken
    parent: str = Field(
        "",
        max_length=128,
        pattern=OPT_TOKEN_PATTERN,
        description="the parent area's token; empty = top level",
    )


class AreaIn(AreaChange, _WithToken):
    pass


class ZoneChange(_Common):
    # A JSON array per point (Strict(False): a strict tuple would refuse a list; the numbers stay
    # strict); every point once, so that "at least 3 points" is what the document says.
    polygon: list[Annotated[tuple[Lat, Lon], Strict(False)]] = Field(
        min_length=3,
        max_length=MAX_ZONE_POINTS,
        description="distinct [lat, lon] points, not closed",
        json_schema_extra={"uniqueItems": True},
    )

    @field_validator("polygon")
    @classmethod
    def _points(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if len(set(value)) != len(value):
            raise ValueError(
                "a point is given twice (the polygon is not closed: the last point joins the first)"
            )
        check_polygon(value)
        return value

    def points(self) -> tuple[tuple[float, float], ...]:
        return tuple((p[0], p[1]) for p in self.polygon)


class ZoneIn(ZoneChange, _WithToken):
    pass


class ZoneMove(ZoneChange):
    area: RefToken


class AssetChange(_Common):
    asset_type: RefToken


class AssetIn(AssetChange, _WithToken):
    pass


class DeviceGroupChange(_Common):
    roles: list[RoleName] = Field(default_factory=list, max_length=MAX_ROLES)


class DeviceGroupIn(DeviceGroupChange, _WithToken):
    pass


class ElementIn(_In):
    kind: Literal["device", "group"]
    token: str = Field(max_length=128, pattern=TOKEN_PATTERN)
    roles: list[RoleName] = Field(default_factory=list, max_length=MAX_ROLES)


# --- answers -----------------------------------------------------------------------------------


class _Out(BaseModel):
    token: str
    name: str
    description: str
    metadata: dict[str, str]
    created: str

    @classmethod
    def of(cls, r: SiteRecord) -> Self:
        fields = r.model_dump(exclude={"created_ms"})
        return cls(**{k: v for k, v in fields.items() if k in cls.model_fields}, created=iso(r.created_ms))


OutT = TypeVar("OutT", bound=_Out)


class AreaTypeOut(_Out):
    pass


class AreaOut(_Out):
    area_type: str
    parent: str


class ZoneOut(_Out):
    area: str
    # [lat, lon] pairs as plain arrays (schemathesis cannot read a tuple's prefixItems in answers)
    polygon: list[Annotated[list[float], Field(min_length=2, max_length=2)]]


class AssetTypeOut(_Out):
    pass


class AssetOut(_Out):
    asset_type: str


class DeviceGroupOut(_Out):
    roles: list[str]


class ElementOut(BaseModel):
    kind: str
    token: str
    roles: list[str]


class DeviceTokensOut(BaseModel):
    group: str
    recursive: bool
    devices: list[str]


class Deleted(BaseModel):
    token: str
    deleted: bool = True


def site_router(
    site: SiteStore,
    mgmt: Management,
    read: Callable[..., Awaitable[Principal]],
    write: Callable[..., Awaitable[Principal]],
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERRORS)
    Read = Annotated[Principal, Depends(read)]
    Write = Annotated[Principal, Depends(write)]
    in_use = error_docs({404: "no such entity", 409: "still referenced (the detail says by what)"})
    created = status.HTTP_201_CREATED

    async def need(tenant: str, kind: Kind, token: str) -> SiteRecord:
        record = await site.get(tenant, kind, token)
        if record is None:
            raise NotFound(f"{describe(kind, token)} does not exist")
        return record

    async def visible(who: Principal, devices: Sequence[str]) -> list[str]:
        """A customer user sees only its customer's devices among a group's."""
        if who.scope_customer is None:
            return list(devices)
        out = []
        for d in devices:
            try:
                await mgmt.get_device(who.tenant, d, customer=who.scope_customer)
            except NotFound:
                continue
            out.append(d)
        return out

    def page_of(out: type[OutT], p: Page[SiteRecord]) -> PageOut[OutT]:
        page = PageOut[out](items=[out.of(r) for r in p.items], **page_fields(p))  # type: ignore[valid-type]
        return cast("PageOut[OutT]", page)

    # area types ---------------------------------------------------------------------------------
    tag: list[str | Enum] = ["areas"]

    @router.post("/area-types", status_code=created, tags=tag, responses=error_docs({409: "token taken"}))
    async def create_area_type(body: SiteTypeIn, who: Write) -> AreaTypeOut:
        return AreaTypeOut.of(await site.create(who.tenant, AreaType(**body.model_dump())))

    @router.get("/area-types", tags=tag)
    async def list_area_types(who: Read, paging: PageQuery, search: Search = None) -> PageOut[AreaTypeOut]:
        return page_of(
            AreaTypeOut,
            await site.find(who.tenant, "area_type", paging.page, paging.page_size, search=search),
        )

    @router.get("/area-types/{token}", tags=tag, responses=error_docs({404: "no such area type"}))
    async def get_area_type(token: str, who: Read) -> AreaTypeOut:
        return AreaTypeOut.of(await need(who.tenant, "area_type", token))

    @router.put("/area-types/{token}", tags=tag, responses=error_docs({404: "no such area type"}))
    async def update_area_type(token: RecordToken, body: SiteTypeChange, who: Write) -> AreaTypeOut:
        return AreaTypeOut.of(await site.update(who.tenant, AreaType(token=token, **body.model_dump())))

    @router.delete("/area-types/{token}", tags=tag, responses=in_use)
    async def delete_area_type(token: str, who: Write) -> Deleted:
        """409 while an area has this type."""
        await site.delete(who.tenant, "area_type", token)
        return Deleted(token=token)

    # areas --------------------------------------------------------------------------------------

    @router.post(
        "/areas",
        status_code=created,
        tags=tag,
        responses=error_docs({409: "token taken", 422: "invalid, or the area type or parent does not exist"}),
    )
    async def create_area(body: AreaIn, who: Write) -> AreaOut:
        return AreaOut.of(await site.create(who.tenant, Area(**body.model_dump())))

    @router.get("/areas", tags=tag)
    async def list_areas(
        who: Read,
        paging: PageQuery,
        parent: Annotated[str | None, Query(max_length=128, description="only this area's children")] = None,
        search: Search = None,
    ) -> PageOut[AreaOut]:
        ref: tuple[Kind, str] | None = None
        if parent:
            await need(who.tenant, "area", parent)
            ref = ("area", parent)
        return page_of(
            AreaOut,
            await site.find(
                who.tenant, "area", paging.page, paging.page_size, search=search, referencing=ref
            ),
        )

    @router.get("/areas/{token}", tags=tag, responses=error_docs({404: "no such area"}))
    async def get_area(token: str, who: Read) -> AreaOut:
        return AreaOut.of(await need(who.tenant, "area", token))

    @router.put(
        "/areas/{token}",
        tags=tag,
        responses=error_docs(
            {
                404: "no such area",
                409: "the new parent is below the area (a cycle)",
                422: "invalid, or the area type or parent does not exist",
            }
        ),
    )
    async def update_area(token: RecordToken, body: AreaChange, who: Write) -> AreaOut:
        """Replace type, parent, name, description and metadata (a parent below it: 422)."""
        return AreaOut.of(await site.update(who.tenant, Area(token=token, **body.model_dump())))

    @router.delete("/areas/{token}", tags=tag, responses=in_use)
    async def delete_area(token: str, who: Write) -> Deleted:
        """409 while a child area or a zone names it."""
        await site.delete(who.tenant, "area", token)
        return Deleted(token=token)

    # zones --------------------------------------------------------------------------------------

    @router.post(
        "/areas/{token}/zones",
        status_code=created,
        tags=["zones"],
        responses=error_docs({404: "no such area", 409: "token taken"}),
    )
    async def create_zone(token: str, body: ZoneIn, who: Write) -> ZoneOut:
        """A zone of the area: a polygon of at least 3 [lat, lon] points."""
        await need(who.tenant, "area", token)  # the area the path names: 404
        return ZoneOut.of(
            await site.create(
                who.tenant, Zone(area=token, **body.model_dump(exclude={"polygon"}), polygon=body.points())
            )
        )

    @router.get("/areas/{token}/zones", tags=["zones"], responses=error_docs({404: "no such area"}))
    async def list_area_zones(
        token: str,
        who: Read,
        paging: PageQuery,
        search: Search = None,
    ) -> PageOut[ZoneOut]:
        await need(who.tenant, "area", token)
        p = await site.find(
            who.tenant, "zone", paging.page, paging.page_size, search=search, referencing=("area", token)
        )
        return page_of(ZoneOut, p)

    @router.get("/zones", tags=["zones"])
    async def list_zones(who: Read, paging: PageQuery, search: Search = None) -> PageOut[ZoneOut]:
        return page_of(
            ZoneOut, await site.find(who.tenant, "zone", paging.page, paging.page_size, search=search)
        )

    @router.get("/zones/{token}", tags=["zones"], responses=error_docs({404: "no such zone"}))
    async def get_zone(token: str, who: Read) -> ZoneOut:
        return ZoneOut.of(await need(who.tenant, "zone", token))

    @router.put(
        "/zones/{token}",
        tags=["zones"],
        responses=error_docs({404: "no such zone", 422: "invalid, or the area does not exist"}),
    )
    async def update_zone(token: RecordToken, body: ZoneMove, who: Write) -> ZoneOut:
        """Replace area, polygon, name, description and metadata."""
        return ZoneOut.of(
            await site.update(
                who.tenant, Zone(token=token, **body.model_dump(exclude={"polygon"}), polygon=body.points())
            )
        )

    @router.delete("/zones/{token}", tags=["zones"], responses=error_docs({404: "no such zone"}))
    async def delete_zone(token: str, who: Write) -> Deleted:
        await site.delete(who.tenant, "zone", token)
        return Deleted(token=token)

    # asset types and assets ---------------------------------------------------------------------
    tag = ["assets"]

    @router.post("/asset-types", status_code=created, tags=tag, responses=error_docs({409: "token taken"}))
    async def create_asset_type(body: SiteTypeIn, who: Write) -> AssetTypeOut:
        return AssetTypeOut.of(await site.create(who.tenant, AssetType(**body.model_dump())))

    @router.get("/asset-types", tags=tag)
    async def list_asset_types(who: Read, paging: PageQuery, search: Search = None) -> PageOut[AssetTypeOut]:
        return page_of(
            AssetTypeOut,
            await site.find(who.tenant, "asset_type", paging.page, paging.page_size, search=search),
        )

    @router.get("/asset-types/{token}", tags=tag, responses=error_docs({404: "no such asset type"}))
    async def get_asset_type(token: str, who: Read) -> AssetTypeOut:
        return AssetTypeOut.of(await need(who.tenant, "asset_type", token))

    @router.put("/asset-types/{token}", tags=tag, responses=error_docs({404: "no such asset type"}))
    async def update_asset_type(token: RecordToken, body: SiteTypeChange, who: Write) -> AssetTypeOut:
        return AssetTypeOut.of(await site.update(who.tenant, AssetType(token=token, **body.model_dump())))

    @router.delete("/asset-types/{token}", tags=tag, responses=in_use)
    async def delete_asset_type(token: str, who: Write) -> Deleted:
        """409 while an asset has this type."""
        await site.delete(who.tenant, "asset_type", token)
        return Deleted(token=token)

    @router.post(
        "/assets",
        status_code=created,
        tags=tag,
        responses=error_docs({409: "token taken", 422: "invalid, or the asset type does not exist"}),
    )
    async def create_asset(body: AssetIn, who: Write) -> AssetOut:
        return AssetOut.of(await site.create(who.tenant, Asset(**body.model_dump())))

    @router.get("/assets", tags=tag)
    async def list_assets(
        who: Read,
        paging: PageQuery,
        asset_type: Annotated[
            str | None, Query(max_length=128, description="only assets of this type")
        ] = None,
        search: Search = None,
    ) -> PageOut[AssetOut]:
        ref: tuple[Kind, str] | None = ("asset_type", asset_type) if asset_type else None
        return page_of(
            AssetOut,
            await site.find(
                who.tenant, "asset", paging.page, paging.page_size, search=search, referencing=ref
            ),
        )

    @router.get("/assets/{token}", tags=tag, responses=error_docs({404: "no such asset"}))
    async def get_asset(token: str, who: Read) -> AssetOut:
        return AssetOut.of(await need(who.tenant, "asset", token))

    @router.put(
        "/assets/{token}",
        tags=tag,
        responses=error_docs({404: "no such asset", 422: "invalid, or the asset type does not exist"}),
    )
    async def update_asset(token: RecordToken, body: AssetChange, who: Write) -> AssetOut:
        return AssetOut.of(await site.update(who.tenant, Asset(token=token, **body.model_dump())))

    @router.delete("/assets/{token}", tags=tag, responses=error_docs({404: "no such asset"}))
    async def delete_asset(token: str, who: Write) -> Deleted:
        await site.delete(who.tenant, "asset", token)
        return Deleted(token=token)

    # device groups ------------------------------------------------------------------------------
    tag = ["device groups"]

    @router.post("/device-groups", status_code=created, tags=tag, responses=error_docs({409: "token taken"}))
    async def create_device_group(body: DeviceGroupIn, who: Write) -> DeviceGroupOut:
        return DeviceGroupOut.of(await site.create(who.tenant, DeviceGroup(**body.model_dump())))

    @router.get("/device-groups", tags=tag)
    async def list_device_groups(
        who: Read, paging: PageQuery, search: Search = None
    ) -> PageOut[DeviceGroupOut]:
        return page_of(
            DeviceGroupOut,
            await site.find(who.tenant, "device_group", paging.page, paging.page_size, search=search),
        )

    @router.get("/device-groups/{token}", tags=tag, responses=error_docs({404: "no such group"}))
    async def get_device_group(token: str, who: Read) -> DeviceGroupOut:
        return DeviceGroupOut.of(await need(who.tenant, "device_group", token))

    @router.put("/device-groups/{token}", tags=tag, responses=error_docs({404: "no such group"}))
    async def update_device_group(token: RecordToken, body: DeviceGroupChange, who: Write) -> DeviceGroupOut:
        return DeviceGroupOut.of(await site.update(who.tenant, DeviceGroup(token=token, **body.model_dump())))

    @router.delete("/device-groups/{token}", tags=tag, responses=in_use)
    async def delete_device_group(token: str, who: Write) -> Deleted:
        """409 while the group is an element of another group; its own elements go with it."""
        await site.delete(who.tenant, "device_group", token)
        return Deleted(token=token)

    @router.get("/device-groups/{token}/elements", tags=tag, responses=error_docs({404: "no such group"}))
    async def list_group_elements(token: str, who: Read, paging: PageQuery) -> PageOut[ElementOut]:
        """Groups first, then devices, by token (customer users: only their devices)."""
        p = await site.elements(who.tenant, token, 1, 100_000)
        shown = set(await visible(who, [e.token for e in p.items if e.kind == "device"]))
        items = [e for e in p.items if e.kind == "group" or e.token in shown]
        start = paging.offset
        return PageOut[ElementOut](
            items=[
                ElementOut(kind=e.kind, token=e.token, roles=list(e.roles))
                for e in items[start : start + paging.page_size]
            ],
            page=paging.page,
            page_size=paging.page_size,
            total=len(items),
        )

    @router.post(
        "/device-groups/{token}/elements",
        status_code=created,
        tags=tag,
        responses=error_docs(
            {
                404: "no such group",
                409: "the nested group contains this one (a cycle)",
                422: "invalid, or the device or nested group does not exist",
            }
        ),
    )
    async def add_group_element(token: str, body: ElementIn, who: Write) -> ElementOut:
        """Add a device or a nested group with its roles (an element already there gets the new roles)."""
        await need(who.tenant, "device_group", token)
        if body.kind == "device":
            await mgmt.check_devices(who.tenant, [body.token])
        el = await site.put_element(
            who.tenant, token, GroupElement(kind=body.kind, token=body.token, roles=tuple(body.roles))
        )
        return ElementOut(kind=el.kind, token=el.token, roles=list(el.roles))

    @router.delete(
        "/device-groups/{token}/elements/{element}",
        tags=tag,
        responses=error_docs({404: "no such group, or not an element of it"}),
    )
    async def remove_group_element(
        token: str,
        element: str,
        who: Write,
        kind: Annotated[Literal["device", "group"], Query(description="what the element is")] = "device",
    ) -> Deleted:
        await site.remove_element(who.tenant, token, kind, element)
        return Deleted(token=element)

    @router.get("/device-groups/{token}/devices", tags=tag, responses=error_docs({404: "no such group"}))
    async def list_group_devices(
        token: str,
        who: Read,
        recursive: Annotated[bool, Query(description="include the devices of nested groups")] = True,
    ) -> DeviceTokensOut:
        """The group's device tokens (nested groups resolved), sorted, without duplicates."""
        devices = await site.members(who.tenant, token, recursive=recursive)
        return DeviceTokensOut(group=token, recursive=recursive, devices=await visible(who, devices))

    return router
