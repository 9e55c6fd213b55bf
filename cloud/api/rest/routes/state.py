"""REST routes for device state and presence (kept by the ``state`` stage, cloud/pipeline/state.py).

``GET /api/v1/devices/{token}/state`` — one device's last-known state;
``GET /api/v1/device-states?presence=present|missing`` — the tenant's devices by presence, paged.

No ``from __future__ import annotations`` here: see ``routes.registry``.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from fieldgate.cloud.api.rest.auth import AccessPolicy
from fieldgate.cloud.api.rest.models import PageOut, error_docs, iso, page_fields
from fieldgate.cloud.api.rest.paging import PageQuery
from fieldgate.cloud.api.rest.routes.registry import ERRORS
from fieldgate.cloud.errors import NotFound
from fieldgate.cloud.services.access import Permission, Principal, forbidden
from fieldgate.cloud.services.management import Management
from fieldgate.cloud.store.state import DeviceState, DeviceStateStore


class MeasurementStateOut(BaseModel):
    value: float
    time: str
    time_ms: int


class LocationStateOut(BaseModel):
    lat: float
    lon: float
    ele: float
    time: str
    time_ms: int


class AlertStateOut(BaseModel):
    alert_type: str
    level: str
    message: str
    source: str
    state: str  # raised | cleared for rule alerts, "" for device alerts
    rule: str
    event_id: str
    time: str
    time_ms: int


class LinkStateOut(BaseModel):
    status: str  # connected | disconnected (the edge's link health)
    adapter: str
    time: str
    time_ms: int


class DeviceStateOut(BaseModel):
    device: str
    device_type: str
    assignment: str
    presence: Literal["present", "missing"]
    presence_changed: str
    last_seen: str  # newest event time of the device's own events
    last_seen_ms: int
    last_received: str  # newest received time
    last_received_ms: int
    location: LocationStateOut | None
    measurements: dict[str, MeasurementStateOut]
    last_alert: AlertStateOut | None
    link: LinkStateOut | None
    raised_rules: list[str]  # rules whose alert is raised for this device now

    @classmethod
    def of(cls, s: DeviceState) -> "DeviceStateOut":
        loc, a, link = s.location, s.last_alert, s.link
        return cls(
            device=s.device,
            device_type=s.device_type,
            assignment=s.assignment,
            presence=s.presence,
            presence_changed=iso(s.presence_ms),
            last_seen=iso(s.last_event_ms),
            last_seen_ms=s.last_event_ms,
            last_received=iso(s.last_received_ms),
            last_received_ms=s.last_received_ms,
            location=None
            if loc is None
            else LocationStateOut(
                lat=loc.lat, lon=loc.lon, ele=loc.ele, time=iso(loc.time_ms), time_ms=loc.time_ms
            ),
            measurements={
                k: MeasurementStateOut(value=v.value, time=iso(v.time_ms), time_ms=v.time_ms)
                for k, v in sorted(s.measurements.items())
            },
            last_alert=None
            if a is None
            else AlertStateOut(
                alert_type=a.alert_type,
                level=a.level,
                message=a.message,
                source=a.source,
                state=a.state,
                rule=a.rule,
                event_id=a.event_id,
                time=iso(a.time_ms),
                time_ms=a.time_ms,
            ),
            link=None
            if link is None
            else LinkStateOut(
                status=link.status, adapter=link.adapter, time=iso(link.time_ms), time_ms=link.time_ms
            ),
            raised_rules=sorted(k for k, r in s.rules.items() if r.raised),
        )


PresenceParam = Annotated[
    Literal["present", "missing"] | None, Query(description="only devices with this presence")
]


def state_router(mgmt: Management, store: DeviceStateStore, policy: AccessPolicy) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERRORS, tags=["device state"])
    Read = Annotated[Principal, Depends(policy.require(Permission.READ))]

    @router.get("/devices/{token}/state", responses=error_docs({404: "no such device, or no state yet"}))
    async def get_device_state(token: str, who: Read) -> DeviceStateOut:
        """The device's last-known state: presence, last seen, last values, location, alert, link."""
        await mgmt.get_device(who.tenant, token, customer=who.scope_customer)
        found = (await store.get_states(who.tenant, [token])).get(token)
        if found is None:
            raise NotFound(f"device {token!r} has no state yet (no event of it reached the state stage)")
        return DeviceStateOut.of(found)

    @router.get("/device-states", responses=error_docs({403: "customer users: ask per device"}))
    async def list_device_states(
        who: Read,
        paging: PageQuery,
        presence: PresenceParam = None,
    ) -> PageOut[DeviceStateOut]:
        """The tenant's device states in device token order, e.g. ``?presence=missing``."""
        if who.scope_customer is not None:
            raise forbidden("the tenant-wide state listing is not open to customer users")
        p = await store.list_states(
            who.tenant, presence=presence, page=paging.page, page_size=paging.page_size
        )
        return PageOut[DeviceStateOut](items=[DeviceStateOut.of(s) for s in p.items], **page_fields(p))

    return router
