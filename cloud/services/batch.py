"""Batch operations: one command to many devices, invoked at a bounded rate, tracked per device.

:meth:`BatchOperations.create` resolves the selection (explicit list, registry filter or device
group through :class:`GroupMembers`), checks the command and its parameters against every
device type in it (as :class:`~fieldgate.cloud.services.commands.CommandService` would, so a bad
request is refused with 422 before anything is invoked) and stores the operation with one
PENDING element per device. The runner (:meth:`start`, inside the ``api`` service) then
invokes the elements through CommandService with at most ``max_concurrency`` invocations in
flight and at most ``max_per_s`` started per second, and afterwards mirrors each element's
status from the invocation store (queued → delivered → answered | failed | expired) until
every element is final. Offline devices' invocations stay QUEUED and are delivered by the
existing command machinery when the device comes back. An element is final once failed or
expired: the device's late answer (the invocation turns LATE) does not change it, and an
invocation first seen LATE is recorded as failed with its reason — the operation records what
happened while it ran; the invocation itself shows ``late``. Like every invocation, an
element's is answered only by its own device (cloud/pipeline/delivery.py).

Never invoked twice: an element's invocation id is derived from (tenant, operation, device)
(:func:`element_invocation_id`) and handed to CommandService, whose invocation store refuses a
second create of the same id (Conflict). A runner that crashed after the invocation was created
but before the element recorded it, or a second ``api`` replica running the same operation,
gets Conflict and records the existing invocation instead. Resuming is therefore just running
every unfinished operation again at start.

Cancelling marks the operation CANCELLED and its PENDING elements CANCELLED; invocations
already created are left alone (they are mirrored until final). A runner that was invoking an
element at that moment records it as queued: the element shows what really happened.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from typing import Protocol

from fieldgate.cloud.domain.batch import (
    FINAL_ELEMENT,
    MAX_DEVICES,
    BatchElement,
    BatchOperation,
    BatchRequest,
    ElementStatus,
    OperationStatus,
    Selection,
)
from fieldgate.cloud.errors import BusError, Conflict, InvalidRequest, NotFound, UnknownReference
from fieldgate.cloud.services.commands import CommandService, check_ttl, validate_params
from fieldgate.cloud.store.batch import BatchStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms
from fieldgate.v1 import services_pb2 as svc

log = logging.getLogger(__name__)

_NS = uuid.UUID("6f1d8a52-6a43-4f0e-9a57-3c1c3b0c9b11")
CHUNK = 100
PAGE = 1000

MIRROR: dict[int, ElementStatus] = {
    svc.COMMAND_STATUS_QUEUED: ElementStatus.QUEUED,
    svc.COMMAND_STATUS_DELIVERED: ElementStatus.DELIVERED,
    svc.COMMAND_STATUS_ANSWERED: ElementStatus.ANSWERED,
    svc.COMMAND_STATUS_FAILED: ElementStatus.FAILED,
    svc.COMMAND_STATUS_EXPIRED: ElementStatus.EXPIRED,
    svc.COMMAND_STATUS_LATE: ElementStatus.FAILED,  # it had failed; the answer came too late
}
_IN_FLIGHT = (ElementStatus.QUEUED, ElementStatus.DELIVERED)


def element_invocation_id(tenant: str, operation: str, device: str) -> str:
    """The invocation id of one element: the same on every attempt, so it is created once."""
    return uuid.uuid5(_NS, f"batch/{tenant}/{operation}/{device}").hex


def derived_id(*parts: str) -> str:
    return uuid.uuid5(_NS, "/".join(parts)).hex


class GroupMembers(Protocol):
    """The device tokens of a device group, nested groups included (the site store,
    cloud/store/site.py, is one); NotFound for an unknown group."""

    async def members(self, tenant: str, group: str) -> list[str]: ...


class BatchOperations:
    """Creates, runs, resumes and cancels batch operations (see the module docstring)."""

    def __init__(
        self,
        store: BatchStore,
        registry: Registry,
        commands: CommandService,
        *,
        groups: GroupMembers | None = None,
        max_concurrency: int = 8,
        max_per_s: float = 200.0,
        poll_s: float = 1.0,
        rescan_s: float = 30.0,
        mirror_s: float = 2.0,
    ) -> None:
        self.store = store
        self._registry = registry
        self._commands = commands
        self._groups = groups
        self._limit = asyncio.Semaphore(max(1, max_concurrency))
        # Elements read per round: a few per slot, so a cancel (checked between rounds) stops
        # the rest quickly, and an operation in this process is checked before each invocation.
        self._chunk = min(CHUNK, 4 * max(1, max_concurrency))
        self._cancelled: set[tuple[str, str]] = set()
        self._interval_s = 1.0 / max_per_s if max_per_s > 0 else 0.0
        self._next_start = 0.0
        self._pace_lock = asyncio.Lock()
        self._poll_s = poll_s
        self._rescan_s = rescan_s
        # The runner re-reads an operation's in-flight invocations at most every mirror_s (a
        # large batch waiting for offline devices costs one read per device per round); a GET
        # of the operation mirrors at once.
        self._mirror_s = mirror_s
        self._mirrored: dict[tuple[str, str], float] = {}
        self._active: dict[tuple[str, str], None] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.invoked = 0  # invocations this process created
        self.already_invoked = 0  # Conflict: created before (a resume, another replica)

    # -- requests ----------------------------------------------------------------------------

    async def resolve(self, tenant: str, selection: Selection) -> list[str]:
        """The device tokens of ``selection`` (InvalidRequest naming the field)."""
        if selection.devices is not None:
            missing = []
            for token in selection.devices:
                if await self._registry.get_device(tenant, token) is None:
                    missing.append(token)
            if missing:
                raise UnknownReference("device", missing[0], "named by selection.devices")
            return list(selection.devices)
        if selection.group is not None:
            if self._groups is None:
                raise InvalidRequest("selection.group: device groups are not available on this cloud")
            try:
                members = await self._groups.members(tenant, selection.group)
            except NotFound as err:
                raise UnknownReference("device group", selection.group, "named by selection.group") from err
            return list(dict.fromkeys(members))
        flt = selection.filter
        assert flt is not None
        out: list[str] = []
        page = 1
        while True:
            found = await self._registry.list_devices(tenant, page, PAGE)
            for dev in found.items:
                if flt.device_type is not None and dev.device_type != flt.device_type:
                    continue
                if flt.token_prefix is not None and not dev.token.startswith(flt.token_prefix):
                    continue
                out.append(dev.token)
            if len(out) > MAX_DEVICES:
                raise InvalidRequest(f"selection.filter: more than {MAX_DEVICES} devices match")
            if page * PAGE >= found.total or not found.items:
                return sorted(out)
            page += 1

    async def _check(self, tenant: str, devices: Iterable[str], req: BatchRequest) -> None:
        """The command and params against every device type of the selection."""
        types: set[str] = set()
        for token in devices:
            dev = await self._registry.get_device(tenant, token)
            if dev is not None:
                types.add(dev.device_type)
        for type_token in sorted(types):
            dtype = await self._registry.get_device_type(tenant, type_token)
            if dtype is None:
                raise UnknownReference("device type", type_token, "of a selected device")
            definition = next((c for c in dtype.commands if c.name == req.command), None)
            if definition is None:
                raise UnknownReference(
                    "command", req.command, f"device type '{type_token}' has no such command"
                )
            try:
                validate_params(type_token, definition, req.params)
            except InvalidRequest as err:
                raise InvalidRequest(f"params: {err} (device type {type_token!r})") from err
        try:
            check_ttl(req.ttl_s, 1)
        except InvalidRequest as err:
            raise InvalidRequest(f"ttl_s: {err}") from err

    async def validate(self, tenant: str, req: BatchRequest) -> list[str]:
        """The selection's devices, once the command and params suit every one of them."""
        devices = await self.resolve(tenant, req.selection)
        if not devices:
            raise InvalidRequest("selection: no device matches")
        await self._check(tenant, devices, req)
        return devices

    async def create(
        self,
        tenant: str,
        req: BatchRequest,
        initiator: str,
        *,
        schedule: str | None = None,
        op_id: str | None = None,
    ) -> BatchOperation:
        """Validate and store a new operation; the runner invokes it. InvalidRequest naming the
        field; Conflict if ``op_id`` exists (a schedule's run that already created it)."""
        devices = await self.validate(tenant, req)
        now = now_ms()
        op = BatchOperation(
            id=op_id or uuid.uuid4().hex,
            tenant=tenant,
            command=req.command,
            params=dict(req.params),
            ttl_s=req.ttl_s,
            selection=req.selection,
            initiator=initiator,
            schedule=schedule,
            total=len(devices),
            created_ms=now,
            updated_ms=now,
        )
        await self.store.create_operation(tenant, op, devices)
        self._active[(tenant, op.id)] = None
        self._wake.set()
        return op

    async def get(self, tenant: str, op_id: str) -> BatchOperation:
        op = await self.store.get_operation(tenant, op_id)
        if op is None:
            raise NotFound(f"batch operation {op_id!r} does not exist")
        return op

    async def progress(self, tenant: str, op_id: str) -> tuple[BatchOperation, dict[str, int]]:
        """The operation and its element counts, statuses mirrored from the invocations first."""
        op = await self.get(tenant, op_id)
        if op.status is not OperationStatus.COMPLETED:
            await self._mirror(tenant, op)
            op = await self.get(tenant, op_id)
        return op, await self.store.count_elements(tenant, op_id)

    async def cancel(self, tenant: str, op_id: str) -> BatchOperation:
        """Stop invoking: PENDING elements are cancelled. Conflict for a completed operation."""
        op = await self.get(tenant, op_id)
        if op.status is OperationStatus.COMPLETED:
            raise Conflict(f"batch operation {op_id!r} is completed")
        self._cancelled.add((tenant, op_id))
        if op.status is not OperationStatus.CANCELLED:
            op = op.model_copy(update={"status": OperationStatus.CANCELLED, "updated_ms": now_ms()})
            await self.store.save_operation(tenant, op)
        await self.store.cancel_pending(tenant, op_id)
        return op

    # -- the runner --------------------------------------------------------------------------

    def forget_tenant(self, tenant: str) -> None:
        """The tenant was deleted: stop tracking its operations (its store rows are gone)."""
        for keys in (self._active, self._mirrored):
            for key in [k for k in keys if k[0] == tenant]:
                keys.pop(key, None)
        self._cancelled = {k for k in self._cancelled if k[0] != tenant}

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="batch-operations")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def rescan(self) -> None:
        """Every unfinished operation of every tenant becomes active (start; other replicas')."""
        for tenant in await self._registry.list_tenants():
            for op in await self.store.unfinished_operations(tenant.token):
                self._active[(tenant.token, op.id)] = None

    async def _loop(self) -> None:
        last_scan = -1e18
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() - last_scan >= self._rescan_s:
                    await self.rescan()
                    last_scan = loop.time()
                for key in list(self._active):
                    if not await self.run_once(*key):
                        self._active.pop(key, None)
                        self._mirrored.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception:  # task top: log, retry on the next round
                log.exception("batch operations: a round failed; retrying")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            except TimeoutError:
                pass

    async def run_once(self, tenant: str, op_id: str) -> bool:
        """Advance one operation: invoke its PENDING elements, mirror the others. False once
        there is nothing left to do for it."""
        op = await self.store.get_operation(tenant, op_id)
        if op is None or op.status is OperationStatus.COMPLETED:
            return False
        if op.status is OperationStatus.PENDING:
            while True:
                pending = await self.store.elements_in(tenant, op.id, [ElementStatus.PENDING], self._chunk)
                if not pending:
                    break
                await asyncio.gather(*(self._invoke(tenant, op, e) for e in pending))
                current = await self.store.get_operation(tenant, op.id)
                if current is None or current.status is not OperationStatus.PENDING:
                    return current is not None  # cancelled meanwhile: keep mirroring
            op = op.model_copy(update={"status": OperationStatus.RUNNING, "updated_ms": now_ms()})
            current = await self.store.get_operation(tenant, op.id)
            if current is not None and current.status is OperationStatus.PENDING:
                await self.store.save_operation(tenant, op)
        now = asyncio.get_running_loop().time()
        if now - self._mirrored.get((tenant, op.id), -1e18) < self._mirror_s:
            return True
        self._mirrored[(tenant, op.id)] = now
        return not await self._mirror(tenant, op)

    async def _pace(self) -> None:
        if not self._interval_s:
            return
        loop = asyncio.get_running_loop()
        async with self._pace_lock:
            wait = self._next_start - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_start = max(loop.time(), self._next_start) + self._interval_s

    async def _invoke(self, tenant: str, op: BatchOperation, element: BatchElement) -> None:
        inv_id = element_invocation_id(tenant, op.id, element.device)
        async with self._limit:
            await self._pace()
            if (tenant, op.id) in self._cancelled:
                return  # cancelled here while this one waited for its turn
            status, reason = ElementStatus.QUEUED, ""
            try:
                state = await self._commands.invoke(
                    tenant,
                    element.device,
                    op.command,
                    dict(op.params),
                    op.ttl_s,
                    op.initiator or f"batch:{op.id}",
                    invocation_id=inv_id,
                )
                self.invoked += 1
                status = MIRROR.get(state.status, ElementStatus.QUEUED)
            except Conflict:
                self.already_invoked += 1
                existing = await self._commands.get(tenant, inv_id)
                status, reason = MIRROR.get(existing.status, ElementStatus.QUEUED), existing.reason
            except (NotFound, InvalidRequest) as err:  # the device or its type changed since
                status, reason, inv_id = ElementStatus.FAILED, str(err), ""
            except BusError as err:  # CommandService marked the invocation FAILED
                status, reason = ElementStatus.FAILED, str(err)
        await self.store.save_elements(
            tenant,
            [
                element.model_copy(
                    update={
                        "status": status,
                        "invocation": inv_id or None,
                        "reason": reason,
                        "updated_ms": now_ms(),
                    }
                )
            ],
        )

    async def _mirror(self, tenant: str, op: BatchOperation) -> bool:
        """Copy the invocations' statuses onto in-flight elements; True once every element is
        final (the operation is then COMPLETED, unless cancelled)."""
        changed: list[BatchElement] = []
        in_flight = await self.store.elements_in(tenant, op.id, _IN_FLIGHT, 100_000)

        async def look(e: BatchElement) -> None:
            if e.invocation is None:
                return
            async with self._limit:
                try:
                    state = await self._commands.get(tenant, e.invocation)
                except NotFound:
                    return
            status = MIRROR.get(state.status, e.status)
            if status != e.status:
                changed.append(
                    e.model_copy(update={"status": status, "reason": state.reason, "updated_ms": now_ms()})
                )

        await asyncio.gather(*(look(e) for e in in_flight))
        await self.store.save_elements(tenant, changed)
        counts = await self.store.count_elements(tenant, op.id)
        final = sum(n for s, n in counts.items() if ElementStatus(s) in FINAL_ELEMENT)
        done = final >= sum(counts.values())
        if done and op.status is not OperationStatus.CANCELLED:
            current = await self.store.get_operation(tenant, op.id)
            if current is not None and current.status is OperationStatus.RUNNING:
                await self.store.save_operation(
                    tenant,
                    current.model_copy(update={"status": OperationStatus.COMPLETED, "updated_ms": now_ms()}),
                )
        return done
