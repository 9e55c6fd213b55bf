"""REST routes of the site model (docs/model.md): area types, areas, zones, asset types, assets
and device groups. Thin: the rules (references exist, nothing referenced is deleted, no cycles)
are in the site store. Reading needs ``read`` (site records are the tenant's structure, like
device types: customer users read them too, but see only their customer's devices in a
group); changing needs ``write``. Bodies are strict (unknown fields, wrong types → 422).

The six kinds share one set of routes (create, list, get, replace, delete: :func:`_crud`), each
kind described once in :data:`_KINDS` — its bodies, answer, tag, list filter and the errors
each route documents — so the paths, route names (operation ids) and OpenAPI document are what
one hand-written block per kind gave. The group element routes are the device groups' own.

No ``from __future__ import annotations`` here: FastAPI reads the route signatures at
definition time, and the per-app dependencies are closure locals.
"""

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Depends, Path, Query, status
from pydantic import BaseModel, Field, Strict, StrictFloat, field_validator

from fieldgate.cloud.api.rest.models import Metadata, PageOut, _In, error_docs, page_fields
from fieldgate.cloud.api.rest.paging import PageQuery, Paging
from fieldgate.cloud.services.access import Principal
from fieldgate.cloud.services.documents import iso
from fieldgate.cloud.services.management import TOKEN_PATTERN, Management
from fieldgate.cloud.services.site import SiteService
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


@dataclass(frozen=True)
class _ListFilter:
    """A list route's query parameter that keeps only the records referencing one record."""

    name: str  # the query parameter
    kind: Kind  # what it names
    description: str
    must_exist: bool  # a name that does not exist: 404 (else simply nothing is found)


@dataclass(frozen=True)
class _SiteKind:
    """How the REST API serves one kind of site record: its bodies, answer and tag, and the
    documented errors of each route (the OpenAPI document says them). Its routes are named after
    the kind (``create_area_type``, ``list_area_types``, ...) under ``/area-types``."""

    record: type[SiteRecord]
    body_in: type[_In]  # POST's body
    body_change: type[_In]  # PUT's body
    out: type[_Out]
    tag: str
    created: dict[int, str]  # POST's documented errors
    updated: dict[int, str] | None = None  # PUT's (default: 404 no such <label>)
    label: str = ""  # in "no such <label>" (default: the kind's name)
    referenced: bool = True  # may be referenced: DELETE answers 409 while it is
    create_doc: str | None = None
    update_doc: str | None = None
    delete_doc: str | None = None
    list_filter: _ListFilter | None = None
    # A kind whose records belong to a record of another (zones: to an area) is created under
    # that record's path (``/areas/{token}/zones``, naming it in the field ``owner[1]``) and
    # listed there too (route ``list_<owner[3]>``): (owner kind, field, path, list route).
    owner: tuple[Kind, str, str, str] | None = None

    @property
    def kind(self) -> Kind:
        return self.record.KIND

    @property
    def path(self) -> str:
        return "/" + self.kind.replace("_", "-") + "s"

    def no_such(self) -> str:
        return f"no such {self.label or self.kind.replace('_', ' ')}"


_KINDS: tuple[_SiteKind, ...] = (
    _SiteKind(
        AreaType,
        SiteTypeIn,
        SiteTypeChange,
        AreaTypeOut,
        tag="areas",
        created={409: "token taken"},
        delete_doc="409 while an area has this type.",
    ),
    _SiteKind(
        Area,
        AreaIn,
        AreaChange,
        AreaOut,
        tag="areas",
        created={409: "token taken", 422: "invalid, or the area type or parent does not exist"},
        updated={
            404: "no such area",
            409: "the new parent is below the area (a cycle)",
            422: "invalid, or the area type or parent does not exist",
        },
        update_doc="Replace type, parent, name, description and metadata (a parent below it: 422).",
        delete_doc="409 while a child area or a zone names it.",
        list_filter=_ListFilter("parent", "area", "only this area's children", must_exist=True),
    ),
    _SiteKind(
        Zone,
        ZoneIn,
        ZoneMove,
        ZoneOut,
        tag="zones",
        created={404: "no such area", 409: "token taken"},
        updated={404: "no such zone", 422: "invalid, or the area does not exist"},
        referenced=False,
        create_doc="A zone of the area: a polygon of at least 3 [lat, lon] points.",
        update_doc="Replace area, polygon, name, description and metadata.",
        owner=("area", "area", "/areas/{token}/zones", "area_zones"),
    ),
    _SiteKind(
        AssetType,
        SiteTypeIn,
        SiteTypeChange,
        AssetTypeOut,
        tag="assets",
        created={409: "token taken"},
        delete_doc="409 while an asset has this type.",
    ),
    _SiteKind(
        Asset,
        AssetIn,
        AssetChange,
        AssetOut,
        tag="assets",
        created={409: "token taken", 422: "invalid, or the asset type does not exist"},
        updated={404: "no such asset", 422: "invalid, or the asset type does not exist"},
        referenced=False,
        list_filter=_ListFilter("asset_type", "asset_type", "only assets of this type", must_exist=False),
    ),
    _SiteKind(
        DeviceGroup,
        DeviceGroupIn,
        DeviceGroupChange,
        DeviceGroupOut,
        tag="device groups",
        created={409: "token taken"},
        label="group",
        delete_doc="409 while the group is an element of another group; its own elements go with it.",
    ),
)


def _endpoint(
    call: Callable[..., Awaitable[Any]], params: list[inspect.Parameter], returns: Any
) -> Callable[..., Awaitable[Any]]:
    """``call`` (which takes its parameters by name) with the signature FastAPI reads: the
    parameters and answer a route of one kind declares."""
    call.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
    return call


def _param(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation, default=default
    )


def site_router(
    site: SiteStore,
    mgmt: Management,
    read: Callable[..., Awaitable[Principal]],
    write: Callable[..., Awaitable[Principal]],
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERRORS)
    service = SiteService(site, mgmt)
    reader: Any = Annotated[Principal, Depends(read)]
    writer: Any = Annotated[Principal, Depends(write)]
    for k in _KINDS:
        _crud(router, site, service, k, reader, writer)
    _group_elements(router, site, service, read, write)
    return router


def _crud(
    router: APIRouter, site: SiteStore, service: SiteService, k: _SiteKind, read: Any, write: Any
) -> None:
    """The five routes of kind ``k`` (create, list, get, replace, delete; a kind with an owner:
    created and listed under the owner's path too)."""
    one = f"{k.path}/{{token}}"
    tags: list[str | Enum] = [k.tag]
    out = k.out
    no_such = error_docs({404: k.no_such()})

    async def page(
        who: Principal, paging: Paging, search: str | None, ref: tuple[Kind, str] | None
    ) -> PageOut[Any]:
        p = await site.find(who.tenant, k.kind, paging.page, paging.page_size, search=search, referencing=ref)
        return PageOut[out](items=[out.of(r) for r in p.items], **page_fields(p))  # type: ignore[valid-type]

    async def create(**kw: Any) -> _Out:
        who: Principal = kw["who"]
        fields = kw["body"].model_dump()
        if k.owner is not None:
            owner_kind, field, _, _ = k.owner
            await service.get(who.tenant, owner_kind, kw["token"])  # the record the path names: 404
            fields = {field: kw["token"], **fields}
        return out.of(await site.create(who.tenant, k.record(**fields)))

    create_params = [_param("body", k.body_in), _param("who", write)]
    if k.owner is not None:
        create_params.insert(0, _param("token", str))
    router.add_api_route(
        k.path if k.owner is None else k.owner[2],
        _endpoint(create, create_params, out),
        methods=["POST"],
        name=f"create_{k.kind}",
        description=k.create_doc,
        status_code=status.HTTP_201_CREATED,
        tags=tags,
        responses=error_docs(k.created),
    )
    if k.owner is not None:
        owner_kind = k.owner[0]

        async def list_owned(**kw: Any) -> PageOut[Any]:
            who: Principal = kw["who"]
            await service.get(who.tenant, owner_kind, kw["token"])
            return await page(who, kw["paging"], kw["search"], (owner_kind, kw["token"]))

        params = [_param("token", str), _param("who", read), _param("paging", PageQuery)]
        params.append(_param("search", Search, None))
        router.add_api_route(
            k.owner[2],
            _endpoint(list_owned, params, PageOut[out]),  # type: ignore[valid-type]
            methods=["GET"],
            name=f"list_{k.owner[3]}",
            tags=tags,
            responses=error_docs({404: f"no such {owner_kind}"}),
        )

    async def list_all(**kw: Any) -> PageOut[Any]:
        who: Principal = kw["who"]
        ref: tuple[Kind, str] | None = None
        f = k.list_filter
        if f is not None and kw[f.name]:
            if f.must_exist:
                await service.get(who.tenant, f.kind, kw[f.name])
            ref = (f.kind, kw[f.name])
        return await page(who, kw["paging"], kw["search"], ref)

    params = [_param("who", read), _param("paging", PageQuery)]
    if k.list_filter is not None:
        query = Query(max_length=128, description=k.list_filter.description)
        params.append(_param(k.list_filter.name, Annotated[str | None, query], None))
    params.append(_param("search", Search, None))
    router.add_api_route(
        k.path,
        _endpoint(list_all, params, PageOut[out]),  # type: ignore[valid-type]
        methods=["GET"],
        name=f"list_{k.kind}s",
        tags=tags,
    )

    async def get(**kw: Any) -> _Out:
        return out.of(await service.get(kw["who"].tenant, k.kind, kw["token"]))

    router.add_api_route(
        one,
        _endpoint(get, [_param("token", str), _param("who", read)], out),
        methods=["GET"],
        name=f"get_{k.kind}",
        tags=tags,
        responses=no_such,
    )

    async def update(**kw: Any) -> _Out:
        fields = {"token": kw["token"], **kw["body"].model_dump()}
        return out.of(await site.update(kw["who"].tenant, k.record(**fields)))

    router.add_api_route(
        one,
        _endpoint(
            update, [_param("token", RecordToken), _param("body", k.body_change), _param("who", write)], out
        ),
        methods=["PUT"],
        name=f"update_{k.kind}",
        description=k.update_doc,
        tags=tags,
        responses=error_docs(k.updated) if k.updated is not None else no_such,
    )

    async def delete(**kw: Any) -> Deleted:
        await site.delete(kw["who"].tenant, k.kind, kw["token"])
        return Deleted(token=kw["token"])

    in_use = {404: "no such entity", 409: "still referenced (the detail says by what)"}
    router.add_api_route(
        one,
        _endpoint(delete, [_param("token", str), _param("who", write)], Deleted),
        methods=["DELETE"],
        name=f"delete_{k.kind}",
        description=k.delete_doc,
        tags=tags,
        responses=error_docs(in_use) if k.referenced else no_such,
    )


def _group_elements(
    router: APIRouter,
    site: SiteStore,
    service: SiteService,
    read: Callable[..., Awaitable[Principal]],
    write: Callable[..., Awaitable[Principal]],
) -> None:
    """The routes of a device group's elements and devices."""
    Read = Annotated[Principal, Depends(read)]
    Write = Annotated[Principal, Depends(write)]
    tag: list[str | Enum] = ["device groups"]

    @router.get("/device-groups/{token}/elements", tags=tag, responses=error_docs({404: "no such group"}))
    async def list_group_elements(token: str, who: Read, paging: PageQuery) -> PageOut[ElementOut]:
        """Groups first, then devices, by token (customer users: only their devices)."""
        p = await site.elements(who.tenant, token, 1, 100_000)
        devices = [e.token for e in p.items if e.kind == "device"]
        shown = set(await service.visible_devices(who.tenant, devices, who.scope_customer))
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
        status_code=status.HTTP_201_CREATED,
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
        el = await service.put_element(
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
        return DeviceTokensOut(
            group=token,
            recursive=recursive,
            devices=await service.visible_devices(who.tenant, devices, who.scope_customer),
        )
