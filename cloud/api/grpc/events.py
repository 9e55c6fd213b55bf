"""The gRPC ``EventQueries`` service: a device's, an assignment's and an invocation's events, an
adapter over :class:`~fieldgate.cloud.services.management.Management` and
:class:`~fieldgate.cloud.services.commands.CommandService`."""

from __future__ import annotations

from fieldgate.cloud.api.grpc.convert import Context, TenantCheck, paging
from fieldgate.cloud.errors import InvalidRequest
from fieldgate.cloud.services.commands import CommandService
from fieldgate.cloud.services.management import Management
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc

_EVENT_KINDS: dict[int, str] = {
    svc.EVENT_TYPE_MEASUREMENT: "measurement",
    svc.EVENT_TYPE_LOCATION: "location",
    svc.EVENT_TYPE_ALERT: "alert",
    svc.EVENT_TYPE_COMMAND_INVOCATION: "command_invocation",
    svc.EVENT_TYPE_COMMAND_RESPONSE: "command_response",
    svc.EVENT_TYPE_STATE_CHANGE: "state_change",
}


def _event_kind(event_type: svc.EventType.ValueType) -> str | None:
    """The event store's kind for a request's ``type``; None (all kinds) for UNSPECIFIED."""
    if event_type == svc.EVENT_TYPE_UNSPECIFIED:
        return None
    kind = _EVENT_KINDS.get(event_type)
    if kind is None:
        raise InvalidRequest(f"unknown event type {event_type}")
    return kind


class EventQueriesServicer(svc_grpc.EventQueriesServicer):
    def __init__(self, mgmt: Management, commands: CommandService, tenant: TenantCheck) -> None:
        self._mgmt = mgmt
        self._commands = commands
        self._tenant = tenant

    async def ListDeviceEvents(
        self, request: svc.ListDeviceEventsRequest, context: Context
    ) -> svc.ListDeviceEventsResponse:
        page, page_size = paging(request.page)
        p = await self._mgmt.list_events(
            await self._tenant(request.tenant),
            request.device,
            kind=_event_kind(request.type),
            since_ms=request.since_ms or None,
            until_ms=request.until_ms or None,
            page=page,
            page_size=page_size,
        )
        return svc.ListDeviceEventsResponse(events=p.items, total=p.total)

    async def ListAssignmentEvents(
        self, request: svc.ListAssignmentEventsRequest, context: Context
    ) -> svc.ListAssignmentEventsResponse:
        page, page_size = paging(request.page)
        p = await self._mgmt.list_assignment_events(
            await self._tenant(request.tenant),
            request.assignment,
            kind=_event_kind(request.type),
            since_ms=request.since_ms or None,
            until_ms=request.until_ms or None,
            page=page,
            page_size=page_size,
        )
        return svc.ListAssignmentEventsResponse(events=p.items, total=p.total)

    async def ListInvocationEvents(
        self, request: svc.ListInvocationEventsRequest, context: Context
    ) -> svc.ListInvocationEventsResponse:
        tenant = await self._tenant(request.tenant)
        state = await self._commands.get(tenant, request.id)
        events = await self._mgmt.invocation_events(tenant, state.id)
        return svc.ListInvocationEventsResponse(invocation=state, events=events)
