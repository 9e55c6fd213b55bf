"""REST routes of the outbound connectors: ``/api/v1/connectors`` (CRUD), their dead letters
and the re-drive action (docs/connectors.md, docs/api.md).

Definitions are created and replaced through the connector admin (cloud/services/connectors.py:
targets vetted against the operator's network policy, a new connector's start on the bus) and
read from the connector store; the connectors service picks changes up within
``connectors.refresh_s``, in whichever process it runs.
Secrets are write-only: responses carry ``secret_set``/``password_set`` flags, and a PUT that
leaves a secret out keeps the stored one.

Like the other route modules this one does not use ``from __future__ import annotations``
(FastAPI reads the signatures at definition time; ``Caller`` is a closure local).
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Body, Depends, Path, Query, Response, status
from pydantic import BaseModel, Field

from fieldgate.cloud.api.rest.models import error_docs
from fieldgate.cloud.domain.connectors.events import event_document
from fieldgate.cloud.domain.connectors.models import (
    CONNECTOR_ID_PATTERN,
    ConnectorIn,
    ConnectorOut,
    ConnectorSpec,
)
from fieldgate.cloud.errors import InvalidRequest, NotFound
from fieldgate.cloud.services.connectors import ConnectorAdmin
from fieldgate.cloud.store.connectors import MAX_DEAD_LETTERS
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb

ConnectorId = Annotated[str, Path(pattern=CONNECTOR_ID_PATTERN, description="the connector's id")]


class _Caller(Protocol):
    @property
    def tenant(self) -> str: ...


class ConnectorList(BaseModel):
    items: list[ConnectorOut]
    total: int


class DeadLetterOut(BaseModel):
    event_id: str
    reason: str
    attempts: int = Field(
        description="delivery attempts made (0: dead-lettered without one, e.g. queue full)"
    )
    failed_ms: int
    redrive: bool = Field(description="marked for re-drive, not yet delivered")
    event: dict[str, Any] = Field(description="the event, as the connector sends it")


class DeadLetterList(BaseModel):
    connector: str
    total: int
    items: list[DeadLetterOut]


class RedriveIn(BaseModel):
    model_config = {"extra": "forbid"}

    event_ids: list[str] | None = Field(
        None, max_length=MAX_DEAD_LETTERS, description="only these dead letters (default: all)"
    )


class RedriveOut(BaseModel):
    connector: str
    requested: int = Field(description="dead letters marked; the connectors service re-queues them")


def _letter_event(data: bytes) -> dict[str, Any]:
    return event_document(pb.Event.FromString(data))


def connectors_router(admin: ConnectorAdmin, auth: Callable[..., Awaitable[Any]]) -> APIRouter:
    """The routes; ``auth`` is the dependency that yields the caller (its ``tenant``)."""
    store = admin.store
    router = APIRouter(prefix="/api/v1/connectors", tags=["connectors"], responses=error_docs(common=True))
    Caller = Annotated[_Caller, Depends(auth)]

    async def existing(tenant: str, connector: str) -> ConnectorSpec:
        spec = await store.get(tenant, connector)
        if spec is None:
            raise NotFound(f"no connector {connector!r}")
        return spec

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        responses=error_docs(
            {
                409: "a connector with that id exists",
                422: "invalid definition, or a target the cloud may not reach (the field is named)",
            }
        ),
    )
    async def create_connector(body: ConnectorIn, who: Caller) -> ConnectorOut:
        """Define a connector (webhook, mqtt or kafka) for the caller's tenant. It delivers the
        events stored from now on. A target that resolves to an inside address (loopback,
        private, link-local, ...) is refused unless the operator allowed its network."""
        spec = ConnectorSpec.model_validate({**body.model_dump(), "updated_ms": now_ms()})
        spec = spec.model_copy(update={"webhook": body.webhook, "mqtt": body.mqtt, "kafka": body.kafka})
        return ConnectorOut.from_spec(await admin.create(who.tenant, spec))

    @router.get("")
    async def list_connectors(who: Caller) -> ConnectorList:
        specs = await store.list_connectors(who.tenant)
        return ConnectorList(items=[ConnectorOut.from_spec(s) for s in specs], total=len(specs))

    @router.get("/{connector}", responses=error_docs({404: "no such connector"}))
    async def get_connector(connector: ConnectorId, who: Caller) -> ConnectorOut:
        return ConnectorOut.from_spec(await existing(who.tenant, connector))

    @router.put(
        "/{connector}",
        responses=error_docs(
            {404: "no such connector", 422: "invalid definition, or a target the cloud may not reach"}
        ),
    )
    async def replace_connector(connector: ConnectorId, body: ConnectorIn, who: Caller) -> ConnectorOut:
        """Replace the definition; secrets left out are kept."""
        if body.id != connector:
            raise InvalidRequest(f"id: {body.id!r} differs from the path's connector id {connector!r}")
        old = await existing(who.tenant, connector)
        spec = ConnectorSpec.model_validate(
            {**body.model_dump(), "updated_ms": max(now_ms(), old.updated_ms + 1)}
        )
        spec = spec.model_copy(update={"webhook": body.webhook, "mqtt": body.mqtt, "kafka": body.kafka})
        return ConnectorOut.from_spec(await admin.replace(who.tenant, spec.with_secrets_of(old)))

    @router.delete(
        "/{connector}",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=error_docs({404: "no such connector"}),
    )
    async def delete_connector(connector: ConnectorId, who: Caller) -> Response:
        """Delete the connector and its dead letters (events it had queued are not sent)."""
        if not await store.delete(who.tenant, connector):
            raise NotFound(f"no connector {connector!r}")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get("/{connector}/dead-letters", responses=error_docs({404: "no such connector"}))
    async def list_dead_letters(
        connector: ConnectorId, who: Caller, limit: Annotated[int, Query(ge=1, le=MAX_DEAD_LETTERS)] = 100
    ) -> DeadLetterList:
        """The connector's dead letters, oldest first, with the reason of the last failure."""
        await existing(who.tenant, connector)
        letters = await store.list_dead_letters(who.tenant, connector, limit)
        total = await store.count_dead_letters(who.tenant, connector)
        items = [
            DeadLetterOut(
                event_id=d.event_id,
                reason=d.reason,
                attempts=d.attempts,
                failed_ms=d.failed_ms,
                redrive=d.redrive,
                event=_letter_event(d.event),
            )
            for d in letters
        ]
        return DeadLetterList(connector=connector, total=total, items=items)

    @router.post(
        "/{connector}/dead-letters/redrive",
        status_code=status.HTTP_202_ACCEPTED,
        responses=error_docs({404: "no such connector"}),
    )
    async def redrive_dead_letters(
        connector: ConnectorId, who: Caller, body: Annotated[RedriveIn | None, Body()] = None
    ) -> RedriveOut:
        """Mark dead letters (all, or ``event_ids``) for re-drive: the connectors service queues
        them again within ``connectors.refresh_s`` and removes each once it is delivered (one
        that fails again is dead-lettered again with the new reason)."""
        await existing(who.tenant, connector)
        ids = None if body is None else body.event_ids
        return RedriveOut(
            connector=connector, requested=await store.request_redrive(who.tenant, connector, ids)
        )

    return router
