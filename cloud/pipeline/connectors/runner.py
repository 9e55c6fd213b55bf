"""One connector at work: its bounded retry queue, its worker, its dead letters.

The stage offers each matching event to the connector's :class:`ConnectorRunner`; the worker
takes up to ``batch_size`` events from the head of the queue and delivers them through the
connector's sink, retrying with exponential back-off and jitter (:class:`fieldgate.retry.Backoff`:
``initial_backoff_s`` · 2^(attempt-1), capped at ``max_backoff_s``, times a random factor in [0.5, 1]) up to
``max_attempts``; a permanent failure, or the last attempt, moves the events to the
connector's dead letters. Either way each event's ``done`` callback runs exactly once: the
stage commits a bus record only when all its events are done for every connector.

Retries hold the head of the queue (a connector delivers in order), and the queue is bounded
(``queue_size`` events). When it is full the connector's overflow policy decides:

* ``block``: :meth:`ConnectorRunner.offer` waits for room — the stage stops reading (counted in
  ``stats.blocked``); every other connector of the stage waits too, which is the point
  of choosing it (nothing is dead-lettered just because the receiver is slow);
* ``dead_letter``: the event is dead-lettered at once (``stats.overflow_dead_lettered``) and
  the stage goes on; re-drive it once the receiver is back.

Each connector has its own runner, queue and sink, so one that is down never delays another
(except through ``block``, by choice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fieldgate.cloud.domain.connectors.events import EventFilter, FieldFilter
from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.domain.connectors.sink import DeliveryError, Sink
from fieldgate.cloud.domain.connectors.targets import TargetPolicy
from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.store.connectors import ConnectorStore, DeadLetter
from fieldgate.retry import Backoff
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

SinkFactory = Callable[[str, ConnectorSpec], Sink]

# How long a failed dead-letter write waits before it is tried again (the store is down).
_STORE_RETRY_S = (0.2, 5.0)


@dataclass(slots=True)
class Item:
    """One event on its way to one connector. ``done`` is called once it is delivered,
    dead-lettered or dropped; ``redrive`` marks an event taken from the dead letters."""

    event: pb.Event
    done: Callable[[], None] = lambda: None
    redrive: bool = False


@dataclass(slots=True)
class RunnerStats:
    delivered: int = 0
    attempts_failed: int = 0
    dead_lettered: int = 0
    overflow_dead_lettered: int = 0  # queue full, policy dead_letter
    blocked: int = 0  # offers that waited for room (policy block)
    redriven: int = 0  # dead letters delivered on re-drive
    dropped: int = 0  # queued events of a connector that was deleted
    last_error: str = ""
    retrying: bool = False


def build_sink(tenant: str, spec: ConnectorSpec, targets: TargetPolicy | None = None) -> Sink:
    """The sink of ``spec.kind`` (client libraries imported only for the kinds in use), its
    connections vetted against ``targets`` (None: the default policy, no inside address)."""
    if spec.kind == "webhook":
        from fieldgate.cloud.pipeline.connectors.webhook import WebhookSink

        assert spec.webhook is not None
        return WebhookSink(tenant, spec.id, spec.webhook, spec.delivery, targets=targets)
    if spec.kind == "mqtt":
        from fieldgate.cloud.pipeline.connectors.mqtt import MqttSink

        assert spec.mqtt is not None
        return MqttSink(tenant, spec.id, spec.mqtt, spec.delivery, targets=targets)
    from fieldgate.cloud.pipeline.connectors.kafka import KafkaSink

    assert spec.kafka is not None
    return KafkaSink(tenant, spec.id, spec.kafka, spec.delivery, targets=targets)


class ConnectorRunner:
    def __init__(
        self,
        tenant: str,
        spec: ConnectorSpec,
        store: ConnectorStore,
        *,
        sink_factory: SinkFactory = build_sink,
    ) -> None:
        self.tenant = tenant
        self.spec = spec
        self.filter: EventFilter = FieldFilter(spec.filter)
        self.stats = RunnerStats()
        self._store = store
        self._sink_factory = sink_factory
        self._sink: Sink | None = None
        self._queue: deque[Item] = deque()
        self._nonempty = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._closed = False
        self.redriving: set[str] = set()  # event ids of dead letters in the queue now

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def room(self) -> int:
        return max(0, self.spec.delivery.queue_size - len(self._queue))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"connector:{self.tenant}/{self.id}")

    async def stop(self) -> None:
        """Stop the worker (an event being delivered stays un-done: the stage re-reads it)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        await self._close_sink()

    async def delete(self) -> None:
        """The connector was deleted: stop, and let go of what was queued (counted)."""
        await self.stop()
        while self._queue:
            item = self._queue.popleft()
            self.stats.dropped += 1
            item.done()
        self._room.set()

    async def reconfigure(self, spec: ConnectorSpec) -> None:
        """A new version of the definition: new filter now, new sink from the next delivery."""
        old, self.spec = self.spec, spec
        self.filter = FieldFilter(spec.filter)
        if (old.kind, old.webhook, old.mqtt, old.kafka, old.delivery) != (
            spec.kind,
            spec.webhook,
            spec.mqtt,
            spec.kafka,
            spec.delivery,
        ):
            await self._close_sink()
        if len(self._queue) < spec.delivery.queue_size:
            self._room.set()
        self._nonempty.set()  # wake the worker: a disabled connector dead-letters its queue

    @property
    def accepting(self) -> bool:
        """True when new events should be offered (enabled and running)."""
        return self.spec.enabled and not self._closed

    async def offer(self, item: Item) -> None:
        """Queue ``item`` (see the overflow policies in the module docstring)."""
        while len(self._queue) >= self.spec.delivery.queue_size:
            if self.spec.delivery.overflow == "dead_letter" and not item.redrive:
                self.stats.overflow_dead_lettered += 1
                await self._dead_letter([item], f"queue full ({self.spec.delivery.queue_size} events)", 0)
                return
            self.stats.blocked += 1
            self._room.clear()
            await self._room.wait()
        self._queue.append(item)
        self._nonempty.set()

    # -- worker ------------------------------------------------------------------------

    async def _close_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                await sink.stop()
            except Exception:  # closing a broken client: report, never fail the caller
                log.exception("connector %s/%s: closing the sink failed", self.tenant, self.id)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._nonempty.clear()
                await self._nonempty.wait()
                continue
            if not self.spec.enabled:
                items = list(self._queue)
                await self._dead_letter(items, "connector disabled", 0)
                for _ in items:
                    self._queue.popleft()
                self._room.set()
                continue
            n = min(self.spec.delivery.batch_size, len(self._queue))
            batch = [self._queue[i] for i in range(n)]
            await self._deliver(batch)
            for _ in batch:
                self._queue.popleft()
            if len(self._queue) < self.spec.delivery.queue_size:
                self._room.set()

    async def _deliver(self, batch: list[Item]) -> None:
        events = [it.event for it in batch]
        d = self.spec.delivery
        backoff = Backoff(d.initial_backoff_s, d.max_backoff_s, jitter=True, rng=self._rng)
        attempt = 0
        while True:
            attempt += 1
            d = self.spec.delivery
            try:
                if self._sink is None:
                    self._sink = self._sink_factory(self.tenant, self.spec)
                    await self._sink.start()
                await self._sink.send(events, attempt=attempt)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a delivery's failure, whatever the client raised
                failure = (
                    err if isinstance(err, DeliveryError) else DeliveryError(f"{type(err).__name__}: {err}")
                )
                self.stats.attempts_failed += 1
                self.stats.last_error = failure.reason[:500]
                if failure.permanent or attempt >= d.max_attempts:
                    why = "permanent failure" if failure.permanent else f"{attempt} attempts"
                    log.warning(
                        "connector %s/%s: dead-lettering %d event(s) after %s: %s",
                        self.tenant,
                        self.id,
                        len(batch),
                        why,
                        failure.reason,
                    )
                    await self._dead_letter(batch, failure.reason, attempt)
                    self.stats.retrying = False
                    return
                self.stats.retrying = True
                # The settings in force now (the definition may have changed meanwhile).
                backoff.initial_s, backoff.max_s = d.initial_backoff_s, d.max_backoff_s
                delay = backoff.next_delay()
                if failure.retry_after_s is not None:
                    delay = max(delay, min(failure.retry_after_s, d.max_backoff_s))
                log.info(
                    "connector %s/%s: attempt %d failed (%s); retrying in %.2fs",
                    self.tenant,
                    self.id,
                    attempt,
                    failure.reason,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            self.stats.retrying = False
            self.stats.delivered += len(batch)
            redriven = [it.event.id for it in batch if it.redrive]
            if redriven:
                await self._store_call(
                    lambda ids=redriven: self._store.remove_dead_letters(self.tenant, self.id, ids)  # type: ignore[misc]
                )
                self.stats.redriven += len(redriven)
                self.redriving.difference_update(redriven)
            for it in batch:
                it.done()
            return

    async def _dead_letter(self, items: Sequence[Item], reason: str, attempts: int) -> None:
        """Durably dead-letter ``items`` (retrying while the store is down), then done."""
        t = now_ms()
        letters = [
            DeadLetter(
                connector=self.id,
                event_id=it.event.id,
                event=it.event.SerializeToString(),
                reason=reason[:1000],
                attempts=attempts,
                failed_ms=t,
            )
            for it in items
        ]
        await self._store_call(lambda: self._store.add_dead_letters(self.tenant, letters))
        self.stats.dead_lettered += len(items)
        for it in items:
            if it.redrive:
                self.redriving.discard(it.event.id)
            it.done()

    async def _store_call(self, call: Callable[[], object]) -> None:
        backoff = Backoff(*_STORE_RETRY_S, jitter=True)
        while True:
            try:
                result = call()
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    await result
                return
            except StoreError as err:
                delay = backoff.next_delay()
                log.warning(
                    "connector %s/%s: store unavailable (%s); retrying in %.1fs",
                    self.tenant,
                    self.id,
                    err,
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.sleep(delay)
