"""The site model of a tenant: area types and areas (a tree), zones (polygons in an area), asset
types and assets, device groups (elements: devices or nested groups, each with roles).

Records are pydantic models stored as JSON documents (not protobuf): the REST API, the gRPC
``SiteManagement`` service (which carries the same JSON, cloud/api/grpc/site.py), the geofence rules,
batch operations and connector filters read them, and a JSON document per record keeps both
backends to one table of records plus one of references. Every record has a
token (unique per tenant and kind), a name, a description, metadata and its creation time.

References are explicit (:meth:`SiteRecord.refs`): an area names its area type and parent, a
zone its area, an asset its asset type, a group's element a nested group; from outside, an
active assignment holds its area and asset (:meth:`SiteStore.hold`). A store keeps a
reference count on every record and refuses (:class:`~fieldgate.cloud.errors.InUse`) to delete
one that is still referenced, naming who references it. On Cassandra the counts change by
compare-and-set and deletes are ``IF refs = 0``, so two replicas cannot delete a record while
the other makes a new reference to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from fieldgate.cloud.errors import Conflict, Cycle, InUse, InvalidRequest, NotFound, UnknownReference
from fieldgate.cloud.store import Page, TenantOwned
from fieldgate.timeutil import now_ms

TOKEN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_ZONE_POINTS = 500
MAX_ROLES = 32
#: Records of one kind a tenant may hold (lists and searches read a kind's tokens at once).
MAX_RECORDS = 100_000
#: Nesting depth followed when resolving a group's devices or checking for cycles.
MAX_DEPTH = 64

Kind = Literal["area_type", "area", "zone", "asset_type", "asset", "device_group"]
KINDS: tuple[Kind, ...] = ("area_type", "area", "zone", "asset_type", "asset", "device_group")
LABELS: dict[str, str] = {
    "area_type": "area type",
    "area": "area",
    "zone": "zone",
    "asset_type": "asset type",
    "asset": "asset",
    "device_group": "device group",
}

Token = Annotated[str, StringConstraints(pattern=TOKEN_PATTERN)]
#: A token or nothing (an optional reference).
OPT_TOKEN_PATTERN = r"^(|[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127})$"
OptToken = Annotated[str, StringConstraints(max_length=128, pattern=OPT_TOKEN_PATTERN)]
MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]
MetaValue = Annotated[str, StringConstraints(max_length=4096)]
Role = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Point = tuple[float, float]


class SiteRecord(BaseModel):
    """Fields every site record has."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    KIND: ClassVar[Kind]

    token: Token
    name: str = Field("", max_length=MAX_NAME)
    description: str = Field("", max_length=MAX_DESCRIPTION)
    metadata: dict[MetaKey, MetaValue] = Field(default_factory=dict, max_length=100)
    created_ms: int = 0

    def refs(self) -> list[tuple[Kind, str]]:
        """The records this one references (each must exist; each is kept from deletion)."""
        return []


class AreaType(SiteRecord):
    KIND: ClassVar[Kind] = "area_type"


class Area(SiteRecord):
    KIND: ClassVar[Kind] = "area"
    area_type: Token
    parent: OptToken = ""

    def refs(self) -> list[tuple[Kind, str]]:
        out: list[tuple[Kind, str]] = [("area_type", self.area_type)]
        if self.parent:
            out.append(("area", self.parent))
        return out


def check_polygon(value: Sequence[Point]) -> tuple[Point, ...]:
    """At least 3 distinct [lat, lon] points within range (not closed: the last joins the first)."""
    for i, (lat, lon) in enumerate(value):
        if not (math.isfinite(lat) and -90 <= lat <= 90):
            raise ValueError(f"point {i}: latitude {lat} is not within [-90, 90]")
        if not (math.isfinite(lon) and -180 <= lon <= 180):
            raise ValueError(f"point {i}: longitude {lon} is not within [-180, 180]")
    if len(set(value)) < 3:
        raise ValueError("a zone needs at least 3 distinct points")
    return tuple(value)


class Zone(SiteRecord):
    KIND: ClassVar[Kind] = "zone"
    area: Token
    polygon: tuple[Point, ...] = Field(min_length=3, max_length=MAX_ZONE_POINTS)

    _points = field_validator("polygon")(check_polygon)

    def refs(self) -> list[tuple[Kind, str]]:
        return [("area", self.area)]


class AssetType(SiteRecord):
    KIND: ClassVar[Kind] = "asset_type"


class Asset(SiteRecord):
    KIND: ClassVar[Kind] = "asset"
    asset_type: Token

    def refs(self) -> list[tuple[Kind, str]]:
        return [("asset_type", self.asset_type)]


class DeviceGroup(SiteRecord):
    KIND: ClassVar[Kind] = "device_group"
    roles: tuple[Role, ...] = Field((), max_length=MAX_ROLES)


class GroupElement(BaseModel):
    """One element of a device group: a device or a nested group, with its roles in the group."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["device", "group"]
    token: Token
    roles: tuple[Role, ...] = Field((), max_length=MAX_ROLES)


RECORD_TYPES: dict[Kind, type[SiteRecord]] = {
    "area_type": AreaType,
    "area": Area,
    "zone": Zone,
    "asset_type": AssetType,
    "asset": Asset,
    "device_group": DeviceGroup,
}


def describe(kind: str, token: str) -> str:
    return f"{LABELS.get(kind, kind)} '{token[:140]}'"


def matches(record: SiteRecord, search: str | None) -> bool:
    """``search`` is a prefix of the token, or (case-insensitively) of the name."""
    if not search:
        return True
    return record.token.startswith(search) or record.name.lower().startswith(search.lower())


class SiteStore(TenantOwned, Protocol):
    """Site records per tenant (see the module docstring). Errors: NotFound (an unknown record),
    UnknownReference (a referenced one that does not exist), Conflict (a taken token), InUse (a
    delete of a referenced record; the message names the referrers), Cycle (a Conflict: a cycle)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def create(self, tenant: str, record: SiteRecord) -> SiteRecord:
        """Store a new record (``created_ms`` set now); its references must exist."""

    async def get(self, tenant: str, kind: Kind, token: str) -> SiteRecord | None: ...

    async def find(
        self,
        tenant: str,
        kind: Kind,
        page: int,
        page_size: int,
        *,
        search: str | None = None,
        referencing: tuple[Kind, str] | None = None,
    ) -> Page[SiteRecord]:
        """Records of ``kind`` in token order; ``search``: token or name prefix;
        ``referencing``: only those that reference that record (an area's zones, children)."""

    async def update(self, tenant: str, record: SiteRecord) -> SiteRecord:
        """Replace a record (``created_ms`` kept); NotFound if absent, UnknownReference if a new
        reference is unknown; InvalidRequest when an area's new parent is the area or below it."""

    async def delete(self, tenant: str, kind: Kind, token: str) -> None:
        """NotFound if absent; InUse while referenced. A group's own elements go with it."""

    async def put_element(self, tenant: str, group: str, element: GroupElement) -> GroupElement:
        """Add an element to ``group`` (NotFound if absent) or replace its roles; a nested group
        must exist (UnknownReference) and must not contain ``group`` (Cycle)."""

    async def remove_element(self, tenant: str, group: str, kind: str, token: str) -> None:
        """NotFound if the group or the element is absent."""

    async def elements(self, tenant: str, group: str, page: int, page_size: int) -> Page[GroupElement]:
        """The group's elements, groups first then devices, by token."""

    async def members(self, tenant: str, group: str, *, recursive: bool = True) -> list[str]:
        """The device tokens of ``group`` (and with ``recursive``, of its nested groups), sorted
        and without duplicates. NotFound for an unknown group."""

    async def hold(self, tenant: str, holder: tuple[str, str], refs: Sequence[tuple[Kind, str]]) -> None:
        """Count references from something outside the site model (``holder``, e.g.
        ``("assignment", token)``) on ``refs``, which then cannot be deleted (InUse naming the
        holder) until :meth:`let_go`. UnknownReference naming the first that does not exist
        (then none is held)."""

    async def let_go(self, tenant: str, holder: tuple[str, str], refs: Sequence[tuple[Kind, str]]) -> None:
        """Give back what :meth:`hold` counted; a reference the holder does not hold (given
        back already, by another replica too) is not counted twice."""

    async def ensure_tenant(self, tenant: str) -> None:
        """Provision the tenant's site storage now."""

    async def delete_tenant(self, tenant: str) -> bool:
        """Remove every site record of the tenant; False if there was none."""

    def forget_tenant(self, tenant: str) -> None: ...


DeleteOutcome = Literal["deleted", "missing", "referenced"]


class SiteStoreBase:
    """The rules of :class:`SiteStore` over a backend's primitives (one record row per kind and
    token with a reference count; a table of who references whom; a group's element rows).

    Order of the steps: a new reference is counted on its target *before* the referrer is
    stored (a failed store gives the count back), and a target is deleted only ``IF`` its
    count is 0 — so a delete racing a create on another replica either sees the count or the
    create finds the target gone.
    """

    # --- primitives (backends) -----------------------------------------------------------------

    async def _insert(self, tenant: str, kind: Kind, token: str, data: str) -> bool:
        """Store a new row (count 0); False if the token is taken."""
        raise NotImplementedError

    async def _read(self, tenant: str, kind: Kind, token: str) -> str | None:
        raise NotImplementedError

    async def _all(self, tenant: str, kind: Kind) -> list[str]:
        """Every record's data of ``kind``, by token."""
        raise NotImplementedError

    async def _replace(self, tenant: str, kind: Kind, token: str, data: str) -> bool:
        """Replace the data of an existing row (count kept); False if absent."""
        raise NotImplementedError

    async def _incref(self, tenant: str, kind: Kind, token: str, src: tuple[str, str]) -> bool:
        """Count one more reference (from ``src``) on a row; False if the row is absent."""
        raise NotImplementedError

    async def _decref(self, tenant: str, kind: Kind, token: str, src: tuple[str, str]) -> None:
        raise NotImplementedError

    async def _drop_ref(self, tenant: str, kind: Kind, token: str, src: tuple[str, str]) -> None:
        """Like :meth:`_decref`, but only if ``src``'s reference row exists (deleted first,
        conditionally): two callers giving back the same reference count it back once."""
        raise NotImplementedError

    async def _delete_row(self, tenant: str, kind: Kind, token: str) -> DeleteOutcome:
        """Delete the row if its count is 0."""
        raise NotImplementedError

    async def _referrers(self, tenant: str, kind: Kind, token: str, limit: int) -> list[tuple[str, str]]:
        raise NotImplementedError

    async def _put_element_row(self, tenant: str, group: str, element: GroupElement) -> bool:
        """Insert or replace an element row; True if it was new."""
        raise NotImplementedError

    async def _delete_element_row(self, tenant: str, group: str, kind: str, token: str) -> bool:
        raise NotImplementedError

    async def _element_rows(self, tenant: str, group: str) -> list[GroupElement]:
        """The group's elements, groups first then devices, by token."""
        raise NotImplementedError

    # --- the rules -----------------------------------------------------------------------------

    @staticmethod
    def _parse(kind: Kind, data: str) -> SiteRecord:
        return RECORD_TYPES[kind].model_validate_json(data)

    async def get(self, tenant: str, kind: Kind, token: str) -> SiteRecord | None:
        data = await self._read(tenant, kind, token)
        return None if data is None else self._parse(kind, data)

    async def _need(self, tenant: str, kind: Kind, token: str) -> SiteRecord:
        record = await self.get(tenant, kind, token)
        if record is None:
            raise NotFound(f"{describe(kind, token)} does not exist")
        return record

    async def _take_refs(self, tenant: str, record: SiteRecord, refs: Sequence[tuple[Kind, str]]) -> None:
        taken: list[tuple[Kind, str]] = []
        src = (record.KIND, record.token)
        for kind, token in refs:
            if not await self._incref(tenant, kind, token, src):
                for k, t in taken:
                    await self._decref(tenant, k, t, src)
                raise UnknownReference(LABELS[kind], token, f"named by {describe(*src)}")
            taken.append((kind, token))

    async def _give_refs(self, tenant: str, record: SiteRecord, refs: Sequence[tuple[Kind, str]]) -> None:
        for kind, token in refs:
            await self._decref(tenant, kind, token, (record.KIND, record.token))

    async def hold(self, tenant: str, holder: tuple[str, str], refs: Sequence[tuple[Kind, str]]) -> None:
        taken: list[tuple[Kind, str]] = []
        for kind, token in refs:
            if not await self._incref(tenant, kind, token, holder):
                for k, t in taken:
                    await self._drop_ref(tenant, k, t, holder)
                raise UnknownReference(LABELS[kind], token)
            taken.append((kind, token))

    async def let_go(self, tenant: str, holder: tuple[str, str], refs: Sequence[tuple[Kind, str]]) -> None:
        for kind, token in refs:
            await self._drop_ref(tenant, kind, token, holder)

    async def _check_area_parent(self, tenant: str, area: Area) -> None:
        """The new parent must not be the area itself or below it."""
        seen = {area.token}
        parent, depth = area.parent, 0
        while parent:
            if parent in seen:
                raise Cycle(f"area '{area.token}' cannot have parent '{area.parent}': that makes a cycle")
            seen.add(parent)
            rec = await self.get(tenant, "area", parent)
            if rec is None or not isinstance(rec, Area):
                return  # the reference check reports it
            parent, depth = rec.parent, depth + 1
            if depth > MAX_DEPTH:
                raise InvalidRequest(f"areas may be nested at most {MAX_DEPTH} deep")

    async def create(self, tenant: str, record: SiteRecord) -> SiteRecord:
        record = record.model_copy(update={"created_ms": now_ms()})
        if isinstance(record, Area) and record.parent == record.token:
            raise Cycle(f"area '{record.token}' cannot be its own parent")
        if await self._read(tenant, record.KIND, record.token) is not None:
            raise Conflict(f"{describe(record.KIND, record.token)} already exists")
        refs = record.refs()
        await self._take_refs(tenant, record, refs)
        if not await self._insert(tenant, record.KIND, record.token, record.model_dump_json()):
            await self._give_refs(tenant, record, refs)
            raise Conflict(f"{describe(record.KIND, record.token)} already exists")
        return record

    async def find(
        self,
        tenant: str,
        kind: Kind,
        page: int,
        page_size: int,
        *,
        search: str | None = None,
        referencing: tuple[Kind, str] | None = None,
    ) -> Page[SiteRecord]:
        if page < 1 or not 1 <= page_size <= 10_000:
            raise InvalidRequest("page must be >= 1 and page_size between 1 and 10000")
        records = [self._parse(kind, d) for d in await self._all(tenant, kind)]
        chosen = [
            r for r in records if matches(r, search) and (referencing is None or referencing in r.refs())
        ]
        start = (page - 1) * page_size
        return Page(chosen[start : start + page_size], len(chosen), page, page_size)

    async def update(self, tenant: str, record: SiteRecord) -> SiteRecord:
        old = await self._need(tenant, record.KIND, record.token)
        record = record.model_copy(update={"created_ms": old.created_ms})
        if isinstance(record, Area):
            await self._check_area_parent(tenant, record)
        added = [r for r in record.refs() if r not in old.refs()]
        dropped = [r for r in old.refs() if r not in record.refs()]
        await self._take_refs(tenant, record, added)
        if not await self._replace(tenant, record.KIND, record.token, record.model_dump_json()):
            await self._give_refs(tenant, record, added)
            raise NotFound(f"{describe(record.KIND, record.token)} does not exist")
        await self._give_refs(tenant, old, dropped)
        return record

    async def delete(self, tenant: str, kind: Kind, token: str) -> None:
        record = await self._need(tenant, kind, token)
        outcome = await self._delete_row(tenant, kind, token)
        if outcome == "missing":
            raise NotFound(f"{describe(kind, token)} does not exist")
        if outcome == "referenced":
            who = await self._referrers(tenant, kind, token, 6)
            names = ", ".join(describe(k, t) for k, t in who[:5]) + (", ..." if len(who) > 5 else "")
            raise InUse(f"{describe(kind, token)} is still referenced by {names or 'another record'}")
        await self._give_refs(tenant, record, record.refs())
        if kind == "device_group":
            for el in await self._element_rows(tenant, token):
                if await self._delete_element_row(tenant, token, el.kind, el.token) and el.kind == "group":
                    await self._decref(tenant, "device_group", el.token, ("device_group", token))

    # --- device groups -------------------------------------------------------------------------

    async def _contains_group(self, tenant: str, outer: str, wanted: str) -> bool:
        """Whether ``wanted`` is ``outer`` or nested (at any depth) in it."""
        todo, seen = [outer], set()
        while todo:
            g = todo.pop()
            if g == wanted:
                return True
            if g in seen:
                continue
            seen.add(g)
            todo.extend(e.token for e in await self._element_rows(tenant, g) if e.kind == "group")
        return False

    async def put_element(self, tenant: str, group: str, element: GroupElement) -> GroupElement:
        await self._need(tenant, "device_group", group)
        src = ("device_group", group)
        nested = element.kind == "group"
        if nested and await self._contains_group(tenant, element.token, group):
            raise Cycle(
                f"device group '{element.token}' cannot be an element of '{group}': that makes a cycle"
            )
        present = any(
            (e.kind, e.token) == (element.kind, element.token)
            for e in await self._element_rows(tenant, group)
        )
        if present:  # only its roles change; the reference is counted already
            await self._put_element_row(tenant, group, element)
            return element
        if nested and not await self._incref(tenant, "device_group", element.token, src):
            raise UnknownReference("device group", element.token)
        new = await self._put_element_row(tenant, group, element)
        if nested and not new:  # another replica added it meanwhile: count it once
            await self._decref(tenant, "device_group", element.token, src)
        return element

    async def remove_element(self, tenant: str, group: str, kind: str, token: str) -> None:
        await self._need(tenant, "device_group", group)
        if not await self._delete_element_row(tenant, group, kind, token):
            raise NotFound(f"{kind} '{token[:140]}' is not an element of device group '{group}'")
        if kind == "group":
            await self._decref(tenant, "device_group", token, ("device_group", group))

    async def elements(self, tenant: str, group: str, page: int, page_size: int) -> Page[GroupElement]:
        await self._need(tenant, "device_group", group)
        rows = await self._element_rows(tenant, group)
        start = (page - 1) * page_size
        return Page(rows[start : start + page_size], len(rows), page, page_size)

    async def members(self, tenant: str, group: str, *, recursive: bool = True) -> list[str]:
        await self._need(tenant, "device_group", group)
        devices: set[str] = set()
        todo, seen = [(group, 0)], set()
        while todo:
            g, depth = todo.pop()
            if g in seen or depth > MAX_DEPTH:
                continue
            seen.add(g)
            for el in await self._element_rows(tenant, g):
                if el.kind == "device":
                    devices.add(el.token)
                elif recursive:
                    todo.append((el.token, depth + 1))
        return sorted(devices)
