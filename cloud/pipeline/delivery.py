"""Command delivery: from ``[command-invocations]`` to the edge that owns the device, and the
status of every invocation until it is answered, failed or expired.

Four inputs move an invocation forward (the invocation store ignores backward moves, and
terminal states are final, so the order in which they arrive does not matter):

* ``[command-invocations]`` (consumer group ``command-delivery.<replica>``, one per ingest
  replica — see below): the command_invocation event published by
  :class:`~fieldgate.cloud.services.commands.CommandService`. It is stored in the event store
  (idempotent; so the invocation shows in the device's event history) and, if the device's
  edge is connected *to this process*, sent down as ``CommandDown``. The status stays QUEUED
  until the edge reports; if no edge is connected here it just stays QUEUED.
* Routes (:class:`~fieldgate.cloud.pipeline.sessions.EdgeSessions` route listener): when a device becomes
  reachable — its edge connected, or it sent its first event through an edge — its QUEUED
  invocations are sent (again). The edge de-duplicates a re-sent invocation id.
* ``CommandStatusUpdate`` from edges (status listener): DELIVERED / FAILED / EXPIRED are
  applied; QUEUED (kept on the edge's disk) leaves the invocation QUEUED.
* ``[persisted]`` (consumer group ``command-responses``): a command_response event marks its
  invocation ANSWERED with the response — only if it is the answer of the invocation's own
  device (same tenant, same device; batch invocations too). Inbound processing has already
  written the verdict into ``command_response.refused``; this stage applies the same rule
  (:func:`~fieldgate.cloud.domain.commands.response_refusal`) to the invocation it reads, and a
  refused response (unknown invocation, another device's) changes nothing and is counted in
  ``stats.responses_refused``. An answer to an invocation that had already FAILED (the edge's
  response timeout) or EXPIRED makes it LATE: linked, with the response, the reason kept.

A sweep (every ``sweep_interval_s``) expires QUEUED invocations past their time-to-live and
retries sends that were refused because an edge's outbound queue was full.

Several ingest replicas: an edge holds one stream, to one replica, and only that replica can
write to it. So every replica must see every invocation: each reads ``[command-invocations]``
in a consumer group of its own, ``command-delivery.<replica_id>`` (stable across restarts of
the replica, so a restart resumes from its committed offsets). The replica hosting the
device's edge sends; the others count it in ``stats.waiting_offline`` and leave it QUEUED.
When the edge fails over to another replica, that replica learns the edge's devices from
what the edge sends (its buffered events are sent again first, and its unconfirmed command
statuses) and flushes their QUEUED invocations, like after a restart. Nothing here needs to
be unique per invocation: a first start of a replica re-reads the topic's history (stores
the invocation events again, idempotently; skips everything no longer QUEUED; expires what
is past its time-to-live), the invocation store serialises status moves (terminal states are
final, so two replicas' sweeps expiring the same invocation change it once), and an edge
de-duplicates an invocation id it already has.

Bounded state: the set of devices waiting for a flush holds at most ``max_pending_devices``;
on overflow it is dropped and the next flush re-scans every reachable device instead
(counted in ``stats.flush_overflows``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fieldgate.cloud.bus import COMMAND_INVOCATIONS, PERSISTED, Bus, Record
from fieldgate.cloud.config import REPLICA_ID_PATTERN
from fieldgate.cloud.domain.commands import REFUSED_UNKNOWN, response_refusal
from fieldgate.cloud.errors import Conflict
from fieldgate.cloud.pipeline.sessions import EdgeSessions
from fieldgate.cloud.pipeline.stage import (
    ConsumerStage,
    PoisonRecord,
    StageSettings,
    decode_batch,
    decode_event,
    tenant_of,
)
from fieldgate.cloud.store.events import EventStore
from fieldgate.cloud.store.invocations import InvocationStore
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc

# Consumer groups: [command-invocations] is read by every ingest replica in a group of its own,
# <DELIVERY_GROUP>.<replica_id>; [persisted] (command responses: any replica may apply them,
# once is enough) in one group shared by all replicas.
DELIVERY_GROUP = "command-delivery"
RESPONSES_GROUP = "command-responses"
_REPLICA_ID = re.compile(REPLICA_ID_PATTERN)


def delivery_group(replica_id: str) -> str:
    """The consumer group in which the ingest replica ``replica_id`` reads [command-invocations]."""
    if not _REPLICA_ID.fullmatch(replica_id):
        raise ValueError(
            f"replica id {replica_id!r} is invalid: 1-100 characters, letters, digits, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return f"{DELIVERY_GROUP}.{replica_id}"


log = logging.getLogger(__name__)

# Statuses an edge may report (ANSWERED travels up as a command_response event instead).
_EDGE_STATUSES = frozenset(
    {svc.COMMAND_STATUS_DELIVERED, svc.COMMAND_STATUS_FAILED, svc.COMMAND_STATUS_EXPIRED}
)


@dataclass(slots=True)
class CommandStats:
    invocations_in: int = 0
    sent: int = 0  # CommandDown queued on an edge stream (first sends and re-sends)
    waiting_offline: int = 0  # no connected edge owned the device; stays QUEUED
    refused_queue_full: int = 0  # edge stream full; retried by the sweep
    not_pending: int = 0  # invocation already past QUEUED when we got to it
    expired: int = 0
    status_updates: int = 0  # DELIVERED/FAILED/EXPIRED applied from edges
    status_ignored: int = 0  # QUEUED/unknown statuses from edges
    answered: int = 0
    late: int = 0  # answers to invocations that had failed or expired (now LATE)
    responses_refused: int = 0  # command_responses not applied: unknown invocation or another device's
    responses_unmatched: int = 0  # of those: for an invocation we do not know
    flushes: int = 0  # device flushes (route appeared / retry)
    flush_overflows: int = 0
    task_failures: int = 0  # flush or sweep loop errors (logged, retried)


def _down(tenant: str, device: str, invocation: pb.CommandInvocation) -> svc.CommandDown:
    return svc.CommandDown(tenant=tenant, device=device, invocation=invocation)


class CommandDelivery:
    """Delivers invocations to edges and tracks their status (see the module docstring).

    ``replica_id`` names this ingest replica (its consumer group on [command-invocations]);
    give each replica its own and keep it across restarts. ValueError if it is malformed.
    """

    def __init__(
        self,
        bus: Bus,
        sessions: EdgeSessions,
        invocations: InvocationStore,
        event_store: EventStore,
        *,
        topic_prefix: str = "fieldgate",
        replica_id: str = "default",
        settings: StageSettings | None = None,
        sweep_interval_s: float = 1.0,
        max_pending_devices: int = 10_000,
        flush_concurrency: int = 8,
    ) -> None:
        self.stats = CommandStats()
        self.group = delivery_group(replica_id)
        self._sessions = sessions
        self._invocations = invocations
        self._events = event_store
        self._prefix = topic_prefix
        self._sweep_interval_s = sweep_interval_s
        self._max_pending = max_pending_devices
        self._flush_limit = asyncio.Semaphore(max(1, flush_concurrency))
        # Devices to flush (dict: ordered set) and devices whose send was refused (queue full).
        self._wanted: dict[tuple[str, str], None] = {}
        self._retry: dict[tuple[str, str], None] = {}
        self._rescan = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.delivery_stage = ConsumerStage(
            "command-delivery",
            bus,
            group=self.group,
            stage=COMMAND_INVOCATIONS,
            handler=self._handle_invocations,
            settings=settings,
            topic_prefix=topic_prefix,
        )
        self.response_stage = ConsumerStage(
            "command-responses",
            bus,
            group=RESPONSES_GROUP,
            stage=PERSISTED,
            handler=self._handle_responses,
            settings=settings,
            topic_prefix=topic_prefix,
        )

    async def start(self) -> None:
        if self._tasks:
            return
        self._sessions.add_route_listener(self._on_route)
        self._sessions.add_status_listener(self._on_status)
        await self.delivery_stage.start()
        await self.response_stage.start()
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="commands:flush"),
            asyncio.create_task(self._sweep_loop(), name="commands:sweep"),
        ]
        # Devices already reachable (ingest may have started first) get their queue now.
        self._rescan = True
        self._wake.set()

    async def stop(self) -> None:
        self._sessions.remove_route_listener(self._on_route)
        self._sessions.remove_status_listener(self._on_status)
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        await self.delivery_stage.stop()
        await self.response_stage.stop()

    # -- [command-invocations] ---------------------------------------------------------------

    async def _handle_invocations(self, records: Sequence[Record]) -> None:
        tenant = tenant_of(records[0], self._prefix)
        events: list[pb.Event] = []
        for record in records:
            ev = decode_event(record, tenant)
            if ev.WhichOneof("payload") != "command_invocation" or not ev.device:
                raise PoisonRecord(record, "not a command_invocation event with a device")
            if not ev.alternate_id:
                ev.alternate_id = ev.command_invocation.invocation
            if not ev.id:
                ev.id = ev.command_invocation.invocation
            events.append(ev)
        await self._events.add(tenant, events)
        for ev in events:
            self.stats.invocations_in += 1
            await self._deliver(tenant, ev.device, ev.command_invocation, ev.event_time_ms)

    async def _deliver(self, tenant: str, device: str, inv: pb.CommandInvocation, created_ms: int) -> None:
        state = await self._invocations.get(tenant, inv.invocation)
        if state is None:
            # CommandService stores before it publishes; this is a replay onto a fresh store.
            state = svc.InvocationState(
                id=inv.invocation,
                tenant=tenant,
                device=device,
                command=inv.command,
                params_json=inv.params_json,
                status=svc.COMMAND_STATUS_QUEUED,
                created_ms=created_ms,
                updated_ms=now_ms(),
                expires_ms=inv.expires_ms,
            )
            try:
                state = await self._invocations.create(state)
            except Conflict:
                pass  # created meanwhile; the store's copy is what the next lookup sees
        if state.status != svc.COMMAND_STATUS_QUEUED:
            self.stats.not_pending += 1
            return
        await self._send(tenant, device, state.expires_ms, inv)

    async def _send(self, tenant: str, device: str, expires_ms: int, inv: pb.CommandInvocation) -> None:
        if expires_ms and expires_ms <= now_ms():
            await self._expire(tenant, inv.invocation)
            return
        if await self._sessions.send_command(tenant, device, _down(tenant, device, inv)):
            self.stats.sent += 1
        elif self._sessions.is_connected(tenant, device):
            self.stats.refused_queue_full += 1
            self._retry[(tenant, device)] = None
        else:
            self.stats.waiting_offline += 1

    async def _expire(self, tenant: str, invocation: str) -> None:
        state = await self._invocations.update_status(
            tenant, invocation, svc.COMMAND_STATUS_EXPIRED, reason="time-to-live passed before delivery"
        )
        if state is not None and state.status == svc.COMMAND_STATUS_EXPIRED:
            self.stats.expired += 1

    # -- [persisted]: command responses ----------------------------------------------------

    async def _handle_responses(self, records: Sequence[Record]) -> None:
        tenant = tenant_of(records[0], self._prefix)
        for record in records:
            for ev in decode_batch(record, tenant, check_events=False).events:
                if ev.WhichOneof("payload") == "command_response":
                    await self._apply_response(tenant, ev)

    async def _apply_response(self, tenant: str, ev: pb.Event) -> None:
        """Link a command_response to its invocation if it is its device's (module docstring)."""
        answer = ev.command_response
        refused = answer.refused  # inbound's verdict (it logged it)
        if not refused:
            current = await self._invocations.get(tenant, answer.invocation)
            refused = response_refusal(current, tenant, ev.device)
            if refused:  # inbound let it pass: stored before this rule, or the invocation is gone
                log.warning(
                    "tenant %s: command_response of %r for invocation %r refused: %s",
                    tenant,
                    ev.device,
                    answer.invocation,
                    refused,
                )
        if refused:
            self.stats.responses_refused += 1
            if refused == REFUSED_UNKNOWN:
                self.stats.responses_unmatched += 1
            return
        state = await self._invocations.update_status(
            tenant, answer.invocation, svc.COMMAND_STATUS_ANSWERED, response_json=answer.response_json
        )
        if state is None:  # deleted between the two calls (its tenant is being deleted)
            self.stats.responses_refused += 1
            self.stats.responses_unmatched += 1
        elif state.status == svc.COMMAND_STATUS_LATE:
            self.stats.late += 1
        else:
            self.stats.answered += 1

    # -- edge listeners --------------------------------------------------------------------

    def _on_route(self, tenant: str, device: str) -> None:
        if len(self._wanted) >= self._max_pending:
            self.stats.flush_overflows += 1
            self._wanted.clear()
            self._rescan = True
        else:
            self._wanted[(tenant, device)] = None
        self._wake.set()

    async def _on_status(self, update: svc.CommandStatusUpdate) -> None:
        if update.status not in _EDGE_STATUSES:
            self.stats.status_ignored += 1
            return
        state = await self._invocations.update_status(
            update.tenant, update.invocation, update.status, reason=update.reason
        )
        if state is None:
            log.warning("edge reported status for unknown invocation %r", update.invocation)
            return
        self.stats.status_updates += 1

    # -- background loops --------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._rescan:
                self._rescan = False
                self._wanted.clear()
                devices = self._sessions.reachable_devices()
            else:
                devices = list(self._wanted)
                self._wanted.clear()
            results = await asyncio.gather(*(self._flush_guarded(t, d) for t, d in devices))
            for dev, ok in zip(devices, results, strict=True):
                if not ok:
                    self._retry[dev] = None  # the sweep wakes it again
            if len(self._retry) > self._max_pending:
                self.stats.flush_overflows += 1
                self._retry.clear()
                self._rescan = True

    async def _flush_guarded(self, tenant: str, device: str) -> bool:
        async with self._flush_limit:
            try:
                await self._flush_device(tenant, device)
                return True
            except Exception:  # task top (one device's flush): count, log, retry by the sweep
                self.stats.task_failures += 1
                log.exception("commands: flushing %s/%s failed; retrying", tenant, device)
                return False

    async def _flush_device(self, tenant: str, device: str) -> None:
        if not self._sessions.is_connected(tenant, device):
            return
        self.stats.flushes += 1
        for state in await self._invocations.pending_for_device(tenant, device):
            inv = pb.CommandInvocation(
                invocation=state.id,
                command=state.command,
                params_json=state.params_json,
                expires_ms=state.expires_ms,
            )
            await self._send(tenant, device, state.expires_ms, inv)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                expired = await self._invocations.expire_due(now_ms())
            except Exception:  # task top: count, log, try again next round
                self.stats.task_failures += 1
                log.exception("commands: expiry sweep failed")
                continue
            self.stats.expired += len(expired)
            for state in expired:
                log.info("tenant %s: invocation %s for %r expired", state.tenant, state.id, state.device)
            if self._retry:
                for key in self._retry:
                    self._on_route(*key)
                self._retry.clear()
