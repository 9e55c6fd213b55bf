"""Event persistence: [enriched] → the event store → [persisted].

Consumes ``[enriched]`` (consumer group ``persistence``), stores each tenant's events in that
tenant's event store in batches (one ``add`` per at most ``max_events_per_add`` events — the
store groups a batch into one transaction) and publishes the events that were newly stored to
``[persisted]``, where later stages (command responses now; state, rules and outbound
connectors later) pick them up. Then it commits.

``EventStore.add`` is idempotent on (device, alternate id), so a replayed record stores
nothing twice and publishes nothing twice. One gap is handled here: if the store accepted a
batch but publishing to ``[persisted]`` failed, the retry's ``add`` would report those events
as already stored and they would never reach ``[persisted]``; so the stored-but-unpublished
events are carried (per tenant, in memory) into the retry. A crash inside that window still
loses the ``[persisted]`` notification (never the stored event); documented in
docs/architecture-cloud.md.

Per-tenant pipeline settings (``tenant_settings``, live from ZooKeeper) are read per batch:
``pipeline.persist_events: false`` commits the tenant's records without storing or
announcing them (the events stay in ``[enriched]`` for a replay); ``pipeline.max_batch_events``
caps the events of one ``add`` call for that tenant. Other tenants are not affected.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fieldgate.cloud.bus import ENRICHED, PERSISTED, Bus, Message, Record, topic_name
from fieldgate.cloud.pipeline.stage import (
    ConsumerStage,
    StageSettings,
    decode_batch,
    messages_by_device,
    tenant_of,
)
from fieldgate.cloud.store.events import EventStore
from fieldgate.v1 import events_pb2 as pb

if TYPE_CHECKING:
    from fieldgate.cloud.zk.models import TenantSettingsRegistry

GROUP = "persistence"

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PersistenceStats:
    events_in: int = 0
    stored: int = 0  # newly stored
    duplicates: int = 0  # already in the store (replays, retries of the edge)
    store_calls: int = 0
    not_persisted: int = 0  # committed without storing: the tenant's persist_events is off


class EventPersistence:
    """The persistence stage (consumer group ``persistence``)."""

    def __init__(
        self,
        bus: Bus,
        event_store: EventStore,
        *,
        topic_prefix: str = "fieldgate",
        settings: StageSettings | None = None,
        max_events_per_add: int = 10_000,
        tenant_settings: TenantSettingsRegistry | None = None,
    ) -> None:
        self.stats = PersistenceStats()
        self._live = tenant_settings
        self._suspended: set[str] = set()  # tenants whose persist_events is off (logged once)
        self._bus = bus
        self._store = event_store
        self._prefix = topic_prefix
        self._max_per_add = max(1, max_events_per_add)
        # Stored but not yet announced on [persisted] (a publish failed); bounded by one poll.
        self._unpublished: dict[str, list[pb.Event]] = {}
        self.stage = ConsumerStage(
            "persistence",
            bus,
            group=GROUP,
            stage=ENRICHED,
            handler=self._handle,
            settings=settings,
            topic_prefix=topic_prefix,
        )

    async def start(self) -> None:
        await self.stage.start()

    async def stop(self) -> None:
        await self.stage.stop()

    async def _handle(self, records: Sequence[Record]) -> None:
        tenant = tenant_of(records[0], self._prefix)
        # [enriched] is written only by inbound processing, which checked every event.
        events: list[pb.Event] = []
        for r in records:
            events.extend(decode_batch(r, tenant, check_events=False).events)
        self.stats.events_in += len(events)
        per_add = self._max_per_add
        live = self._live.get(tenant) if self._live is not None else None
        if live is not None:
            if not live.pipeline.persist_events:
                self.stats.not_persisted += len(events)
                if tenant not in self._suspended:
                    self._suspended.add(tenant)
                    log.warning(
                        "tenant %s: persist_events is off; its events are not stored (they stay in "
                        "[enriched] for a replay)",
                        tenant,
                    )
                return
            per_add = min(per_add, live.pipeline.max_batch_events)
        if tenant in self._suspended:
            self._suspended.discard(tenant)
            log.info("tenant %s: persist_events is on again; storing its events", tenant)

        pending = self._unpublished.setdefault(tenant, [])
        # The usual case: nothing carried over and every event stored as it came (the store
        # returns the very objects it was given when it had nothing to complete). Then the
        # [persisted] records are the [enriched] ones, passed on without re-encoding.
        unchanged = not pending
        for i in range(0, len(events), per_add):
            chunk = events[i : i + per_add]
            self.stats.store_calls += 1
            stored = await self._store.add(tenant, chunk)
            pending.extend(stored)
            self.stats.stored += len(stored)
            self.stats.duplicates += len(chunk) - len(stored)
            unchanged = unchanged and len(stored) == len(chunk) and all(map(operator.is_, stored, chunk))

        if pending:
            messages = (
                [Message(key=r.key, value=r.value) for r in records]
                if unchanged
                else messages_by_device(pending)
            )
            await self._bus.publish(topic_name(tenant, PERSISTED, self._prefix), messages)
        self._unpublished.pop(tenant, None)
