"""The gRPC management APIs: DeviceManagement, EventQueries and CommandInvocations.

These are adapters, like the REST routes: the rules live in
:class:`fieldgate.cloud.services.management.Management` and
:class:`fieldgate.cloud.services.commands.CommandService`, so a request refused over REST is refused
here with the same message. Domain errors map to status codes: NotFound → NOT_FOUND,
Conflict → ALREADY_EXISTS, InvalidRequest → INVALID_ARGUMENT, a storage/bus failure →
UNAVAILABLE.

They are registered on the ingest service's ``grpc.aio`` server (``add_grpc_api``). The
requests name their tenant; every call must prove it may act for that tenant, and
:class:`ApiAuth` is the one place that decides: a bearer token in the metadata
(``authorization: Bearer <jwt>``, the REST API's tokens, checked by its
:class:`~fieldgate.cloud.api.rest.auth.TokenAuthority` and, like every REST request, against the user
store by :class:`~fieldgate.cloud.api.rest.auth.UserSessions`: a deleted or changed user's token is
refused at once) whose tenant is the request's, or — with
mutual TLS — a client certificate listing that tenant (cloud/tls.py; a revoked one is refused
even with a token). No credentials → UNAUTHENTICATED; another tenant's → PERMISSION_DENIED.
``add_grpc_api`` registers each service through :class:`_Authorized`, which puts that check in
front of every method the service's descriptor declares, so a new method cannot be added
without it. The tenant must also be one the registry knows, so a request cannot create storage
for a tenant that was never configured.

Roles (cloud/services/access.py): each method needs the permission :data:`GRPC_METHODS` names for
it, and a method missing from that map is refused (PERMISSION_DENIED) whatever the caller. An
instance admin's token acts for every tenant; any other token for its own only. Customer users
are refused here (the servicers do not filter by customer; they use the REST API). A client
certificate acts as a tenant admin of the tenants it lists (never as an instance admin).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from fastapi import HTTPException
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# TODO(issue 16 phase B): TokenAuthority and UserSessions move to services/auth.py (no gRPC module
# imports api.rest).
from fieldgate.cloud.api.rest.auth import TokenAuthority, UserSessions
from fieldgate.cloud.errors import CloudError, Conflict, Cycle, InUse, InvalidRequest, NotFound
from fieldgate.cloud.services.access import GRPC_METHODS, Permission, Role
from fieldgate.cloud.services.commands import CommandService
from fieldgate.cloud.services.management import DEFAULT_PAGE_SIZE, Management
from fieldgate.cloud.store.events import EventStore
from fieldgate.cloud.store.invocations import InvocationStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.tls import PeerRefused, ServerTls
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc

if TYPE_CHECKING:
    from fieldgate.cloud.services.rules import RuleService
    from fieldgate.cloud.services.tenants import TenantAdmin
    from fieldgate.cloud.store.site import SiteStore
    from fieldgate.cloud.store.state import DeviceStateStore

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]
UnaryMethod = Callable[[Any, Context], Awaitable[Any]]

_TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_CODES: tuple[tuple[type[CloudError], grpc.StatusCode], ...] = (
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InUse, grpc.StatusCode.FAILED_PRECONDITION),
    (Cycle, grpc.StatusCode.FAILED_PRECONDITION),
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
)
_EVENT_KINDS: dict[int, str] = {
    svc.EVENT_TYPE_MEASUREMENT: "measurement",
    svc.EVENT_TYPE_LOCATION: "location",
    svc.EVENT_TYPE_ALERT: "alert",
    svc.EVENT_TYPE_COMMAND_INVOCATION: "command_invocation",
    svc.EVENT_TYPE_COMMAND_RESPONSE: "command_response",
    svc.EVENT_TYPE_STATE_CHANGE: "state_change",
}


async def _guarded(context: Context, call: Awaitable[T]) -> T:
    """Await ``call``; a domain error ends the RPC with the matching status and its message."""
    try:
        return await call
    except CloudError as err:
        code = next((c for kind, c in _CODES if isinstance(err, kind)), grpc.StatusCode.UNAVAILABLE)
        await context.abort(code, str(err))


def request_tenant(request: Message) -> str | None:
    """The tenant a request names: its ``tenant`` field, or that of its one message field that
    has one (``CreateDeviceRequest.device.tenant``); None if it names none."""
    fields = request.DESCRIPTOR.fields_by_name
    direct = fields.get("tenant")
    if direct is not None and direct.type == FieldDescriptor.TYPE_STRING:
        return str(request.tenant)  # type: ignore[attr-defined]
    for field in request.DESCRIPTOR.fields:
        inner = field.message_type
        if inner is None or field.is_repeated:
            continue
        nested = inner.fields_by_name.get("tenant")
        if nested is not None and nested.type == FieldDescriptor.TYPE_STRING:
            return str(getattr(request, field.name).tenant)
    return None


def _bearer_token(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class ApiAuth:
    """Who may call the gRPC APIs for which tenant (see the module docstring): the one place."""

    def __init__(
        self, authority: TokenAuthority, tls: ServerTls | None = None, sessions: UserSessions | None = None
    ) -> None:
        """``sessions`` checks each token's user (the cloud process passes its own); without it
        tokens are checked by signature and claims only (tests that sign tokens themselves)."""
        self._authority = authority
        self._tls = tls
        self._sessions = sessions if sessions is not None else UserSessions(None)

    async def authorize(self, context: Context, request: Message, method: str) -> None:
        """Return if the caller may call ``method`` (its full name) for the request's tenant,
        else end the call (UNAUTHENTICATED without valid credentials, PERMISSION_DENIED for a
        role without the method's permission, for another tenant, or for a method the access
        policy does not list)."""
        peer = None
        if self._tls is not None:
            try:
                peer = self._tls.peer(context)
            except PeerRefused as err:
                await context.abort(err.code, str(err))
        permission = GRPC_METHODS.get(method)
        tenant = request_tenant(request)
        token = _bearer_token(context)
        if token is None and (peer is None or peer.identity is None):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "credentials required: metadata 'authorization: Bearer <token>' (POST /api/v1/auth/token) "
                "or a client certificate of the tenant",
            )
        if permission is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not in the access policy")
        if permission is not Permission.INSTANCE_ADMIN and tenant is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this request names no tenant")
        if token is not None:
            if not token:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "authorization: expected 'Bearer <token>'"
                )
            try:
                principal = await self._sessions.principal(self._authority, token)
            except HTTPException as err:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err.detail))
            who = f"the token of {principal.user!r}"
            if principal.role is Role.CUSTOMER:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{who}: customer users read through the REST API (scoped to their customer)",
                )
            if not principal.may(permission):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{who}: role {principal.role.value} may not call {method} ({permission.value} needed)",
                )
            if principal.role is Role.INSTANCE_ADMIN:
                return
            allowed = frozenset((principal.tenant,))
        else:
            assert peer is not None and peer.identity is not None  # checked above
            who = f"the certificate of edge {peer.identity.edge_id!r}"
            if permission in (Permission.ADMIN, Permission.INSTANCE_ADMIN):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {method}")
            allowed = peer.identity.tenants
        if permission is Permission.INSTANCE_ADMIN:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} is for instance admins")
        if not tenant:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tenant is required")
        if tenant not in allowed:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{who} does not allow tenant {tenant[:70]!r}"
            )

    def guard(self, method: UnaryMethod, name: str) -> UnaryMethod:
        """``method`` (full name ``name``, e.g. ``fieldgate.v1.DeviceManagement.GetDevice``)
        behind :meth:`authorize`."""

        async def guarded(request: Any, context: Context) -> Any:
            await self.authorize(context, request, name)
            return await method(request, context)

        return guarded


class _Authorized:
    """Stands in for a servicer: every method the service's descriptor declares, behind
    ``auth`` (the generated ``add_*Servicer_to_server`` reads the methods as attributes)."""

    def __init__(self, servicer: object, service: str, auth: ApiAuth) -> None:
        descriptor = svc.DESCRIPTOR.services_by_name[service]
        for method in descriptor.methods:
            if method.client_streaming or method.server_streaming:
                raise TypeError(f"{service}.{method.name}: streaming methods need a guard of their own")
            setattr(self, method.name, auth.guard(getattr(servicer, method.name), method.full_name))


def _paging(page: svc.PageRequest) -> tuple[int, int]:
    """Unset fields (0) mean page 1 and the default size; the limits are checked downstream."""
    return (page.page or 1, page.page_size or DEFAULT_PAGE_SIZE)


class _TenantCheck:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def __call__(self, tenant: str) -> str:
        if not tenant:
            raise InvalidRequest("tenant is required")
        if not _TENANT_RE.fullmatch(tenant) or await self._registry.get_tenant(tenant) is None:
            raise NotFound(f"tenant {tenant[:70]!r} does not exist")
        return tenant


class DeviceManagementServicer(svc_grpc.DeviceManagementServicer):
    def __init__(self, mgmt: Management, tenant: _TenantCheck) -> None:
        self._mgmt = mgmt
        self._tenant = tenant

    async def CreateDeviceType(
        self, request: svc.CreateDeviceTypeRequest, context: Context
    ) -> model.DeviceType:
        async def run() -> model.DeviceType:
            return await self._mgmt.create_device_type(
                await self._tenant(request.tenant), request.device_type
            )

        return await _guarded(context, run())

    async def GetDeviceType(self, request: svc.GetDeviceTypeRequest, context: Context) -> model.DeviceType:
        async def run() -> model.DeviceType:
            return await self._mgmt.get_device_type(await self._tenant(request.tenant), request.token)

        return await _guarded(context, run())

    async def UpdateDeviceType(
        self, request: svc.UpdateDeviceTypeRequest, context: Context
    ) -> model.DeviceType:
        async def run() -> model.DeviceType:
            return await self._mgmt.update_device_type(
                await self._tenant(request.tenant), request.device_type
            )

        return await _guarded(context, run())

    async def DeleteDeviceType(
        self, request: svc.DeleteDeviceTypeRequest, context: Context
    ) -> svc.DeleteResponse:
        async def run() -> svc.DeleteResponse:
            await self._mgmt.delete_device_type(await self._tenant(request.tenant), request.token)
            return svc.DeleteResponse(token=request.token)

        return await _guarded(context, run())

    async def ListDeviceTypes(
        self, request: svc.ListDeviceTypesRequest, context: Context
    ) -> svc.ListDeviceTypesResponse:
        async def run() -> svc.ListDeviceTypesResponse:
            p = await self._mgmt.list_device_types(await self._tenant(request.tenant), *_paging(request.page))
            return svc.ListDeviceTypesResponse(device_types=p.items, total=p.total)

        return await _guarded(context, run())

    async def CreateDevice(self, request: svc.CreateDeviceRequest, context: Context) -> model.Device:
        async def run() -> model.Device:
            return await self._mgmt.create_device(await self._tenant(request.device.tenant), request.device)

        return await _guarded(context, run())

    async def GetDevice(self, request: svc.GetDeviceRequest, context: Context) -> model.Device:
        async def run() -> model.Device:
            return await self._mgmt.get_device(await self._tenant(request.tenant), request.token)

        return await _guarded(context, run())

    async def ListDevices(self, request: svc.ListDevicesRequest, context: Context) -> svc.ListDevicesResponse:
        async def run() -> svc.ListDevicesResponse:
            p = await self._mgmt.list_devices(await self._tenant(request.tenant), *_paging(request.page))
            return svc.ListDevicesResponse(devices=p.items, total=p.total)

        return await _guarded(context, run())

    async def UpdateDevice(self, request: svc.UpdateDeviceRequest, context: Context) -> model.Device:
        async def run() -> model.Device:
            return await self._mgmt.update_device(await self._tenant(request.device.tenant), request.device)

        return await _guarded(context, run())

    async def DeleteDevice(self, request: svc.DeleteDeviceRequest, context: Context) -> svc.DeleteResponse:
        async def run() -> svc.DeleteResponse:
            await self._mgmt.delete_device(await self._tenant(request.tenant), request.token)
            return svc.DeleteResponse(token=request.token)

        return await _guarded(context, run())

    async def CreateAssignment(
        self, request: svc.CreateAssignmentRequest, context: Context
    ) -> model.Assignment:
        async def run() -> model.Assignment:
            tenant = await self._tenant(request.assignment.tenant)
            return await self._mgmt.create_assignment(tenant, request.assignment)

        return await _guarded(context, run())

    async def ListAssignments(
        self, request: svc.ListAssignmentsRequest, context: Context
    ) -> svc.ListAssignmentsResponse:
        async def run() -> svc.ListAssignmentsResponse:
            tenant = await self._tenant(request.tenant)
            p = await self._mgmt.list_assignments(tenant, request.device or None, *_paging(request.page))
            return svc.ListAssignmentsResponse(assignments=p.items, total=p.total)

        return await _guarded(context, run())

    async def ReleaseAssignment(
        self, request: svc.ReleaseAssignmentRequest, context: Context
    ) -> model.Assignment:
        async def run() -> model.Assignment:
            return await self._mgmt.release_assignment(await self._tenant(request.tenant), request.token)

        return await _guarded(context, run())


def _event_kind(event_type: svc.EventType.ValueType) -> str | None:
    """The event store's kind for a request's ``type``; None (all kinds) for UNSPECIFIED."""
    if event_type == svc.EVENT_TYPE_UNSPECIFIED:
        return None
    kind = _EVENT_KINDS.get(event_type)
    if kind is None:
        raise InvalidRequest(f"unknown event type {event_type}")
    return kind


class EventQueriesServicer(svc_grpc.EventQueriesServicer):
    def __init__(self, mgmt: Management, commands: CommandService, tenant: _TenantCheck) -> None:
        self._mgmt = mgmt
        self._commands = commands
        self._tenant = tenant

    async def ListDeviceEvents(
        self, request: svc.ListDeviceEventsRequest, context: Context
    ) -> svc.ListDeviceEventsResponse:
        async def run() -> svc.ListDeviceEventsResponse:
            tenant = await self._tenant(request.tenant)
            page, page_size = _paging(request.page)
            p = await self._mgmt.list_events(
                tenant,
                request.device,
                kind=_event_kind(request.type),
                since_ms=request.since_ms or None,
                until_ms=request.until_ms or None,
                page=page,
                page_size=page_size,
            )
            return svc.ListDeviceEventsResponse(events=p.items, total=p.total)

        return await _guarded(context, run())

    async def ListAssignmentEvents(
        self, request: svc.ListAssignmentEventsRequest, context: Context
    ) -> svc.ListAssignmentEventsResponse:
        async def run() -> svc.ListAssignmentEventsResponse:
            tenant = await self._tenant(request.tenant)
            page, page_size = _paging(request.page)
            p = await self._mgmt.list_assignment_events(
                tenant,
                request.assignment,
                kind=_event_kind(request.type),
                since_ms=request.since_ms or None,
                until_ms=request.until_ms or None,
                page=page,
                page_size=page_size,
            )
            return svc.ListAssignmentEventsResponse(events=p.items, total=p.total)

        return await _guarded(context, run())

    async def ListInvocationEvents(
        self, request: svc.ListInvocationEventsRequest, context: Context
    ) -> svc.ListInvocationEventsResponse:
        async def run() -> svc.ListInvocationEventsResponse:
            tenant = await self._tenant(request.tenant)
            state = await self._commands.get(tenant, request.id)
            events = await self._mgmt.invocation_events(tenant, state.id)
            return svc.ListInvocationEventsResponse(invocation=state, events=events)

        return await _guarded(context, run())


class CommandInvocationsServicer(svc_grpc.CommandInvocationsServicer):
    def __init__(self, commands: CommandService, tenant: _TenantCheck) -> None:
        self._commands = commands
        self._tenant = tenant

    async def Invoke(self, request: svc.InvokeCommandRequest, context: Context) -> svc.InvocationState:
        async def run() -> svc.InvocationState:
            tenant = await self._tenant(request.tenant)
            try:
                params = json.loads(request.params_json) if request.params_json else {}
            except ValueError as err:
                raise InvalidRequest(f"params_json is not JSON: {err}") from err
            if not isinstance(params, dict):
                raise InvalidRequest("params_json must encode a JSON object")
            return await self._commands.invoke(
                tenant,
                request.device,
                request.command,
                params,
                request.ttl_s or None,
                request.initiator or "grpc",
            )

        return await _guarded(context, run())

    async def GetInvocation(self, request: svc.GetInvocationRequest, context: Context) -> svc.InvocationState:
        async def run() -> svc.InvocationState:
            return await self._commands.get(await self._tenant(request.tenant), request.id)

        return await _guarded(context, run())


def add_grpc_api(
    server: grpc.aio.Server,
    *,
    registry: Registry,
    event_store: EventStore,
    invocations: InvocationStore,
    commands: CommandService,
    auth: ApiAuth,
    tenants: TenantAdmin | None = None,
    site: SiteStore | None = None,
    states: DeviceStateStore | None = None,
    rules: RuleService | None = None,
) -> None:
    """Register the management services on ``server`` (before it starts), every method
    behind ``auth``: device management, event queries, command invocations, customers and —
    given ``tenants`` — tenant management (cloud/api/grpc/tenants.py), given ``site`` the site
    model (which assignments then check and hold), given ``states`` device state and given
    ``rules`` the tenant's rules (cloud/api/grpc/site.py).

    ``invocations`` is accepted for symmetry with the REST API; reads go through ``commands``.
    """
    from fieldgate.cloud.api.grpc.tenants import CustomerManagementServicer, TenantManagementServicer
    from fieldgate.cloud.services.customers import CustomerManagement

    del invocations
    mgmt = Management(registry, event_store, site, states=states, rules=rules)
    tenant = _TenantCheck(registry)
    dm = _Authorized(DeviceManagementServicer(mgmt, tenant), "DeviceManagement", auth)
    eq = _Authorized(EventQueriesServicer(mgmt, commands, tenant), "EventQueries", auth)
    ci = _Authorized(CommandInvocationsServicer(commands, tenant), "CommandInvocations", auth)
    svc_grpc.add_DeviceManagementServicer_to_server(dm, server)  # type: ignore[arg-type]
    svc_grpc.add_EventQueriesServicer_to_server(eq, server)  # type: ignore[arg-type]
    svc_grpc.add_CommandInvocationsServicer_to_server(ci, server)  # type: ignore[arg-type]
    cm = _Authorized(
        CustomerManagementServicer(CustomerManagement(registry), tenant), "CustomerManagement", auth
    )
    svc_grpc.add_CustomerManagementServicer_to_server(cm, server)  # type: ignore[arg-type]
    if site is not None:
        from fieldgate.cloud.api.grpc.site import SiteManagementServicer

        sm = _Authorized(SiteManagementServicer(site, mgmt, tenant, _guarded), "SiteManagement", auth)
        svc_grpc.add_SiteManagementServicer_to_server(sm, server)  # type: ignore[arg-type]
    if states is not None:
        from fieldgate.cloud.api.grpc.site import DeviceStatesServicer

        ds = _Authorized(DeviceStatesServicer(states, mgmt, tenant, _guarded), "DeviceStates", auth)
        svc_grpc.add_DeviceStatesServicer_to_server(ds, server)  # type: ignore[arg-type]
    if rules is not None:
        from fieldgate.cloud.api.grpc.site import RulesServicer

        rs = _Authorized(RulesServicer(rules, tenant, _guarded), "Rules", auth)
        svc_grpc.add_RulesServicer_to_server(rs, server)  # type: ignore[arg-type]
    if tenants is not None:
        tm = _Authorized(TenantManagementServicer(tenants), "TenantManagement", auth)
        svc_grpc.add_TenantManagementServicer_to_server(tm, server)  # type: ignore[arg-type]
