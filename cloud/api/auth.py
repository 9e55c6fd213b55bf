"""Bearer tokens for the REST API: issue on password login, verify on every request.

Tokens are JWTs signed with HS256 and the cloud's secret; they carry the user (``sub``) and the
user's tenant (``tenant``). Every route takes the tenant from the verified token and from
nowhere else — no request parameter can name another tenant — which is what keeps tenants
apart at the API. There is no server-side session: a token is valid until ``exp``
(``auth.token_ttl_s``), and rotating the secret invalidates all of them.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from pydantic import BaseModel

from fieldgate.cloud.api.models import error_docs
from fieldgate.cloud.api.users import Users
from fieldgate.timeutil import now_ms

TOKEN_URL = "/api/v1/auth/token"
_ALGORITHM = "HS256"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as proven by its token."""

    user: str
    tenant: str


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class TokenAuthority:
    """Signs and checks tokens with one secret and lifetime."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        if not secret:
            raise ValueError("the token secret must not be empty")
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, principal: Principal) -> str:
        now_s = now_ms() // 1000
        claims = {"sub": principal.user, "tenant": principal.tenant, "iat": now_s, "exp": now_s + self.ttl_s}
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify(self, token: str) -> Principal:
        """The token's principal; HTTP 401 for anything expired, forged or malformed."""
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[_ALGORITHM], options={"require": ["exp", "sub", "tenant"]}
            )
        except jwt.ExpiredSignatureError as err:
            raise _unauthorized("token expired") from err
        except jwt.PyJWTError as err:
            raise _unauthorized("invalid token") from err
        user, tenant = claims.get("sub"), claims.get("tenant")
        if not isinstance(user, str) or not isinstance(tenant, str) or not user or not tenant:
            raise _unauthorized("invalid token")
        return Principal(user=user, tenant=tenant)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers=_CHALLENGE)


_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


def principal_dependency(authority: TokenAuthority) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency that yields the caller's :class:`Principal` or answers 401."""

    async def current_principal(token: Annotated[str | None, Depends(_bearer)]) -> Principal:
        if not token:
            raise _unauthorized("not authenticated")
        return authority.verify(token)

    return current_principal


def auth_router(users: Users, authority: TokenAuthority, default_tenant: str) -> APIRouter:
    router = APIRouter(tags=["auth"])

    @router.post(
        TOKEN_URL,
        response_model=TokenOut,
        responses=error_docs(
            {401: "wrong user name or password", 422: "username or password missing (send a form)"}
        ),
    )
    async def login(form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenOut:
        """OAuth2 password flow: form fields ``username`` and ``password`` → a bearer token."""
        if len(form.username) > 256 or len(form.password) > 1024 or not form.username:
            raise _unauthorized("incorrect username or password")
        if not await users.verify(form.username, form.password):
            raise _unauthorized("incorrect username or password")
        tenant = await users.tenant_of(form.username) or default_tenant
        token = authority.issue(Principal(user=form.username, tenant=tenant))
        return TokenOut(access_token=token, expires_in=authority.ttl_s)

    return router
