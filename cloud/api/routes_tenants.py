"""REST routes for tenants (instance administrators only; the rules are in ``cloud.tenants``).

Bodies are JSON objects of :class:`~fieldgate.cloud.zkconfig_models.TenantSettings` keys,
validated with that model (a bad key or value → 422 naming it). Who may call them is decided
by the access policy (``Permission.INSTANCE_ADMIN``, cloud/api/access.py) given as ``manage``.

This module deliberately does not use ``from __future__ import annotations``: FastAPI reads the
route signatures at definition time, and the per-app dependency is a closure local.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from fieldgate.cloud.api.access import Principal
from fieldgate.cloud.api.models import PageOut, error_docs, iso
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.tenants import ConfirmationRequired, TenantAdmin
from fieldgate.v1 import model_pb2 as model

ERRORS = error_docs(common=True) | error_docs({403: "only an instance administrator manages tenants"})


class TenantOut(BaseModel):
    token: str
    name: str
    created: str
    configured: bool  # from the configuration file (cannot be deleted)
    settings: dict[str, Any]


class TenantDeleted(BaseModel):
    token: str
    removed: list[str]


def tenants_router(admin: TenantAdmin, manage: Callable[..., Awaitable[Principal]]) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERRORS, tags=["tenants"])
    Admin = Annotated[Principal, Depends(manage)]

    async def out(record: model.Tenant) -> TenantOut:
        settings = await admin.settings(record)
        return TenantOut(
            token=record.token,
            name=record.name,
            created=iso(record.created_ms),
            configured=admin.is_configured(record.token),
            settings=settings.model_dump(mode="json", exclude={"token"}),
        )

    @router.post(
        "/tenants",
        status_code=status.HTTP_201_CREATED,
        responses=error_docs({409: "a tenant with that token exists"}),
    )
    async def create_tenant(body: Annotated[dict[str, Any], Body()], who: Admin) -> TenantOut:
        """Create and provision a tenant: ``{"token": "acme", "name": "Acme", ...settings}``.
        Its storage, topics and ZooKeeper znode exist when this returns."""
        token = body.get("token")
        if not isinstance(token, str):
            raise InvalidRequest("token: a tenant token (string) is required")
        return await out(await admin.create(token, body))

    @router.get("/tenants")
    async def list_tenants(
        who: Admin,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> PageOut[TenantOut]:
        p = await admin.page(page, page_size)
        items = [await out(t) for t in p.items]
        return PageOut[TenantOut](items=items, page=p.page, page_size=p.page_size, total=p.total)

    @router.get("/tenants/{token}", responses=error_docs({404: "no such tenant"}))
    async def get_tenant(token: str, who: Admin) -> TenantOut:
        return await out(await admin.get(token))

    @router.patch("/tenants/{token}", responses=error_docs({404: "no such tenant"}))
    async def update_tenant(token: str, body: Annotated[dict[str, Any], Body()], who: Admin) -> TenantOut:
        """Change settings: the given keys are merged over the current ones (``pipeline``
        key by key) and the result validated as a whole; applied live everywhere."""
        return await out(await admin.update(token, body))

    @router.delete(
        "/tenants/{token}",
        responses=error_docs(
            {
                400: "confirm is missing or does not repeat the token",
                404: "no such tenant",
                409: "the tenant is in the configuration file",
            }
        ),
    )
    async def delete_tenant(
        token: str,
        who: Admin,
        confirm: Annotated[str | None, Query(max_length=128, description="repeat the tenant token")] = None,
    ) -> TenantDeleted:
        """Delete the tenant and everything it owns (registry, invocations, events, topics,
        znode). Needs ``?confirm=<token>``."""
        try:
            removed = await admin.delete(token, confirm)
        except ConfirmationRequired as err:
            return JSONResponse({"detail": str(err)}, status_code=status.HTTP_400_BAD_REQUEST)  # type: ignore[return-value]
        return TenantDeleted(token=token, removed=removed)

    return router
