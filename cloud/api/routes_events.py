"""REST routes for events: a device's or an assignment's, newest first, filtered by type and
time, paged. (An invocation's events are served beside the invocation, in ``routes_commands``.)

No ``from __future__ import annotations`` here: see ``routes_registry``.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from fieldgate.cloud.api.access import Permission, Principal
from fieldgate.cloud.api.auth import AccessPolicy
from fieldgate.cloud.api.management import DEFAULT_PAGE_SIZE, Management
from fieldgate.cloud.api.models import EventKind, EventOut, PageOut, error_docs, event_out, page_fields
from fieldgate.cloud.api.routes_registry import ERRORS, PageNo, PageSize
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.store import Page
from fieldgate.timeutil import parse_time_ms
from fieldgate.v1 import events_pb2 as pb

TIME_HELP = "ISO 8601 (e.g. 2024-05-01T12:00:00Z) or epoch milliseconds"


def _time(name: str, value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return parse_time_ms(value)
    except (ValueError, OverflowError) as err:
        raise InvalidRequest(f"{name}: {err}") from err


TypeParam = Annotated[EventKind | None, Query(description="only events of this type")]
SinceParam = Annotated[str | None, Query(max_length=64, description=f"inclusive lower bound: {TIME_HELP}")]
UntilParam = Annotated[str | None, Query(max_length=64, description=f"inclusive upper bound: {TIME_HELP}")]


def _page_out(p: Page[pb.Event]) -> PageOut[EventOut]:
    items = [out for out in (event_out(e) for e in p.items) if out is not None]
    return PageOut[EventOut](items=items, **page_fields(p))


def events_router(mgmt: Management, policy: AccessPolicy) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERRORS, tags=["events"])
    Read = Annotated[Principal, Depends(policy.require(Permission.READ))]

    @router.get("/devices/{token}/events", responses=error_docs({404: "no such device"}))
    async def list_device_events(
        token: str,
        who: Read,
        type: TypeParam = None,
        since: SinceParam = None,
        until: UntilParam = None,
        page: PageNo = 1,
        page_size: PageSize = DEFAULT_PAGE_SIZE,
    ) -> PageOut[EventOut]:
        """The device's events (event time, newest first)."""
        p = await mgmt.list_events(
            who.tenant,
            token,
            kind=type,
            since_ms=_time("since", since),
            until_ms=_time("until", until),
            page=page,
            page_size=page_size,
            customer=who.scope_customer,
        )
        return _page_out(p)

    @router.get("/assignments/{token}/events", responses=error_docs({404: "no such assignment"}))
    async def list_assignment_events(
        token: str,
        who: Read,
        type: TypeParam = None,
        since: SinceParam = None,
        until: UntilParam = None,
        page: PageNo = 1,
        page_size: PageSize = DEFAULT_PAGE_SIZE,
    ) -> PageOut[EventOut]:
        """The events stamped with the assignment when they arrived (event time, newest first):
        what its device reported while the assignment was active. Still listed after release."""
        p = await mgmt.list_assignment_events(
            who.tenant,
            token,
            kind=type,
            since_ms=_time("since", since),
            until_ms=_time("until", until),
            page=page,
            page_size=page_size,
            customer=who.scope_customer,
        )
        return _page_out(p)

    return router
