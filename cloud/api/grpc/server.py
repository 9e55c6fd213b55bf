"""The gRPC management APIs: who may call them, and :func:`add_grpc_api`, which registers them.

The services are adapters, like the REST routes, one module each (devices, events, commands,
tenants, customers, site, states, rules; what they share is in :mod:`.convert`): the rules live
in the services (cloud/services/), so a request refused over REST is refused here with the
same message. Domain errors map to status codes once, for every method
(:func:`~fieldgate.cloud.api.grpc.convert.status_of`): NotFound → NOT_FOUND, InUse and Cycle →
FAILED_PRECONDITION, Conflict → ALREADY_EXISTS, InvalidRequest → INVALID_ARGUMENT, a
storage/bus failure → UNAVAILABLE.

They are registered on the ingest service's ``grpc.aio`` server (``add_grpc_api``). The
requests name their tenant; every call must prove it may act for that tenant, and
:class:`ApiAuth` is the one place that decides: a bearer token in the metadata
(``authorization: Bearer <jwt>``, the REST API's tokens, checked by its
:class:`~fieldgate.cloud.services.auth.TokenAuthority` and, like every REST request, against the user
store by :class:`~fieldgate.cloud.services.auth.UserSessions`: a deleted or changed user's token is
refused at once) whose tenant is the request's, or — with
mutual TLS — a client certificate listing that tenant (cloud/tls.py; a revoked one is refused
even with a token). No credentials → UNAUTHENTICATED; another tenant's → PERMISSION_DENIED.
``add_grpc_api`` registers each service through :class:`_Served`, which puts that check in
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

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from fieldgate.cloud.api.grpc.commands import CommandInvocationsServicer
from fieldgate.cloud.api.grpc.convert import Context, TenantCheck, status_of
from fieldgate.cloud.api.grpc.customers import CustomerManagementServicer
from fieldgate.cloud.api.grpc.devices import DeviceManagementServicer
from fieldgate.cloud.api.grpc.events import EventQueriesServicer
from fieldgate.cloud.api.grpc.rules import RulesServicer
from fieldgate.cloud.api.grpc.site import SiteManagementServicer
from fieldgate.cloud.api.grpc.states import DeviceStatesServicer
from fieldgate.cloud.api.grpc.tenants import TenantManagementServicer
from fieldgate.cloud.errors import CloudError, Unauthenticated
from fieldgate.cloud.services.access import GRPC_METHODS, Permission, Role
from fieldgate.cloud.services.auth import TokenAuthority, UserSessions
from fieldgate.cloud.services.commands import CommandService
from fieldgate.cloud.services.customers import CustomerManagement
from fieldgate.cloud.services.management import Management
from fieldgate.cloud.services.site import SiteService
from fieldgate.cloud.store.events import EventStore
from fieldgate.cloud.store.invocations import InvocationStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.tls import PeerRefused, ServerTls
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc

if TYPE_CHECKING:
    from fieldgate.cloud.services.rules import RuleService
    from fieldgate.cloud.services.tenants import TenantAdmin
    from fieldgate.cloud.store.site import SiteStore
    from fieldgate.cloud.store.state import DeviceStateStore

UnaryMethod = Callable[[Any, Context], Awaitable[Any]]


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
            except Unauthenticated as err:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err))
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


class _Served:
    """Stands in for a servicer: every method the service's descriptor declares, behind
    ``auth``, with a domain error ending the call with its status and message
    (:func:`~fieldgate.cloud.api.grpc.convert.status_of`). The generated
    ``add_*Servicer_to_server`` reads the methods as attributes."""

    def __init__(self, servicer: object, service: str, auth: ApiAuth) -> None:
        descriptor = svc.DESCRIPTOR.services_by_name[service]
        for method in descriptor.methods:
            if method.client_streaming or method.server_streaming:
                raise TypeError(f"{service}.{method.name}: streaming methods need a guard of their own")
            setattr(self, method.name, auth.guard(_mapped(getattr(servicer, method.name)), method.full_name))


def _mapped(method: UnaryMethod) -> UnaryMethod:
    """``method``, ending the call with the status of a domain error it raises."""

    async def call(request: Any, context: Context) -> Any:
        try:
            return await method(request, context)
        except CloudError as err:
            await context.abort(status_of(err), str(err))

    return call


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
    given ``tenants`` — tenant management, given ``site`` the site model (which assignments
    then check and hold), given ``states`` device state and given ``rules`` the tenant's rules.

    ``invocations`` is accepted for symmetry with the REST API; reads go through ``commands``.
    """
    del invocations
    mgmt = Management(registry, event_store, site, states=states, rules=rules)
    tenant = TenantCheck(registry)

    def serve(servicer: object, service: str, add: Callable[[Any, grpc.aio.Server], None]) -> None:
        add(_Served(servicer, service, auth), server)

    serve(
        DeviceManagementServicer(mgmt, tenant),
        "DeviceManagement",
        svc_grpc.add_DeviceManagementServicer_to_server,
    )
    serve(
        EventQueriesServicer(mgmt, commands, tenant),
        "EventQueries",
        svc_grpc.add_EventQueriesServicer_to_server,
    )
    serve(
        CommandInvocationsServicer(commands, tenant),
        "CommandInvocations",
        svc_grpc.add_CommandInvocationsServicer_to_server,
    )
    serve(
        CustomerManagementServicer(CustomerManagement(registry), tenant),
        "CustomerManagement",
        svc_grpc.add_CustomerManagementServicer_to_server,
    )
    if site is not None:
        serve(
            SiteManagementServicer(site, SiteService(site, mgmt), tenant),
            "SiteManagement",
            svc_grpc.add_SiteManagementServicer_to_server,
        )
    if states is not None:
        serve(DeviceStatesServicer(mgmt, tenant), "DeviceStates", svc_grpc.add_DeviceStatesServicer_to_server)
    if rules is not None:
        serve(RulesServicer(rules, tenant), "Rules", svc_grpc.add_RulesServicer_to_server)
    if tenants is not None:
        serve(
            TenantManagementServicer(tenants),
            "TenantManagement",
            svc_grpc.add_TenantManagementServicer_to_server,
        )
