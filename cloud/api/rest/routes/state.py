"""REST routes for device state and presence (kept by the ``state`` stage, cloud/pipeline/state.py).

``GET /api/v1/devices/{token}/state`` — one device's last-known state;
``GET /api/v1/device-states?presence=present|missing`` — the tenant's devices by presence, paged.

No ``from __future__ import annotations`` here: see ``routes.registry``.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from fieldgate.cloud.api.rest.auth import AccessPolicy
from fieldgate.cloud.api.rest.models import PageOut, error_docs, page_fields
from fieldgate.cloud.api.rest.paging import PageQuery
from fieldgate.cloud.api.rest.routes.registry import ERRORS
from fieldgate.cloud.services.access import Permission, Principal, forbidden
from fieldgate.cloud.services.documents import DeviceStateOut
from fieldgate.cloud.services.management import Management

PresenceParam = Annotated[
    Literal["present", "missing"] | None, Query(description="only devices with this presence")
]


def state_router(mgmt: Management, policy: AccessPolicy) -> APIRouter:
    """The routes; ``mgmt`` holds the device state store (it is built with ``states=``)."""
    router = APIRouter(prefix="/api/v1", responses=ERRORS, tags=["device state"])
    Read = Annotated[Principal, Depends(policy.require(Permission.READ))]

    @router.get("/devices/{token}/state", responses=error_docs({404: "no such device, or no state yet"}))
    async def get_device_state(token: str, who: Read) -> DeviceStateOut:
        """The device's last-known state: presence, last seen, last values, location, alert, link."""
        return DeviceStateOut.of(await mgmt.device_state(who.tenant, token, customer=who.scope_customer))

    @router.get("/device-states", responses=error_docs({403: "customer users: ask per device"}))
    async def list_device_states(
        who: Read,
        paging: PageQuery,
        presence: PresenceParam = None,
    ) -> PageOut[DeviceStateOut]:
        """The tenant's device states in device token order, e.g. ``?presence=missing``."""
        if who.scope_customer is not None:
            raise forbidden("the tenant-wide state listing is not open to customer users")
        p = await mgmt.list_device_states(who.tenant, presence, paging.page, paging.page_size)
        return PageOut[DeviceStateOut](items=[DeviceStateOut.of(s) for s in p.items], **page_fields(p))

    return router
