"""REST routes of batch operations (``/api/v1/batch-operations``) and schedules
(``/api/v1/schedules``): docs/api.md "Batch operations and schedules".

Every route needs ``Permission.COMMAND`` (operators and tenant admins), reads included: an
operation or a schedule lists devices of every customer of the tenant, so customer users and
viewers do not see them.

No ``from __future__ import annotations`` here: see ``routes.registry``.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import BaseModel, Field

from fieldgate.cloud.api.rest.auth import AccessPolicy
from fieldgate.cloud.api.rest.models import error_docs
from fieldgate.cloud.api.rest.paging import PageQuery
from fieldgate.cloud.api.rest.routes.registry import ERRORS
from fieldgate.cloud.domain.batch import (
    FINAL_ELEMENT,
    ID_PATTERN,
    BatchAction,
    BatchElement,
    BatchOperation,
    BatchRequest,
    ElementStatus,
    Schedule,
    ScheduleIn,
    ScheduleRun,
    Selection,
)
from fieldgate.cloud.errors import InvalidRequest, NotFound, UnknownReference
from fieldgate.cloud.services.access import Permission, Principal
from fieldgate.cloud.services.batch import BatchOperations
from fieldgate.cloud.services.scheduler import next_time
from fieldgate.timeutil import now_ms

OperationId = Annotated[str, Path(max_length=64, description="the batch operation's id")]
ScheduleId = Annotated[str, Path(pattern=ID_PATTERN, description="the schedule's id")]


class Progress(BaseModel):
    total: int
    pending: int = Field(description="not invoked yet")
    queued: int = Field(description="invoked, waiting for the device (offline devices wait here)")
    delivered: int
    answered: int
    failed: int
    expired: int
    cancelled: int
    done: int = Field(description="elements in a final status (answered, failed, expired, cancelled)")


class BatchOut(BaseModel):
    operation: BatchOperation
    progress: Progress


class BatchList(BaseModel):
    items: list[BatchOperation]
    total: int
    page: int
    page_size: int


class ElementList(BaseModel):
    items: list[BatchElement]
    total: int
    page: int
    page_size: int


class ScheduleOut(BaseModel):
    schedule: Schedule
    next_ms: int | None = Field(description="when it runs next (None: disabled or done)")


class ScheduleList(BaseModel):
    items: list[ScheduleOut]


class RunList(BaseModel):
    items: list[ScheduleRun]


def progress_of(op: BatchOperation, counts: dict[str, int]) -> Progress:
    def n(s: ElementStatus) -> int:
        return counts.get(s.value, 0)

    return Progress(
        total=sum(counts.values()) or op.total,
        pending=n(ElementStatus.PENDING),
        queued=n(ElementStatus.QUEUED),
        delivered=n(ElementStatus.DELIVERED),
        answered=n(ElementStatus.ANSWERED),
        failed=n(ElementStatus.FAILED),
        expired=n(ElementStatus.EXPIRED),
        cancelled=n(ElementStatus.CANCELLED),
        done=sum(n(s) for s in FINAL_ELEMENT),
    )


def batch_router(ops: BatchOperations, policy: AccessPolicy) -> APIRouter:
    router = APIRouter(prefix="/api/v1", responses=ERRORS, tags=["batch operations and schedules"])
    Command = Annotated[Principal, Depends(policy.require(Permission.COMMAND))]
    store = ops.store

    @router.post("/batch-operations", status_code=status.HTTP_201_CREATED)
    async def create_batch(body: BatchRequest, who: Command) -> BatchOut:
        """Send one command to every device of the selection (422 naming the field for an
        unknown command, bad params for a device type, an empty or unknown selection)."""
        op = await ops.create(who.tenant, body, who.user)
        return BatchOut(operation=op, progress=progress_of(op, {ElementStatus.PENDING.value: op.total}))

    @router.get("/batch-operations")
    async def list_batches(who: Command, paging: PageQuery) -> BatchList:
        """The tenant's batch operations, newest first."""
        items, total = await store.list_operations(who.tenant, paging.page, paging.page_size)
        return BatchList(items=items, total=total, page=paging.page, page_size=paging.page_size)

    @router.get("/batch-operations/{operation_id}", responses=error_docs({404: "no such batch operation"}))
    async def get_batch(operation_id: OperationId, who: Command) -> BatchOut:
        """The operation with its progress counts (statuses mirrored from the invocations)."""
        op, counts = await ops.progress(who.tenant, operation_id)
        return BatchOut(operation=op, progress=progress_of(op, counts))

    @router.get(
        "/batch-operations/{operation_id}/devices", responses=error_docs({404: "no such batch operation"})
    )
    async def list_batch_devices(
        operation_id: OperationId,
        who: Command,
        paging: PageQuery,
    ) -> ElementList:
        """Each device's status and invocation id, by device token."""
        await ops.progress(who.tenant, operation_id)
        items, total = await store.list_elements(who.tenant, operation_id, paging.page, paging.page_size)
        return ElementList(items=items, total=total, page=paging.page, page_size=paging.page_size)

    @router.post(
        "/batch-operations/{operation_id}/cancel",
        responses=error_docs({404: "no such batch operation", 409: "the operation is completed"}),
    )
    async def cancel_batch(operation_id: OperationId, who: Command) -> BatchOut:
        """Cancel the devices not invoked yet; invocations already created carry on."""
        await ops.cancel(who.tenant, operation_id)
        op, counts = await ops.progress(who.tenant, operation_id)
        return BatchOut(operation=op, progress=progress_of(op, counts))

    # -- schedules -------------------------------------------------------------------------

    async def checked(tenant: str, body: ScheduleIn) -> None:
        action = body.action
        selection = (
            action.selection if isinstance(action, BatchAction) else Selection(devices=[action.device])
        )
        request = BatchRequest(
            command=action.command, params=action.params, ttl_s=action.ttl_s, selection=selection
        )
        try:
            await ops.validate(tenant, request)
        except UnknownReference as err:  # the device, group, type or command that does not exist
            named = {"command": "command", "device": "device"}.get(err.kind, "selection")
            raise err.at(f"action.{named}") from err
        except InvalidRequest as err:
            field = (
                str(err).replace("selection.devices", "device")
                if not isinstance(action, BatchAction)
                else str(err)
            )
            raise InvalidRequest(f"action.{field}") from err

    def out(s: Schedule) -> ScheduleOut:
        return ScheduleOut(schedule=s, next_ms=next_time(s, now_ms()))

    @router.post(
        "/schedules", status_code=status.HTTP_201_CREATED, responses=error_docs({409: "the id is taken"})
    )
    async def create_schedule(body: ScheduleIn, who: Command) -> ScheduleOut:
        """A cron (five fields, UTC) or one-shot (``at_ms``) schedule of a command or a batch."""
        await checked(who.tenant, body)
        now = now_ms()
        s = Schedule(
            **body.model_dump(), tenant=who.tenant, created_ms=now, updated_ms=now, initiator=who.user
        )
        return out(await store.create_schedule(who.tenant, s))

    @router.get("/schedules")
    async def list_schedules(who: Command) -> ScheduleList:
        return ScheduleList(items=[out(s) for s in await store.list_schedules(who.tenant)])

    async def existing(tenant: str, schedule_id: str) -> Schedule:
        s = await store.get_schedule(tenant, schedule_id)
        if s is None:
            raise NotFound(f"schedule {schedule_id!r} does not exist")
        return s

    @router.get("/schedules/{schedule_id}", responses=error_docs({404: "no such schedule"}))
    async def get_schedule(schedule_id: ScheduleId, who: Command) -> ScheduleOut:
        return out(await existing(who.tenant, schedule_id))

    @router.put("/schedules/{schedule_id}", responses=error_docs({404: "no such schedule"}))
    async def replace_schedule(schedule_id: ScheduleId, body: ScheduleIn, who: Command) -> ScheduleOut:
        """Replace the timing and the action; the run history is kept."""
        if body.id != schedule_id:
            raise InvalidRequest(f"id: the body's id {body.id!r} is not the path's {schedule_id!r}")
        old = await existing(who.tenant, schedule_id)
        await checked(who.tenant, body)
        s = old.model_copy(update={**dict(body), "updated_ms": now_ms()})
        return out(await store.replace_schedule(who.tenant, s))

    @router.delete(
        "/schedules/{schedule_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        responses=error_docs({404: "no such schedule"}),
    )
    async def delete_schedule(schedule_id: ScheduleId, who: Command) -> Response:
        if not await store.delete_schedule(who.tenant, schedule_id):
            raise NotFound(f"schedule {schedule_id!r} does not exist")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get("/schedules/{schedule_id}/runs", responses=error_docs({404: "no such schedule"}))
    async def list_schedule_runs(
        schedule_id: ScheduleId, who: Command, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> RunList:
        """The due times that ran (newest first), which replica ran them and what they did."""
        await existing(who.tenant, schedule_id)
        return RunList(items=await store.list_runs(who.tenant, schedule_id, limit))

    return router
