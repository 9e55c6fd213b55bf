"""REST routes the dashboard needs beyond the resource API: live events (Server-Sent Events),
the fleet overview, edges, alerts, a device's invocations and ``/auth/me``.

``GET /api/v1/live`` streams ``hello``, then ``event`` / ``invocation`` / ``dropped`` messages
from this process's :class:`~fieldgate.cloud.services.live.LiveHub`, with a ``: keep-alive`` comment
when nothing was sent for ``keepalive_s``. The bearer token comes in the Authorization header
(never the URL). The stream ends when the client goes away (Starlette cancels the response)
or the hub closes its streams at shutdown.

No ``from __future__ import annotations`` here: see ``routes.registry``.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from fieldgate.cloud.api.rest.auth import AccessPolicy
from fieldgate.cloud.api.rest.models import InvocationOut, PageOut, error_docs, event_out, page_fields
from fieldgate.cloud.api.rest.paging import PageQuery
from fieldgate.cloud.api.rest.routes.registry import ERRORS
from fieldgate.cloud.services.access import Permission, Principal, Role
from fieldgate.cloud.services.documents import iso
from fieldgate.cloud.services.fleet import FleetQueries
from fieldgate.cloud.services.live import LiveHub, Subscription, TooManyStreams
from fieldgate.cloud.services.management import Management
from fieldgate.cloud.store.registry import Registry
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc

CUSTOMER_REFRESH_S = 30.0  # how often a customer's stream re-reads which devices are its


class MeOut(BaseModel):
    user: str
    tenant: str
    role: str
    instance_admin: bool
    customer: str | None


class FleetOut(BaseModel):
    devices: int
    online: int
    offline: int
    missing: int
    unknown: int
    events_per_s: float
    events_last_minute: int
    failed_decodes_last_hour: int
    alerts_raised: int
    edges_connected: int
    tenants: list[str] | None


class EdgeOut(BaseModel):
    edge_id: str
    connected: bool
    connected_since: str | None
    last_seen: str
    version: str
    buffer_depth: int | None
    uplink_lag_ms: int | None
    failed_decodes: int | None
    status_time: str | None
    tenants: list[str]


class EdgesOut(BaseModel):
    items: list[EdgeOut]


class DashboardAlertOut(BaseModel):
    device: str
    device_type: str
    alert_type: str
    level: str
    message: str
    source: str
    state: str
    rule: str
    time: str
    time_ms: int


def _sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


def dashboard_api_router(
    mgmt: Management,
    fleet: FleetQueries,
    registry: Registry,
    policy: AccessPolicy,
    live: LiveHub | None,
    *,
    keepalive_s: float = 15.0,
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERRORS)
    Read = Annotated[Principal, Depends(policy.require(Permission.READ))]

    @router.get("/auth/me", tags=["auth"])
    async def me(who: Read) -> MeOut:
        """Who the bearer token says the caller is (the dashboard shows it and adapts its menus)."""
        return MeOut(
            user=who.user,
            tenant=who.tenant,
            role=who.role.value,
            instance_admin=who.role is Role.INSTANCE_ADMIN,
            customer=who.scope_customer,
        )

    @router.get("/fleet", tags=["dashboard"])
    async def get_fleet(who: Read) -> FleetOut:
        """Counts of the tenant's devices by state, event and failed-decode rates (this API
        process's view since it started), raised alerts, connected edges."""
        c = await fleet.counts(who.tenant, customer=who.scope_customer)
        rates = live.rates(who.tenant) if live is not None else None
        admin = who.role is Role.INSTANCE_ADMIN
        edges = 0 if who.scope_customer is not None else await fleet.edges_connected(who.tenant)
        tenants = sorted(t.token for t in await registry.list_tenants()) if admin else None
        return FleetOut(
            devices=c.devices,
            online=c.online,
            offline=c.offline,
            missing=c.missing,
            unknown=c.unknown,
            events_per_s=rates.events_per_s if rates else 0.0,
            events_last_minute=rates.events_last_minute if rates else 0,
            failed_decodes_last_hour=rates.failed_decodes_last_hour if rates else 0,
            alerts_raised=c.alerts_raised,
            edges_connected=edges,
            tenants=tenants,
        )

    @router.get("/edges", tags=["dashboard"])
    async def list_edges(who: Read) -> EdgesOut:
        """Edge agents whose events carried the caller's tenant (instance admins: all edges),
        with the buffer figures of their last status report (null for edges that send none)."""
        if who.scope_customer is not None:
            return EdgesOut(items=[])  # edges are the operator's, not a customer's
        admin = who.role is Role.INSTANCE_ADMIN
        now = now_ms()
        items = []
        for e in await fleet.edges(None if admin else who.tenant):
            r = e.report
            lag = None
            if r is not None:
                lag = (
                    0
                    if r.buffer_depth == 0 or not r.oldest_pending_ms
                    else max(0, r.time_ms - r.oldest_pending_ms)
                )
            connected = e.connected(now)
            items.append(
                EdgeOut(
                    edge_id=e.edge_id,
                    connected=connected,
                    connected_since=iso(e.connected_ms) if connected else None,
                    last_seen=iso(e.last_seen_ms),
                    version=e.version,
                    buffer_depth=r.buffer_depth if r is not None else None,
                    uplink_lag_ms=lag,
                    failed_decodes=r.failed_decodes if r is not None else None,
                    status_time=iso(r.time_ms) if r is not None else None,
                    tenants=sorted(e.tenants) if admin else [who.tenant],
                )
            )
        return EdgesOut(items=items)

    @router.get("/alerts", tags=["dashboard"])
    async def list_alerts(
        who: Read,
        paging: PageQuery,
        state: Annotated[Literal["raised", "all"], Query(description="raised (default) or all")] = "raised",
    ) -> PageOut[DashboardAlertOut]:
        """Alerts, newest first: ``raised`` = alerts of rules raised now and device alerts of
        the last hour; ``all`` = every device's last alert and its raised rules."""
        found = await fleet.alerts(who.tenant, state, customer=who.scope_customer)
        start = paging.offset
        items = [
            DashboardAlertOut(
                device=i.device,
                device_type=i.device_type,
                alert_type=i.alert.alert_type,
                level=i.alert.level,
                message=i.alert.message,
                source=i.alert.source,
                state=i.alert.state,
                rule=i.alert.rule,
                time=iso(i.alert.time_ms),
                time_ms=i.alert.time_ms,
            )
            for i in found[start : start + paging.page_size]
        ]
        return PageOut[DashboardAlertOut](
            items=items, page=paging.page, page_size=paging.page_size, total=len(found)
        )

    @router.get(
        "/devices/{token}/invocations", tags=["commands"], responses=error_docs({404: "no such device"})
    )
    async def list_device_invocations(token: str, who: Read, paging: PageQuery) -> PageOut[InvocationOut]:
        """The device's command invocations, newest first, with their status and response."""
        p = await fleet.device_invocations(
            who.tenant, token, paging.page, paging.page_size, customer=who.scope_customer
        )
        return PageOut[InvocationOut](items=[InvocationOut.from_pb(s) for s in p.items], **page_fields(p))

    if live is None:  # no hub in this app (e.g. tests of the resource API): no live route
        return router

    @router.get(
        "/live",
        tags=["dashboard"],
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "a Server-Sent Events stream"},
            **error_docs({404: "no such device", 429: "too many live streams (per user or per server)"}),
        },
    )
    async def live_stream(
        who: Read,
        device: Annotated[str | None, Query(max_length=128, description="only this device's")] = None,
    ) -> StreamingResponse:
        """Server-Sent Events: ``hello``, then ``event`` (an item of /devices/{t}/events) for
        each persisted event, ``invocation`` on each status change of a command invocation,
        ``dropped`` when this client was too slow and lost messages; ``: keep-alive`` comments."""
        if live is None:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, detail="live events are not enabled here"
            )
        if device:
            await mgmt.get_device(who.tenant, device, customer=who.scope_customer)
        devices = await _customer_devices(who)
        try:
            sub = live.subscribe(who.tenant, who.user, device=device or None, devices=devices)
        except TooManyStreams as err:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail=str(err)) from err
        return StreamingResponse(
            _stream(sub, who),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _customer_devices(who: Principal) -> frozenset[str] | None:
        if who.scope_customer is None:
            return None
        page = await fleet.list_devices_all(who.tenant, who.scope_customer)
        return frozenset(page)

    async def _stream(sub: Subscription, who: Principal) -> AsyncIterator[bytes]:
        assert live is not None
        loop = asyncio.get_running_loop()
        with sub:
            yield _sse("hello", json.dumps({"tenant": sub.tenant, "queue": sub.queue_size}))
            last_sent = refreshed = loop.time()
            while not sub.closed:
                await sub.wait(max(0.05, keepalive_s - (loop.time() - last_sent)))
                if sub.closed:
                    break
                dropped, items = sub.take()
                out = []
                if dropped:
                    out.append(_sse("dropped", json.dumps({"dropped": dropped})))
                for kind, obj in items:
                    if kind == "event" and isinstance(obj, pb.Event):
                        ev = event_out(obj)
                        if ev is not None:
                            out.append(_sse("event", ev.model_dump_json()))
                    elif isinstance(obj, svc.InvocationState):
                        out.append(_sse("invocation", InvocationOut.from_pb(obj).model_dump_json()))
                if out:
                    yield b"".join(out)
                    last_sent = loop.time()
                elif loop.time() - last_sent >= keepalive_s:
                    yield b": keep-alive\n\n"
                    last_sent = loop.time()
                if sub.devices is not None and loop.time() - refreshed >= CUSTOMER_REFRESH_S:
                    sub.devices = await _customer_devices(who)
                    refreshed = loop.time()

    return router
