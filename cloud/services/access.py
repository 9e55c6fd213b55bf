"""The access policy: roles, what each may do, and the one check every REST route declares.

A caller is a :class:`Principal` proven by its bearer token (``fieldgate.cloud.api.rest.auth``): a user, the
user's tenant, a :class:`Role` and, for ``customer`` users, a customer. A role grants a set of
:class:`Permission`; every operation needs exactly one permission:

==================  ==========================================================================
``READ``            read the tenant's registry, events and invocations (customers: only theirs)
``COMMAND``         send commands to devices
``WRITE``           create device types, devices, assignments; release assignments
``ADMIN``           manage the users of the tenant (never an instance admin)
``INSTANCE_ADMIN``  manage tenants and the users of every tenant
==================  ==========================================================================

REST routes declare their permission with ``Depends(require(Permission.X))`` (or
``Depends(public())`` for the login form and the probes); :func:`check_routes` refuses to build
an app with a route that declares neither, so a new route cannot be reachable without a policy.
The gRPC APIs use :data:`GRPC_METHODS` (cloud/api/grpc/server.py ``ApiAuth``): a method missing from it
is refused. The caller's tenant always comes from the verified token; only an instance admin may
act for another tenant (REST: the ``X-Fieldgate-Tenant`` header; gRPC: the request's tenant).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, HTTPException, status
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from fieldgate.cloud.domain.users import Role as Role  # the roles are the domain's (named here for the API)


class Permission(StrEnum):
    READ = "read"
    COMMAND = "command"
    WRITE = "write"
    ADMIN = "admin"
    INSTANCE_ADMIN = "instance-admin"


P = Permission
GRANTS: dict[Role, frozenset[Permission]] = {
    Role.INSTANCE_ADMIN: frozenset(Permission),
    Role.TENANT_ADMIN: frozenset({P.READ, P.COMMAND, P.WRITE, P.ADMIN}),
    Role.OPERATOR: frozenset({P.READ, P.COMMAND}),
    Role.VIEWER: frozenset({P.READ}),
    Role.CUSTOMER: frozenset({P.READ}),
}

#: Every gRPC API method and the permission it needs. A method of the descriptors that is not
#: here is refused (PERMISSION_DENIED) — add it here when the proto gains one.
GRPC_METHODS: dict[str, Permission] = {
    "fieldgate.v1.DeviceManagement.CreateDeviceType": P.WRITE,
    "fieldgate.v1.DeviceManagement.GetDeviceType": P.READ,
    "fieldgate.v1.DeviceManagement.ListDeviceTypes": P.READ,
    "fieldgate.v1.DeviceManagement.UpdateDeviceType": P.WRITE,
    "fieldgate.v1.DeviceManagement.DeleteDeviceType": P.WRITE,
    "fieldgate.v1.DeviceManagement.CreateDevice": P.WRITE,
    "fieldgate.v1.DeviceManagement.GetDevice": P.READ,
    "fieldgate.v1.DeviceManagement.ListDevices": P.READ,
    "fieldgate.v1.DeviceManagement.UpdateDevice": P.WRITE,
    "fieldgate.v1.DeviceManagement.DeleteDevice": P.WRITE,
    "fieldgate.v1.DeviceManagement.CreateAssignment": P.WRITE,
    "fieldgate.v1.DeviceManagement.ListAssignments": P.READ,
    "fieldgate.v1.DeviceManagement.ReleaseAssignment": P.WRITE,
    "fieldgate.v1.EventQueries.ListDeviceEvents": P.READ,
    "fieldgate.v1.EventQueries.ListAssignmentEvents": P.READ,
    "fieldgate.v1.EventQueries.ListInvocationEvents": P.READ,
    "fieldgate.v1.CommandInvocations.Invoke": P.COMMAND,
    "fieldgate.v1.CommandInvocations.GetInvocation": P.READ,
    "fieldgate.v1.TenantManagement.CreateTenant": P.INSTANCE_ADMIN,
    "fieldgate.v1.TenantManagement.GetTenant": P.INSTANCE_ADMIN,
    "fieldgate.v1.TenantManagement.ListTenants": P.INSTANCE_ADMIN,
    "fieldgate.v1.TenantManagement.UpdateTenant": P.INSTANCE_ADMIN,
    "fieldgate.v1.TenantManagement.DeleteTenant": P.INSTANCE_ADMIN,
    "fieldgate.v1.CustomerManagement.CreateCustomerType": P.WRITE,
    "fieldgate.v1.CustomerManagement.GetCustomerType": P.READ,
    "fieldgate.v1.CustomerManagement.ListCustomerTypes": P.READ,
    "fieldgate.v1.CustomerManagement.UpdateCustomerType": P.WRITE,
    "fieldgate.v1.CustomerManagement.DeleteCustomerType": P.WRITE,
    "fieldgate.v1.CustomerManagement.CreateCustomer": P.WRITE,
    "fieldgate.v1.CustomerManagement.GetCustomer": P.READ,
    "fieldgate.v1.CustomerManagement.ListCustomers": P.READ,
    "fieldgate.v1.CustomerManagement.UpdateCustomer": P.WRITE,
    "fieldgate.v1.CustomerManagement.DeleteCustomer": P.WRITE,
    "fieldgate.v1.CustomerManagement.ListCustomerDevices": P.READ,
    "fieldgate.v1.SiteManagement.CreateSiteRecord": P.WRITE,
    "fieldgate.v1.SiteManagement.GetSiteRecord": P.READ,
    "fieldgate.v1.SiteManagement.ListSiteRecords": P.READ,
    "fieldgate.v1.SiteManagement.UpdateSiteRecord": P.WRITE,
    "fieldgate.v1.SiteManagement.DeleteSiteRecord": P.WRITE,
    "fieldgate.v1.SiteManagement.PutGroupElement": P.WRITE,
    "fieldgate.v1.SiteManagement.RemoveGroupElement": P.WRITE,
    "fieldgate.v1.SiteManagement.ListGroupElements": P.READ,
    "fieldgate.v1.SiteManagement.ListGroupDevices": P.READ,
    "fieldgate.v1.DeviceStates.GetDeviceState": P.READ,
    "fieldgate.v1.DeviceStates.ListDeviceStates": P.READ,
    "fieldgate.v1.Rules.ListRules": P.READ,
    "fieldgate.v1.Rules.GetRule": P.READ,
    "fieldgate.v1.Rules.CreateRule": P.WRITE,
    "fieldgate.v1.Rules.ReplaceRule": P.WRITE,
    "fieldgate.v1.Rules.DeleteRule": P.WRITE,
}

TENANT_HEADER = "X-Fieldgate-Tenant"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as proven by its token. ``customer`` is set for (and only for) customer users."""

    user: str
    tenant: str
    role: Role
    customer: str | None = None

    def may(self, permission: Permission) -> bool:
        return permission in GRANTS[self.role]

    def may_act_for(self, tenant: str) -> bool:
        return self.role is Role.INSTANCE_ADMIN or tenant == self.tenant

    @property
    def scope_customer(self) -> str | None:
        """The customer whose things alone this caller may read (None: the whole tenant)."""
        return self.customer if self.role is Role.CUSTOMER else None

    def acting_for(self, tenant: str) -> Principal:
        return replace(self, tenant=tenant)


PrincipalDependency = Callable[..., Awaitable[Principal]]
_POLICY_ATTR = "__fieldgate_permission__"
PUBLIC = "public"


def forbidden(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, detail=detail)


def mark(dependency: Callable[..., Any], permission: Permission | str) -> None:
    """Tag ``dependency`` as the policy of the routes that declare it (see :func:`check_routes`)."""
    setattr(dependency, _POLICY_ATTR, permission)


def policy_of(dependency: Any) -> Permission | str | None:
    value = getattr(dependency, _POLICY_ATTR, None)
    return value if isinstance(value, Permission | str) else None


def public() -> Callable[[], None]:
    """The explicit "no authentication" policy (login form, dashboard page, probes)."""

    def no_authentication() -> None:
        return None

    mark(no_authentication, PUBLIC)
    return no_authentication


def api_routes(app: FastAPI) -> list[RouteContext]:
    """Every API route of ``app`` as it is served: included routers resolved, with the
    dependencies of the routers they were included with (``route.dependant``)."""
    return [rc for rc in iter_route_contexts(app.routes) if isinstance(rc.original_route, APIRoute)]


def route_policies(route: APIRoute | RouteContext) -> list[Permission | str]:
    """The policies a route declares, anywhere in its dependency tree."""

    def walk(deps: list[Any]) -> Iterator[Permission | str]:
        for dep in deps:
            found = policy_of(dep.call)
            if found is not None:
                yield found
            yield from walk(dep.dependencies)

    return list(walk(route.dependant.dependencies))


def check_routes(app: FastAPI) -> None:
    """TypeError naming every route of ``app`` that declares no policy, or more than one."""
    bad = []
    for route in api_routes(app):
        found = route_policies(route)
        if len(found) != 1:
            bad.append(f"{sorted(route.methods or ())} {route.path}: {found or 'no policy'}")
    if bad:
        raise TypeError(
            "every REST route must declare exactly one Depends(require(Permission.X)) or "
            "Depends(public()): " + "; ".join(bad)
        )
