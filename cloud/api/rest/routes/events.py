"""REST routes for events: a device's or an assignment's, newest first, filtered by type and
time, paged. (An invocation's events are served beside the invocation, in ``routes.commands``.)

No ``from __future__ import annotations`` here: see ``routes.registry``.
"""

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from fieldgate.cloud.api.rest.auth import AccessPolicy
from fieldgate.cloud.api.rest.models import EventKind, EventOut, PageOut, error_docs, event_out, page_fields
from fieldgate.cloud.api.rest.paging import PageQuery
from fieldgate.cloud.api.rest.routes.registry import ERRORS
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.services.access import Permission, Principal
from fieldgate.cloud.services.management import MAX_TIME_MS, Management
from fieldgate.cloud.store import Page
from fieldgate.v1 import events_pb2 as pb

TIME_HELP = "RFC 3339 (e.g. 2024-05-01T12:00:00Z) or epoch milliseconds"
# What the document says a time is, and exactly what _time takes: an RFC 3339 date-time (a
# calendar time with an offset) or 1-15 digits of epoch milliseconds.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_EPOCH_MS = re.compile(r"^[0-9]{1,15}$")
TIME_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "format": "date-time", "maxLength": 64},
        {"type": "string", "pattern": _EPOCH_MS.pattern},
        {"type": "null"},
    ]
}


def _time(name: str, value: str | None) -> int | None:
    """Epoch ms of a bound; one before 1970 or after 9999 is the earliest or latest there is
    (a bound, not a point: nothing is outside it)."""
    if value is None:
        return None
    if _EPOCH_MS.fullmatch(value):
        return min(int(value), MAX_TIME_MS)
    if not _RFC3339.fullmatch(value):
        raise InvalidRequest(f"{name}: {value[:64]!r} is not an RFC 3339 time or epoch milliseconds")
    date, _, rest = value.upper().replace("Z", "+00:00").partition("T")
    clock, offset = rest[:-6], rest[-6:]
    if "." in clock:  # Python takes at most 6 fraction digits
        whole, fraction = clock.split(".")
        clock = f"{whole}.{fraction[:6]}"
    try:
        ms = int(datetime.fromisoformat(f"{date}T{clock}{offset}").timestamp() * 1000)
    except (ValueError, OverflowError) as err:
        raise InvalidRequest(f"{name}: {value[:64]!r} is not a calendar time: {err}") from err
    return max(0, min(ms, MAX_TIME_MS))


TypeParam = Annotated[EventKind | None, Query(description="only events of this type")]
SinceParam = Annotated[
    str | None,
    Query(max_length=64, description=f"inclusive lower bound: {TIME_HELP}", json_schema_extra=TIME_SCHEMA),
]
UntilParam = Annotated[
    str | None,
    Query(max_length=64, description=f"inclusive upper bound: {TIME_HELP}", json_schema_extra=TIME_SCHEMA),
]


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
        paging: PageQuery,
        type: TypeParam = None,
        since: SinceParam = None,
        until: UntilParam = None,
    ) -> PageOut[EventOut]:
        """The device's events (event time, newest first)."""
        p = await mgmt.list_events(
            who.tenant,
            token,
            kind=type,
            since_ms=_time("since", since),
            until_ms=_time("until", until),
            page=paging.page,
            page_size=paging.page_size,
            customer=who.scope_customer,
        )
        return _page_out(p)

    @router.get("/assignments/{token}/events", responses=error_docs({404: "no such assignment"}))
    async def list_assignment_events(
        token: str,
        who: Read,
        paging: PageQuery,
        type: TypeParam = None,
        since: SinceParam = None,
        until: UntilParam = None,
    ) -> PageOut[EventOut]:
        """The events stamped with the assignment when they arrived (event time, newest first):
        what its device reported while the assignment was active. Still listed after release."""
        p = await mgmt.list_assignment_events(
            who.tenant,
            token,
            kind=type,
            since_ms=_time("since", since),
            until_ms=_time("until", until),
            page=paging.page,
            page_size=paging.page_size,
            customer=who.scope_customer,
        )
        return _page_out(p)

    return router
