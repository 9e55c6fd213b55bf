"""The REST side of the bearer tokens: the login route and the dependency every route declares.

The tokens themselves — how they are signed, verified and revoked, and how failed logins are
throttled — are transport-neutral and live in cloud/services/auth.py (the gRPC APIs use the
same). Here: :func:`auth_router` (``POST /api/v1/auth/token``, the OAuth2 password form; 429
with ``Retry-After`` while :class:`~fieldgate.cloud.services.auth.LoginThrottle` refuses) and
:class:`AccessPolicy`, which builds each route's ``Depends(require(Permission.X))``: 401
without a valid token (a token :class:`~fieldgate.cloud.services.auth.UserSessions` refuses is
a 401 through cloud/api/rest/errors.py), 403 for a role without the permission, and the
instance admins' ``X-Fieldgate-Tenant``.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from pydantic import BaseModel

from fieldgate.cloud.api.rest.errors import CHALLENGE
from fieldgate.cloud.api.rest.models import error_docs
from fieldgate.cloud.domain.users import TENANT_PATTERN
from fieldgate.cloud.services.access import (
    TENANT_HEADER,
    Permission,
    Principal,
    PrincipalDependency,
    forbidden,
    mark,
    public,
)
from fieldgate.cloud.services.auth import LoginThrottle, TokenAuthority, UserSessions
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.store.users import Users

__all__ = ["AccessPolicy", "auth_router"]

TOKEN_URL = "/api/v1/auth/token"


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers=CHALLENGE)


# --- the access policy of the REST routes ---------------------------------------------------------

_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
TenantHeader = Annotated[
    str | None,
    Header(
        alias=TENANT_HEADER,
        max_length=63,
        pattern=TENANT_PATTERN.pattern,
        description="instance admins only: act for this tenant instead of the token's",
    ),
]


class AccessPolicy:
    """Builds the dependency each REST route declares: :meth:`require`."""

    def __init__(self, authority: TokenAuthority, registry: Registry, sessions: UserSessions) -> None:
        self._authority = authority
        self._registry = registry
        self._sessions = sessions

    def require(self, permission: Permission) -> PrincipalDependency:
        """A dependency yielding the caller's :class:`Principal`: 401 without a valid token, 403
        if its role lacks ``permission`` or it asks for a tenant it may not act for, 404 for an
        unknown tenant."""
        authority, registry, sessions = self._authority, self._registry, self._sessions

        async def principal(
            token: Annotated[str | None, Depends(_bearer)], tenant: TenantHeader = None
        ) -> Principal:
            if not token:
                raise _unauthorized("not authenticated")
            who = await sessions.principal(authority, token)
            if not who.may(permission):
                raise forbidden(f"role {who.role.value} may not do this ({permission.value} needed)")
            if tenant is None or tenant == who.tenant:
                return who
            if not who.may_act_for(tenant):
                raise forbidden(f"{TENANT_HEADER}: only instance admins may act for another tenant")
            if await registry.get_tenant(tenant) is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"tenant {tenant!r} does not exist")
            return who.acting_for(tenant)

        mark(principal, permission)
        return principal


def auth_router(
    users: Users, authority: TokenAuthority, throttle: LoginThrottle, default_tenant: str
) -> APIRouter:
    router = APIRouter(tags=["auth"], dependencies=[Depends(public())])

    @router.post(
        TOKEN_URL,
        response_model=TokenOut,
        responses=error_docs(
            {
                401: "wrong user name or password",
                422: "username or password missing (send a form)",
                429: "too many failed logins for this user or from this address: see Retry-After",
            }
        ),
    )
    async def login(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenOut:
        """OAuth2 password flow: form fields ``username`` and ``password`` → a bearer token."""
        address = request.client.host if request.client is not None else "unknown"
        keys = [f"user:{form.username[:256]}", f"addr:{address}"]
        wait = throttle.retry_after(keys)
        if wait > 0:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                detail="too many failed logins; try again later",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        found = None
        if 0 < len(form.username) <= 256 and len(form.password) <= 1024:
            found = await users.authenticate(form.username, form.password)
        if found is None:
            throttle.failed(keys)
            raise _unauthorized("incorrect username or password")
        throttle.succeeded(keys[0])
        principal = Principal(
            user=found.name, tenant=found.tenant or default_tenant, role=found.role, customer=found.customer
        )
        token = authority.issue(principal, found.generation)
        return TokenOut(access_token=token, expires_in=authority.ttl_s)

    return router
