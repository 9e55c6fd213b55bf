"""REST routes for tenants (instance administrators only; the rules are in
``fieldgate.cloud.services.tenants``).

Bodies are JSON objects of :class:`~fieldgate.cloud.zk.models.TenantSettings` keys:
:class:`TenantIn` (POST: ``token`` required, every setting optional with its default) and
:class:`TenantChange` (PATCH: any of the settings), strict like every request body (``"5"`` is
not a number), then validated as a whole by the settings model (a bad key or value → 422 naming
it). Who may call them is decided
by the access policy (``Permission.INSTANCE_ADMIN``, cloud/services/access.py) given as ``manage``.

This module deliberately does not use ``from __future__ import annotations``: FastAPI reads the
route signatures at definition time, and the per-app dependency is a closure local.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict

from fieldgate.cloud.api.rest.models import PageOut, error_docs
from fieldgate.cloud.api.rest.paging import PageQuery
from fieldgate.cloud.jsontypes import integral
from fieldgate.cloud.services.access import Principal
from fieldgate.cloud.services.documents import iso
from fieldgate.cloud.services.tenants import ConfirmationRequired, TenantAdmin
from fieldgate.cloud.zk.models import ALL_DECODERS, PipelineSettings, TenantSettings
from fieldgate.protocol.topics import Format
from fieldgate.v1 import model_pb2 as model

ERRORS = error_docs(common=True) | error_docs({403: "only an instance administrator manages tenants"})


_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)
# The integers of the settings, as JSON has them (cloud/jsontypes.py); bounds as TenantSettings'
# (tests/integration/test_api_contract.py compares them).
Days = Annotated[int, Field(ge=1, le=36_500), BeforeValidator(integral), Strict()]
Seconds = Annotated[int, Field(ge=1, le=30 * 86_400), BeforeValidator(integral), Strict()]
Burst = Annotated[int, Field(ge=1, le=10_000_000), BeforeValidator(integral), Strict()]
BatchEvents = Annotated[int, Field(ge=1, le=10_000), BeforeValidator(integral), Strict()]


class PipelineIn(PipelineSettings):
    model_config = _STRICT
    max_batch_events: BatchEvents = 10_000


class TenantIn(TenantSettings):
    """A new tenant: its token and any settings (the others take their defaults)."""

    model_config = _STRICT
    # JSON arrays (a strict tuple would refuse them)
    decoders: list[Format] = Field(default_factory=lambda: list(ALL_DECODERS))  # type: ignore[assignment]
    pipeline: PipelineIn = PipelineIn()
    retention_days: Days | None = None
    presence_interval_s: Seconds = 300
    burst_events: Burst | None = None


class PipelineChange(BaseModel):
    model_config = _STRICT
    persist_events: bool = None  # type: ignore[assignment]
    max_batch_events: BatchEvents = None  # type: ignore[assignment]


class TenantChange(BaseModel):
    """Settings to change (every key optional; ``null`` only where the setting can be unset)."""

    model_config = _STRICT
    name: str = None  # type: ignore[assignment]
    auto_register: bool = None  # type: ignore[assignment]
    default_device_type: str = Field(None, min_length=1)  # type: ignore[assignment]
    retention_days: Days | None = None
    decoders: list[Format] = None  # type: ignore[assignment]
    pipeline: PipelineChange = None  # type: ignore[assignment]
    presence_interval_s: Seconds = None  # type: ignore[assignment]
    max_events_per_s: float | None = Field(None, gt=0, le=1_000_000)
    burst_events: Burst | None = None


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
    async def create_tenant(body: TenantIn, who: Admin) -> TenantOut:
        """Create and provision a tenant: ``{"token": "acme", "name": "Acme", ...settings}``.
        Its storage, topics and ZooKeeper znode exist when this returns."""
        return await out(await admin.create(body.token, body.model_dump(mode="json", exclude_unset=True)))

    @router.get("/tenants")
    async def list_tenants(
        who: Admin,
        paging: PageQuery,
    ) -> PageOut[TenantOut]:
        p = await admin.page(paging.page, paging.page_size)
        items = [await out(t) for t in p.items]
        return PageOut[TenantOut](items=items, page=p.page, page_size=p.page_size, total=p.total)

    @router.get("/tenants/{token}", responses=error_docs({404: "no such tenant"}))
    async def get_tenant(token: str, who: Admin) -> TenantOut:
        return await out(await admin.get(token))

    @router.patch("/tenants/{token}", responses=error_docs({404: "no such tenant"}))
    async def update_tenant(token: str, body: TenantChange, who: Admin) -> TenantOut:
        """Change settings: the given keys are merged over the current ones (``pipeline``
        key by key) and the result validated as a whole; applied live everywhere."""
        return await out(await admin.update(token, body.model_dump(mode="json", exclude_unset=True)))

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
