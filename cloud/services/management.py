"""Device management and event queries as plain async methods, shared by REST and gRPC.

The REST routes (``fieldgate.cloud.api.rest.routes``) and the gRPC servicers
(``fieldgate.cloud.api.grpc``) are thin adapters over :class:`Management`: the rules (a device's type must exist, tokens are
unique, a device has at most one active assignment, nothing is deleted while something refers
to it, page limits, event kinds) live here once, so both APIs refuse the same things with the
same messages. A request that names another entity which does not exist (a device's type, an
assignment's device, customer, area or asset) is refused with
:class:`~fieldgate.cloud.errors.UnknownReference` naming it (REST 422, gRPC INVALID_ARGUMENT). Every method takes the caller's tenant
first and passes it to the stores, which keep tenants in separate databases; nothing here can
reach across tenants. This module imports no web or RPC framework.

The read methods also take ``customer``: for a customer user (cloud/services/access.py) only that
customer's things exist. A device is the customer's while its active assignment names the
customer; an assignment is the customer's when it names the customer; the customer sees a
device's events of its active assignment only (not those recorded for an earlier customer) and
an invocation while its device is the customer's. Everything else is NotFound, exactly as for a
token that does not exist, so a customer cannot even learn what other customers' things are
called. Customer lists are filtered here (a scan of the tenant's assignments per request: fine
for the few devices a customer has, not a query to page through a million).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, TypeVar

from fieldgate.cloud.errors import Conflict, InUse, InvalidRequest, NotFound, StoreError, UnknownReference
from fieldgate.cloud.store import Page
from fieldgate.cloud.store.events import AssignmentEventQuery, EventQuery, EventStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.store.site import Kind, SiteStore
from fieldgate.cloud.store.state import DeviceState, DeviceStateStore, Presence
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model

if TYPE_CHECKING:
    from fieldgate.cloud.services.rules import RuleService

# Tokens end up in MQTT topic levels and URL paths: no '/', '+', '#' or whitespace.
TOKEN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
_TOKEN_RE = re.compile(TOKEN_PATTERN)
_NAME_RE = re.compile(NAME_PATTERN)

T = TypeVar("T")

MAX_PAGE = 1_000_000_000  # keeps (page - 1) * page_size inside SQLite's 64-bit integers
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
# Epoch ms of 9999-12-31T23:59:59.999Z: the last instant an ISO 8601 timestamp can name.
MAX_TIME_MS = 253_402_300_799_999

# pb.Event payload field names; also the ``type`` values of the REST API.
EVENT_KINDS = ("measurement", "location", "alert", "command_invocation", "command_response", "state_change")


def check_token(what: str, token: str) -> None:
    if not _TOKEN_RE.fullmatch(token):
        raise InvalidRequest(
            f"{what} token {token[:140]!r} is invalid: 1-128 characters, letters, digits and _.:@- "
            "starting with a letter or digit"
        )


def check_page(page: int, page_size: int) -> None:
    if not 1 <= page <= MAX_PAGE:
        raise InvalidRequest(f"page must be between 1 and {MAX_PAGE}, got {page}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")


def check_time_range(since_ms: int | None, until_ms: int | None) -> None:
    for name, value in (("since", since_ms), ("until", until_ms)):
        if value is not None and not 0 <= value <= MAX_TIME_MS:
            raise InvalidRequest(f"{name} must be between 0 and {MAX_TIME_MS} epoch milliseconds")


def check_device_type(dt: model.DeviceType) -> None:
    """Structural rules the protobuf types cannot express (names, uniqueness, param types)."""
    check_token("device type", dt.token)
    seen_commands: set[str] = set()
    for cmd in dt.commands:
        if not _NAME_RE.fullmatch(cmd.name):
            raise InvalidRequest(f"command name {cmd.name[:70]!r} is invalid (letters, digits, _.- ; max 64)")
        if cmd.name in seen_commands:
            raise InvalidRequest(f"command '{cmd.name}' is defined twice")
        seen_commands.add(cmd.name)
        seen_params: set[str] = set()
        for param in cmd.params:
            if not _NAME_RE.fullmatch(param.name):
                raise InvalidRequest(
                    f"parameter name {param.name[:70]!r} of command '{cmd.name}' is invalid "
                    "(letters, digits, _.- ; max 64)"
                )
            if param.name in seen_params:
                raise InvalidRequest(f"parameter '{param.name}' of command '{cmd.name}' is defined twice")
            seen_params.add(param.name)
            if param.type not in (
                model.PARAM_TYPE_STRING,
                model.PARAM_TYPE_INT,
                model.PARAM_TYPE_FLOAT,
                model.PARAM_TYPE_BOOL,
            ):
                raise InvalidRequest(
                    f"parameter '{param.name}' of command '{cmd.name}' needs a type: "
                    "string, int, float or bool"
                )


def _check_metadata(metadata: Mapping[str, str]) -> None:
    if len(metadata) > 100:
        raise InvalidRequest("metadata may hold at most 100 entries")
    for key, value in metadata.items():
        if not key or len(key) > 128 or len(value) > 4096:
            raise InvalidRequest("metadata keys must be 1-128 characters and values at most 4096")


class Management:
    """Registry and event-store operations for one caller's tenant (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        event_store: EventStore,
        site: SiteStore | None = None,
        *,
        states: DeviceStateStore | None = None,
        rules: RuleService | None = None,
    ) -> None:
        self._registry = registry
        self._events = event_store
        # Areas and assets an assignment names must exist there, and are held (kept from
        # deletion) while the assignment is active; a device in a device group is not deleted.
        # Without it they are not checked.
        self._site = site
        # A deleted device's state goes with it; a deleted device type's presence interval too.
        self._states = states
        self._rules = rules

    # device types -----------------------------------------------------------------------------

    async def create_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType:
        check_device_type(dt)
        if await self._registry.get_device_type(tenant, dt.token) is not None:
            raise Conflict(f"device type '{dt.token}' already exists")
        return await self._registry.create_device_type(tenant, dt)

    async def get_device_type(self, tenant: str, token: str) -> model.DeviceType:
        dt = await self._registry.get_device_type(tenant, token)
        if dt is None:
            raise NotFound(f"device type '{token}' does not exist")
        return dt

    async def list_device_types(self, tenant: str, page: int, page_size: int) -> Page[model.DeviceType]:
        check_page(page, page_size)
        return await self._registry.list_device_types(tenant, page, page_size)

    async def update_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType:
        """Replace a type's name, description and commands (its token stays). Devices of the
        type accept the new commands from the next invocation; invocations already made keep
        theirs."""
        check_device_type(dt)
        return await self._registry.update_device_type(tenant, dt)

    async def delete_device_type(self, tenant: str, token: str) -> None:
        """Refused (InUse) while a device has the type, and for the tenant's default type (the
        type auto-registration gives new devices). Its presence interval goes with it."""
        await self.get_device_type(tenant, token)
        record = await self._registry.get_tenant(tenant)
        if record is not None and record.default_device_type == token:
            raise InUse(
                f"device type '{token}' is the tenant's default device type (given to devices that "
                "register themselves); change the tenant's default_device_type first"
            )
        await self._registry.delete_device_type(tenant, token)
        if self._rules is not None:
            await self._rules.forget_device_type(tenant, token)

    async def check_devices(self, tenant: str, tokens: Iterable[str]) -> None:
        """UnknownReference for the first of ``tokens`` that is not a device of the tenant."""
        for token in tokens:
            if await self._registry.get_device(tenant, token) is None:
                raise UnknownReference("device", token, "create it with POST /api/v1/devices")

    async def check_device_types(self, tenant: str, tokens: Iterable[str]) -> None:
        """UnknownReference for the first of ``tokens`` that is not a device type of the tenant."""
        for token in tokens:
            if await self._registry.get_device_type(tenant, token) is None:
                raise UnknownReference("device type", token, "create it with POST /api/v1/device-types")

    # devices ----------------------------------------------------------------------------------

    async def create_device(self, tenant: str, device: model.Device) -> model.Device:
        check_token("device", device.token)
        _check_metadata(device.metadata)
        if not device.device_type:
            raise InvalidRequest("device_type is required")
        await self.check_device_types(tenant, [device.device_type])
        if await self._registry.get_device(tenant, device.token) is not None:
            raise Conflict(f"device '{device.token}' already exists")
        new = model.Device()
        new.CopyFrom(device)
        new.tenant = tenant
        new.created_ms = now_ms()
        try:
            return await self._registry.create_device(new)
        except NotFound as err:  # the type was deleted since the check
            raise UnknownReference("device type", device.device_type) from err

    async def update_device(self, tenant: str, device: model.Device) -> model.Device:
        """Replace a device's type, comments and metadata (its token stays). The new type must
        exist (UnknownReference)."""
        check_token("device", device.token)
        _check_metadata(device.metadata)
        if not device.device_type:
            raise InvalidRequest("device_type is required")
        await self.get_device(tenant, device.token)
        await self.check_device_types(tenant, [device.device_type])
        new = model.Device()
        new.CopyFrom(device)
        new.tenant = tenant
        try:
            return await self._registry.update_device(new)
        except NotFound as err:
            if await self._registry.get_device(tenant, device.token) is None:
                raise NotFound(f"device '{device.token}' does not exist") from err
            raise UnknownReference("device type", device.device_type) from err

    async def delete_device(self, tenant: str, token: str) -> None:
        """Refused (InUse) while the device has an active assignment or is an element of a
        device group. Its events and invocations stay (history, under its token); its state
        goes. The token is free again: a device registered under it later continues that
        history (docs/model.md)."""
        await self.get_device(tenant, token)
        if self._site is not None:
            group = await self._group_of(tenant, token)
            if group is not None:
                raise InUse(
                    f"device '{token}' is an element of device group '{group}'; remove it first "
                    f"(DELETE /api/v1/device-groups/{group}/elements/{token})"
                )
        await self._registry.delete_device(tenant, token)
        if self._states is not None:
            await self._states.delete_state(tenant, token)

    async def _group_of(self, tenant: str, device: str) -> str | None:
        """A device group that has ``device`` as a direct element, or None."""
        assert self._site is not None
        page = 1
        while True:
            p = await self._site.find(tenant, "device_group", page, MAX_PAGE_SIZE)
            for group in p.items:
                elements = await self._site.elements(tenant, group.token, 1, 10_000)
                if any(e.kind == "device" and e.token == device for e in elements.items):
                    return group.token
            if page * MAX_PAGE_SIZE >= p.total:
                return None
            page += 1

    async def get_device(self, tenant: str, token: str, *, customer: str | None = None) -> model.Device:
        device = await self._registry.get_device(tenant, token)
        if device is None or (customer is not None and not await self._is_customers(tenant, token, customer)):
            raise NotFound(f"device '{token}' does not exist")
        return device

    async def list_devices(
        self, tenant: str, page: int, page_size: int, *, customer: str | None = None
    ) -> Page[model.Device]:
        check_page(page, page_size)
        if customer is None:
            return await self._registry.list_devices(tenant, page, page_size)
        candidates = {a.device for a in await self._customer_assignments(tenant, customer) if _unreleased(a)}
        tokens = [t for t in sorted(candidates) if await self._is_customers(tenant, t, customer)]
        items = []
        for token in _slice(tokens, page, page_size):
            device = await self._registry.get_device(tenant, token)
            if device is not None:
                items.append(device)
        return Page(items=items, total=len(tokens), page=page, page_size=page_size)

    async def _is_customers(self, tenant: str, device: str, customer: str) -> bool:
        active = await self._registry.active_assignment(tenant, device)
        return active is not None and active.customer == customer

    async def _customer_assignments(self, tenant: str, customer: str) -> list[model.Assignment]:
        """Every assignment of the tenant that names ``customer``."""
        found: list[model.Assignment] = []
        page = 1
        while True:
            p = await self._registry.list_assignments(tenant, None, page, MAX_PAGE_SIZE)
            found.extend(a for a in p.items if a.customer == customer)
            if not p.items or page * MAX_PAGE_SIZE >= p.total:
                return found
            page += 1

    async def visible_device(self, tenant: str, device: str, customer: str | None) -> None:
        """NotFound unless a caller scoped to ``customer`` may see ``device`` (e.g. an
        invocation of it); nothing to check for a caller that sees the whole tenant."""
        if customer is not None:
            await self.get_device(tenant, device, customer=customer)

    # device state ---------------------------------------------------------------------------

    def _state_store(self) -> DeviceStateStore:
        if self._states is None:
            raise StoreError("this process keeps no device state (Management built without states)")
        return self._states

    async def device_state(self, tenant: str, token: str, *, customer: str | None = None) -> DeviceState:
        """The device's last-known state (cloud/pipeline/state.py keeps it); NotFound for a
        device the caller cannot see, or one no event of which reached the state stage yet."""
        await self.get_device(tenant, token, customer=customer)
        found = (await self._state_store().get_states(tenant, [token])).get(token)
        if found is None:
            raise NotFound(f"device {token!r} has no state yet (no event of it reached the state stage)")
        return found

    async def list_device_states(
        self, tenant: str, presence: Presence | None, page: int, page_size: int
    ) -> Page[DeviceState]:
        """The tenant's device states in device token order, of one presence or all (tenant-wide:
        the transports refuse it to customer users)."""
        check_page(page, page_size)
        return await self._state_store().list_states(
            tenant, presence=presence, page=page, page_size=page_size
        )

    # assignments ------------------------------------------------------------------------------

    async def create_assignment(self, tenant: str, assignment: model.Assignment) -> model.Assignment:
        _check_metadata(assignment.metadata)
        if not assignment.device:
            raise InvalidRequest("device is required")
        if await self._registry.get_device(tenant, assignment.device) is None:
            raise UnknownReference("device", assignment.device, "create it with POST /api/v1/devices")
        if assignment.customer and await self._registry.get_customer(tenant, assignment.customer) is None:
            raise UnknownReference("customer", assignment.customer, "create it with POST /api/v1/customers")
        site_refs = _site_refs(assignment)
        if self._site is not None:
            for kind, token in site_refs:
                if await self._site.get(tenant, kind, token) is None:
                    route = "areas" if kind == "area" else "assets"
                    raise UnknownReference(kind, token, f"create it with POST /api/v1/{route}")
        active = await self._registry.active_assignment(tenant, assignment.device)
        if active is not None:
            raise Conflict(
                f"device '{assignment.device}' already has active assignment '{active.token}'; "
                "release it first"
            )
        new = model.Assignment()
        new.CopyFrom(assignment)
        new.token = uuid.uuid4().hex
        new.tenant = tenant
        new.status = model.ASSIGNMENT_STATUS_ACTIVE
        new.active_ms = now_ms()
        new.released_ms = 0
        if self._site is None or not site_refs:
            return await self._create_assignment(new)
        # Held before the assignment is stored (as the site store orders its own references):
        # a delete racing this create either sees the hold or makes the hold fail.
        holder = ("assignment", new.token)
        try:
            await self._site.hold(tenant, holder, site_refs)
        except NotFound as err:  # deleted since the check above
            gone = [ref for ref in site_refs if await self._site.get(tenant, *ref) is None] or site_refs
            raise UnknownReference(*gone[0]) from err
        try:
            return await self._create_assignment(new)
        except BaseException:
            await self._site.let_go(tenant, holder, site_refs)
            raise

    async def _create_assignment(self, new: model.Assignment) -> model.Assignment:
        try:
            return await self._registry.create_assignment(new)
        except NotFound as err:  # the device was deleted since the check
            raise UnknownReference("device", new.device) from err

    async def list_assignments(
        self,
        tenant: str,
        device: str | None,
        page: int,
        page_size: int,
        *,
        customer: str | None = None,
        of_customer: str | None = None,
    ) -> Page[model.Assignment]:
        """Newest first; ``device`` / ``of_customer``: only those of that device / naming that
        customer (NotFound for a customer that does not exist). ``customer``: the caller's
        scope (a customer user sees the assignments that name its customer only)."""
        check_page(page, page_size)
        if of_customer:
            if (customer is not None and of_customer != customer) or await self._registry.get_customer(
                tenant, of_customer
            ) is None:
                raise NotFound(f"customer '{of_customer[:140]}' does not exist")
            customer = of_customer
        if customer is None:
            return await self._registry.list_assignments(tenant, device or None, page, page_size)
        mine = [
            a for a in await self._customer_assignments(tenant, customer) if not device or a.device == device
        ]
        mine.sort(key=lambda a: (-a.active_ms, a.token))
        return Page(items=_slice(mine, page, page_size), total=len(mine), page=page, page_size=page_size)

    async def device_assignments(
        self, tenant: str, device: str, page: int, page_size: int, *, customer: str | None = None
    ) -> Page[model.Assignment]:
        await self.get_device(tenant, device, customer=customer)
        return await self.list_assignments(tenant, device, page, page_size, customer=customer)

    async def get_assignment(
        self, tenant: str, token: str, *, customer: str | None = None
    ) -> model.Assignment:
        assignment = await self._registry.get_assignment(tenant, token)
        if assignment is None or (customer is not None and assignment.customer != customer):
            raise NotFound(f"assignment '{token[:140]}' does not exist")
        return assignment

    async def release_assignment(self, tenant: str, token: str) -> model.Assignment:
        # The registry raises NotFound for an unknown token (mapped to 404 / NOT_FOUND).
        released = await self._registry.release_assignment(tenant, token)
        site_refs = _site_refs(released)
        if self._site is not None and site_refs:
            # Idempotent (a second release, or one on another replica, gives nothing back twice).
            await self._site.let_go(tenant, ("assignment", released.token), site_refs)
        return released

    # events -----------------------------------------------------------------------------------

    async def list_events(
        self,
        tenant: str,
        device: str,
        *,
        kind: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        page: int = 1,
        page_size: int = DEFAULT_PAGE_SIZE,
        customer: str | None = None,
    ) -> Page[pb.Event]:
        """A device's events, newest first. Unknown device → NotFound (never an empty page, so
        a typo is not mistaken for a silent device). A customer gets the events of the device's
        active assignment (its own), not those of the device's earlier customers."""
        _check_event_filters(kind, since_ms, until_ms, page, page_size)
        await self.get_device(tenant, device, customer=customer)
        if customer is not None:
            active = await self._registry.active_assignment(tenant, device)
            if active is None:  # released meanwhile
                raise NotFound(f"device '{device}' does not exist")
            return await self.list_assignment_events(
                tenant,
                active.token,
                kind=kind,
                since_ms=since_ms,
                until_ms=until_ms,
                page=page,
                page_size=page_size,
                customer=customer,
            )
        return await self._events.list_device_events(
            EventQuery(
                tenant=tenant,
                device=device,
                kind=kind,
                since_ms=since_ms,
                until_ms=until_ms,
                page=page,
                page_size=page_size,
            )
        )

    async def list_assignment_events(
        self,
        tenant: str,
        assignment: str,
        *,
        kind: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        page: int = 1,
        page_size: int = DEFAULT_PAGE_SIZE,
        customer: str | None = None,
    ) -> Page[pb.Event]:
        """The events stamped with ``assignment``, newest first. Unknown assignment → NotFound."""
        _check_event_filters(kind, since_ms, until_ms, page, page_size)
        await self.get_assignment(tenant, assignment, customer=customer)
        return await self._events.list_assignment_events(
            AssignmentEventQuery(
                tenant=tenant,
                assignment=assignment,
                kind=kind,
                since_ms=since_ms,
                until_ms=until_ms,
                page=page,
                page_size=page_size,
            )
        )

    async def invocation_events(self, tenant: str, invocation: str) -> list[pb.Event]:
        """The command_invocation event and the command_response events of ``invocation``,
        oldest first. The caller checks that the invocation exists (the invocation store)."""
        return await self._events.events_for_invocation(tenant, invocation)


def _site_refs(a: model.Assignment) -> list[tuple[Kind, str]]:
    """The site records an assignment names (held while it is active)."""
    refs: list[tuple[Kind, str]] = []
    if a.area:
        refs.append(("area", a.area))
    if a.asset:
        refs.append(("asset", a.asset))
    return refs


def _unreleased(a: model.Assignment) -> bool:
    return a.status != model.ASSIGNMENT_STATUS_RELEASED


def _slice(items: list[T], page: int, page_size: int) -> list[T]:
    start = (page - 1) * page_size
    return items[start : start + page_size]


def _check_event_filters(
    kind: str | None, since_ms: int | None, until_ms: int | None, page: int, page_size: int
) -> None:
    if kind is not None and kind not in EVENT_KINDS:
        raise InvalidRequest(f"unknown event type {kind[:40]!r}; one of {', '.join(EVENT_KINDS)}")
    check_page(page, page_size)
    check_time_range(since_ms, until_ms)
