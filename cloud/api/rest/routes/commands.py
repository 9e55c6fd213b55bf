"""REST routes for command invocations: send a command to a device, follow its status, read
the invocation's events (the command_invocation event and the device's command_response events).

No ``from __future__ import annotations`` here: see ``routes.registry``.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel, Field

from fieldgate.cloud.api.rest.auth import AccessPolicy
from fieldgate.cloud.api.rest.models import CommandRequest, EventOut, InvocationOut, error_docs, event_out
from fieldgate.cloud.api.rest.routes.registry import ERRORS
from fieldgate.cloud.errors import NotFound
from fieldgate.cloud.services.access import Permission, Principal
from fieldgate.cloud.services.commands import CommandService
from fieldgate.cloud.services.management import Management
from fieldgate.v1 import services_pb2 as svc


class InvocationEventsOut(BaseModel):
    invocation: InvocationOut
    events: list[EventOut] = Field(
        description="oldest first: the command_invocation event (once the event store has it), "
        "then every command_response event that answers it"
    )


def commands_router(commands: CommandService, mgmt: Management, policy: AccessPolicy) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERRORS, tags=["commands"])
    Read = Annotated[Principal, Depends(policy.require(Permission.READ))]
    Command = Annotated[Principal, Depends(policy.require(Permission.COMMAND))]

    async def visible(who: Principal, invocation_id: str) -> svc.InvocationState:
        """The invocation, if the caller may see it (a customer: only of its devices)."""
        state = await commands.get(who.tenant, invocation_id)
        try:
            await mgmt.visible_device(who.tenant, state.device, who.scope_customer)
        except NotFound as err:
            raise NotFound(f"invocation '{invocation_id}' does not exist") from err
        return state

    @router.post(
        "/devices/{token}/commands",
        status_code=status.HTTP_201_CREATED,
        responses=error_docs({404: "no such device"}),
    )
    async def invoke_command(token: str, body: CommandRequest, who: Command) -> InvocationOut:
        """Queue a command for the device. The parameters are checked against its device type
        (422 naming the parameter); the command waits for an offline device until ``ttl_s``."""
        state = await commands.invoke(who.tenant, token, body.command, body.params, body.ttl_s, who.user)
        return InvocationOut.from_pb(state)

    @router.get("/invocations/{invocation_id}", responses=error_docs({404: "no such invocation"}))
    async def get_invocation(invocation_id: str, who: Read) -> InvocationOut:
        """Status (queued, delivered, answered, failed, expired, late) and, once answered (or
        late), the response."""
        return InvocationOut.from_pb(await visible(who, invocation_id))

    @router.get("/invocations/{invocation_id}/events", responses=error_docs({404: "no such invocation"}))
    async def get_invocation_events(invocation_id: str, who: Read) -> InvocationEventsOut:
        """The invocation with its events: what was sent and every response its device gave
        (never another device's: those are refused, and shown only in that device's events)."""
        state = await visible(who, invocation_id)
        events = await mgmt.invocation_events(who.tenant, state.id)
        # The event store files only the device's own responses under the invocation; events
        # stored before that rule may include other devices' answers, which are left out here.
        own = (e for e in events if e.device == state.device)
        items = [out for out in (event_out(e) for e in own) if out is not None]
        return InvocationEventsOut(invocation=InvocationOut.from_pb(state), events=items)

    return router
