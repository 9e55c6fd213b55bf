"""Inbound processing: [decoded] → [enriched] (known devices) or [unregistered] (unknown ones).

For every event accepted from an edge this stage looks the device up in the registry, gives
the event its cloud id — deterministic, ``uuid5(NAMESPACE_URL, "<tenant>/<device>/<alternate
id>")`` (:mod:`fieldgate.cloud.ids`), so a retried event gets the same id — and the device's active assignment token, and
drops repeats of an alternate id it has just seen (within the polled records and in a bounded
LRU of recent ids). The LRU only saves work: the event store is the authority on duplicates
(its ``add`` is idempotent), so forgetting an id never stores an event twice.

Events of devices the registry does not know go to ``[unregistered]`` unchanged; the
registration stage decides whether to register the device and sends them back here.

Command responses are checked here, before they are stored: a ``command_response`` is linked
to its invocation only when the invocation (looked up in the tenant's invocation store) is for
the device that sent it (:func:`~fieldgate.cloud.domain.commands.response_refusal`). Otherwise the
reason is written into ``command_response.refused`` (whatever the device put there is
overwritten) and counted in ``stats.responses_refused``: the event is still stored and shown
in the device's history, but the event store does not file it under the invocation, and the
command response stage does not apply it.

Device lookups are cached in a small LRU whose entries live ``device_cache_ttl_s`` (2 s by
default), so a new or released assignment shows up on events within seconds. Unknown devices
are not cached: right after registration their re-sent events must find the new device.

Records are committed only after the enriched/unregistered records are published
(at-least-once; see :mod:`fieldgate.cloud.pipeline.stage`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from fieldgate.cloud.bus import DECODED, ENRICHED, UNREGISTERED, Bus, Record, topic_name
from fieldgate.cloud.domain.commands import response_refusal
from fieldgate.cloud.ids import DeviceIds, event_id
from fieldgate.cloud.pipeline.stage import (
    ConsumerStage,
    LruSet,
    PoisonRecord,
    StageSettings,
    TtlLru,
    decode_batch,
    messages_by_device,
    tenant_of,
)
from fieldgate.cloud.store.invocations import InvocationStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc

GROUP = "inbound"

log = logging.getLogger(__name__)

__all__ = ["GROUP", "InboundProcessing", "InboundStats", "event_id"]


@dataclass(slots=True)
class InboundStats:
    events_in: int = 0
    enriched: int = 0
    unregistered: int = 0  # events of unknown devices sent to [unregistered]
    duplicates: int = 0  # repeats of a recently seen alternate id, dropped
    device_lookups: int = 0  # registry round trips (cache misses)
    responses_refused: int = 0  # command_responses not linked: unknown invocation or another device's


@dataclass(frozen=True, slots=True)
class _DeviceInfo:
    assignment: str  # active assignment token, "" when none


class InboundProcessing:
    """The inbound processing stage (consumer group ``inbound``)."""

    def __init__(
        self,
        bus: Bus,
        registry: Registry,
        invocations: InvocationStore,
        *,
        topic_prefix: str = "fieldgate",
        settings: StageSettings | None = None,
        device_cache_size: int = 10_000,
        device_cache_ttl_s: float = 2.0,
        recent_ids: int = 200_000,
    ) -> None:
        self.stats = InboundStats()
        self._bus = bus
        self._registry = registry
        self._invocations = invocations
        self._prefix = topic_prefix
        self._devices: TtlLru[tuple[str, str], _DeviceInfo] = TtlLru(device_cache_size, device_cache_ttl_s)
        self._recent: LruSet[tuple[str, str, str]] = LruSet(recent_ids)
        self.stage = ConsumerStage(
            "inbound",
            bus,
            group=GROUP,
            stage=DECODED,
            handler=self._handle,
            settings=settings,
            topic_prefix=topic_prefix,
        )

    async def start(self) -> None:
        await self.stage.start()

    async def stop(self) -> None:
        await self.stage.stop()

    async def _device(self, tenant: str, device: str) -> _DeviceInfo | None:
        key = (tenant, device)
        info = self._devices.get(key)
        if info is not None:
            return info
        self.stats.device_lookups += 1
        if await self._registry.get_device(tenant, device) is None:
            return None
        assignment = await self._registry.active_assignment(tenant, device)
        info = _DeviceInfo(assignment=assignment.token if assignment is not None else "")
        self._devices.put(key, info)
        return info

    async def _check_responses(self, tenant: str, responses: Sequence[pb.Event]) -> None:
        """Set ``command_response.refused`` on each response: "" when its invocation is its own
        device's, else the reason (see the module docstring). One lookup per invocation id."""
        states: dict[str, svc.InvocationState | None] = {}
        for ev in responses:
            inv_id = ev.command_response.invocation
            if inv_id not in states:
                states[inv_id] = await self._invocations.get(tenant, inv_id) if inv_id else None
            reason = response_refusal(states[inv_id], tenant, ev.device)
            ev.command_response.refused = reason
            if reason:
                self.stats.responses_refused += 1
                log.warning(
                    "tenant %s: command_response of %r for invocation %r refused: %s",
                    tenant,
                    ev.device,
                    inv_id,
                    reason,
                )

    async def _handle(self, records: Sequence[Record]) -> None:
        """One pass over the polled events (this runs for every event: kept flat and cheap).

        Checks what :func:`decode_batch` would check for records entering from outside (the
        event's tenant is the topic's, device and alternate id are set) in the same pass that
        enriches, instead of a pass of its own.
        """
        tenant = tenant_of(records[0], self._prefix)
        recent = self._recent
        known: dict[str, tuple[_DeviceInfo | None, DeviceIds | None]] = {}
        enriched: list[pb.Event] = []
        unregistered: list[pb.Event] = []
        fresh: list[tuple[str, str, str]] = []
        seen: set[tuple[str, str, str]] = set()
        responses: list[pb.Event] = []
        events_in = duplicates = 0
        for record in records:
            events = decode_batch(record, tenant, check_events=False).events
            events_in += len(events)
            for ev in events:
                device = ev.device
                alternate_id = ev.alternate_id
                if ev.tenant != tenant:
                    raise PoisonRecord(
                        record, f"event of tenant {ev.tenant!r} in the topic of tenant {tenant!r}"
                    )
                if not device or not alternate_id:
                    raise PoisonRecord(record, "event without device or alternate id")
                key = (tenant, device, alternate_id)
                if key in seen or key in recent:
                    duplicates += 1
                    continue
                seen.add(key)
                entry = known.get(device)
                if entry is None:
                    info = await self._device(tenant, device)
                    entry = known[device] = (info, DeviceIds(tenant, device) if info is not None else None)
                info, ids = entry
                if info is None or ids is None:
                    unregistered.append(ev)
                    continue
                ev.id = ids.id(alternate_id)
                ev.assignment = info.assignment
                enriched.append(ev)
                fresh.append(key)
                if ev.HasField("command_response"):
                    responses.append(ev)
        self.stats.events_in += events_in
        self.stats.duplicates += duplicates
        if responses:
            await self._check_responses(tenant, responses)

        if enriched:
            await self._bus.publish(topic_name(tenant, ENRICHED, self._prefix), messages_by_device(enriched))
        if unregistered:
            await self._bus.publish(
                topic_name(tenant, UNREGISTERED, self._prefix), messages_by_device(unregistered)
            )
        # Only now: had a publish failed, the retry must not drop these as duplicates.
        for key in fresh:
            recent.add(key)
        self.stats.enriched += len(enriched)
        self.stats.unregistered += len(unregistered)
