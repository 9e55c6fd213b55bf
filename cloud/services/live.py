"""The live hub: this process's fan-out of the bus to the dashboard's Server-Sent Events.

Each REST process (the ``api`` service; in embedded mode the one process) runs one
:class:`LiveHub`. It reads the bus itself with *tail* consumers (cloud/bus ``tail=True``: a
group of its own, ``live.<uuid>``, starting at the end of the log, never committing), so a
browser gets what happens after it subscribed and never a replay of history, and several API
replicas each see everything:

* ``[persisted]`` — every stored event, fanned out to the subscribers of its tenant (of its
  device, for a device stream; of the customer's devices, for a customer user), and counted
  per tenant for ``/api/v1/fleet`` (events in the last 10 s and minute);
* ``[failed-decode]`` — counted per tenant (failed decodes in the last hour);
* ``[command-invocations]`` — new invocations of tenants that have subscribers. Their status
  lives in the shared invocation store and is moved by other processes (command delivery on
  ingest, the edge's statuses, responses), so the hub watches each such invocation: it reads
  it every ``poll_s`` (and at once when a ``command_response`` of it is persisted) and sends
  an ``invocation`` message on every status change, until it is terminal. A (linked)
  ``command_response`` of an invocation watches it again until the answer is applied: an
  answer after the invocation failed or expired turns it ``late``. The watch list is
  bounded (:data:`MAX_WATCHED`, overflow: the oldest watch is dropped, counted).

Every subscriber has a bounded queue (``queue_size``, default 256) with the *drop-oldest*
policy: a slow browser loses the oldest messages, and the next thing it reads is a
``dropped`` count telling it to refetch. Streams are limited per subject (user) and per
process (:class:`TooManyStreams`). The counters are per process, from its start (a restarted
API starts from zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fieldgate.cloud.bus import COMMAND_INVOCATIONS, FAILED_DECODE, PERSISTED, Bus, Record, parse_topic
from fieldgate.cloud.errors import BusError, CloudError, StoreError
from fieldgate.cloud.store.invocations import InvocationStore
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
MAX_WATCHED = 4096
_ANSWERS = frozenset({svc.COMMAND_STATUS_ANSWERED, svc.COMMAND_STATUS_LATE})
_TERMINAL = frozenset({*_ANSWERS, svc.COMMAND_STATUS_FAILED, svc.COMMAND_STATUS_EXPIRED})

LiveItem = tuple[str, "pb.Event | svc.InvocationState"]  # ("event", Event) | ("invocation", state)


class TooManyStreams(CloudError):
    """A live stream is refused: the subject's or this process's stream limit is reached."""


@dataclass(slots=True)
class LiveStats:
    subscribers: int = 0
    records: int = 0
    delivered: int = 0
    dropped: int = 0  # messages dropped from slow subscribers' queues (drop-oldest)
    refused: int = 0  # subscriptions refused (limits)
    watch_overflows: int = 0  # invocation watches dropped (MAX_WATCHED)
    consumer_errors: int = 0


class Subscription:
    """One SSE client: its filter and its bounded, drop-oldest queue."""

    def __init__(
        self,
        hub: LiveHub,
        tenant: str,
        subject: str,
        *,
        device: str | None = None,
        devices: frozenset[str] | None = None,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self._hub = hub
        self.tenant = tenant
        self.subject = subject
        self.device = device
        self.devices = devices  # customer scope: only these devices (None: the whole tenant)
        self.queue_size = queue_size
        self._queue: deque[LiveItem] = deque()
        self.dropped = 0  # dropped since the client last read
        self._ready = asyncio.Event()
        self.closed = False

    def wants(self, device: str) -> bool:
        if self.device is not None and device != self.device:
            return False
        return self.devices is None or device in self.devices

    def offer(self, item: LiveItem) -> None:
        if self.closed:
            return
        if len(self._queue) >= self.queue_size:
            self._queue.popleft()
            self.dropped += 1
            self._hub.stats.dropped += 1
        self._queue.append(item)
        self._ready.set()

    def take(self) -> tuple[int, list[LiveItem]]:
        """``(dropped since the last take, queued items)``; empties the queue."""
        dropped, self.dropped = self.dropped, 0
        items = list(self._queue)
        self._queue.clear()
        self._ready.clear()
        return dropped, items

    async def wait(self, timeout_s: float) -> bool:
        """Wait until something is queued (True) or ``timeout_s`` passed or the stream closed."""
        if self._queue or self.closed:
            return bool(self._queue)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        return bool(self._queue)

    def close(self) -> None:
        self.closed = True
        self._ready.set()
        self._hub._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Buckets:
    """Counts per time bucket over a sliding window (a ring of ``n`` buckets of ``width_ms``)."""

    def __init__(self, width_ms: int, n: int) -> None:
        self._width = width_ms
        self._counts: deque[tuple[int, int]] = deque(maxlen=n)  # (bucket index, count)

    def add(self, time_ms: int, count: int = 1) -> None:
        idx = time_ms // self._width
        if self._counts and self._counts[-1][0] == idx:
            self._counts[-1] = (idx, self._counts[-1][1] + count)
        elif not self._counts or self._counts[-1][0] < idx:
            self._counts.append((idx, count))

    def total(self, now_ms_: int, window_ms: int) -> int:
        low = (now_ms_ - window_ms) // self._width
        return sum(c for idx, c in self._counts if idx > low)


@dataclass(slots=True)
class _Counters:
    events: _Buckets = field(default_factory=lambda: _Buckets(1000, 61))  # per second, a minute
    failed: _Buckets = field(default_factory=lambda: _Buckets(60_000, 61))  # per minute, an hour


@dataclass(frozen=True, slots=True)
class TenantRates:
    events_per_s: float  # last 10 s
    events_last_minute: int
    failed_decodes_last_hour: int


class LiveHub:
    """See the module docstring. ``start()``/``stop()``; :meth:`subscribe` per SSE client."""

    def __init__(
        self,
        bus: Bus,
        invocations: InvocationStore,
        *,
        topic_prefix: str = "fieldgate",
        replica: str | None = None,
        queue_size: int = QUEUE_SIZE,
        max_per_subject: int = 8,
        max_streams: int = 64,
        poll_s: float = 1.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._bus = bus
        self._invocations = invocations
        self._prefix = topic_prefix
        self.group = f"live.{replica or uuid.uuid4().hex[:12]}"
        self.queue_size = queue_size
        self.max_per_subject = max_per_subject
        self.max_streams = max_streams
        self._poll_s = poll_s
        self._clock = clock
        self.stats = LiveStats()
        self._subs: dict[str, set[Subscription]] = {}  # tenant -> subscriptions
        self._per_subject: dict[str, int] = {}
        self._counters: dict[str, _Counters] = {}
        # (tenant, invocation id) -> last status sent (0: none yet), oldest first
        self._watched: OrderedDict[tuple[str, str], int] = OrderedDict()
        # Watched invocations with a response stored: watched until answered or late.
        self._awaiting_answer: set[tuple[str, str]] = set()
        self._check_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started_ms = 0
        self._consumers_ready = 0  # tail consumers that have subscribed (tests wait for 3)
        self.shutting_down = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._started_ms = self._clock()
        self.shutting_down.clear()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._consume(PERSISTED, self._on_persisted), name="live-persisted"),
            loop.create_task(self._consume(FAILED_DECODE, self._on_failed), name="live-failed-decode"),
            loop.create_task(
                self._consume(COMMAND_INVOCATIONS, self._on_invocations), name="live-invocations"
            ),
            loop.create_task(self._watch_invocations(), name="live-invocation-watch"),
        ]

    def close_streams(self) -> None:
        """End every SSE stream now (shutdown: a streaming response would hold the server)."""
        self.shutting_down.set()
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()

    async def stop(self) -> None:
        self.close_streams()
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        self._consumers_ready = 0

    @property
    def ready(self) -> bool:
        """True once every tail consumer has subscribed (what is published from now is seen)."""
        return self._consumers_ready >= 3

    # -- subscriptions ---------------------------------------------------------------------

    def subscribe(
        self,
        tenant: str,
        subject: str,
        *,
        device: str | None = None,
        devices: frozenset[str] | None = None,
    ) -> Subscription:
        """A new subscription (use it as a context manager); TooManyStreams past the limits."""
        if self.shutting_down.is_set():
            raise TooManyStreams("the server is shutting down")
        if self.stats.subscribers >= self.max_streams:
            self.stats.refused += 1
            raise TooManyStreams(f"this server has {self.max_streams} live streams open; try again later")
        if self._per_subject.get(subject, 0) >= self.max_per_subject:
            self.stats.refused += 1
            raise TooManyStreams(
                f"at most {self.max_per_subject} live streams per user are allowed; close one first"
            )
        sub = Subscription(self, tenant, subject, device=device, devices=devices, queue_size=self.queue_size)
        self._subs.setdefault(tenant, set()).add(sub)
        self._per_subject[subject] = self._per_subject.get(subject, 0) + 1
        self.stats.subscribers += 1
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.tenant)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.tenant]
        left = self._per_subject.get(sub.subject, 1) - 1
        if left > 0:
            self._per_subject[sub.subject] = left
        else:
            self._per_subject.pop(sub.subject, None)
        self.stats.subscribers -= 1

    def _fan_out(self, tenant: str, device: str, item: LiveItem) -> None:
        for sub in list(self._subs.get(tenant, ())):
            if sub.wants(device):
                sub.offer(item)
                self.stats.delivered += 1

    # -- counters --------------------------------------------------------------------------

    def rates(self, tenant: str) -> TenantRates:
        c = self._counters.get(tenant)
        if c is None:
            return TenantRates(0.0, 0, 0)
        now = self._clock()
        return TenantRates(
            events_per_s=round(c.events.total(now, 10_000) / 10.0, 3),
            events_last_minute=c.events.total(now, 60_000),
            failed_decodes_last_hour=c.failed.total(now, 3_600_000),
        )

    def _count(self, tenant: str) -> _Counters:
        c = self._counters.get(tenant)
        if c is None:
            if len(self._counters) >= 100_000:  # bounded: forget a tenant's counters (rare)
                self._counters.pop(next(iter(self._counters)))
            c = self._counters[tenant] = _Counters()
        return c

    # -- bus readers -----------------------------------------------------------------------

    def _tenant(self, record: Record) -> str | None:
        try:
            return parse_topic(record.topic, self._prefix)[0]
        except ValueError:
            return None

    async def _consume(self, stage: str, handle: Callable[[Iterable[Record]], None]) -> None:
        """Read ``stage`` from its end, forever; a bus failure reopens the consumer after 1 s."""
        while True:
            try:
                async with self._bus.consumer(self.group, stage, tail=True) as consumer:
                    self._consumers_ready += 1
                    try:
                        while True:
                            records = await consumer.poll(500, timeout_s=1.0)
                            if records:
                                self.stats.records += len(records)
                                handle(records)
                    finally:
                        self._consumers_ready -= 1
            except BusError as err:  # task top: count, report, reopen
                self.stats.consumer_errors += 1
                log.warning("live: %s consumer failed: %s; reopening", stage, err)
                await asyncio.sleep(1.0)

    def _on_persisted(self, records: Iterable[Record]) -> None:
        for record in records:
            tenant = self._tenant(record)
            if tenant is None:
                continue
            try:
                batch = pb.EventBatch.FromString(record.value)
            except Exception:  # noqa: BLE001 - a malformed record is skipped (the stages dead-letter it)
                continue
            self._count(tenant).events.add(self._clock(), len(batch.events))
            if tenant not in self._subs or record.timestamp_ms < self._started_ms:
                continue
            for ev in batch.events:
                self._fan_out(tenant, ev.device, ("event", ev))
                if ev.WhichOneof("payload") == "command_response" and not ev.command_response.refused:
                    key = (tenant, ev.command_response.invocation)
                    self._watch(key)
                    self._awaiting_answer.add(key)
                    self._check_now.set()

    def _on_failed(self, records: Iterable[Record]) -> None:
        for record in records:
            tenant = self._tenant(record)
            if tenant is not None:
                self._count(tenant).failed.add(self._clock())

    def _on_invocations(self, records: Iterable[Record]) -> None:
        for record in records:
            tenant = self._tenant(record)
            if tenant is None or tenant not in self._subs:
                continue
            try:
                ev = pb.Event.FromString(record.value)
            except Exception:  # noqa: BLE001 - not an Event: command delivery dead-letters it
                continue
            inv = ev.command_invocation.invocation
            if not inv:
                continue
            self._watch((tenant, inv))
            self._check_now.set()

    def _watch(self, key: tuple[str, str]) -> None:
        self._watched[key] = self._watched.get(key, 0)
        if len(self._watched) > MAX_WATCHED:
            dropped, _ = self._watched.popitem(last=False)
            self._awaiting_answer.discard(dropped)
            self.stats.watch_overflows += 1

    def _unwatch(self, key: tuple[str, str]) -> None:
        self._watched.pop(key, None)
        self._awaiting_answer.discard(key)

    async def _watch_invocations(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._check_now.wait()
            self._check_now.clear()
            for key, sent in list(self._watched.items())[:MAX_WATCHED]:
                tenant, inv = key
                if tenant not in self._subs:
                    self._unwatch(key)  # nobody is listening: stop watching
                    continue
                try:
                    state = await self._invocations.get(tenant, inv)
                except StoreError as err:  # task top per round: try again next round
                    log.warning("live: cannot read invocation %s: %s", inv, err)
                    break
                if state is None:
                    continue  # not stored yet (the publish raced the store), or gone
                if state.status != sent:
                    self._fan_out(tenant, state.device, ("invocation", state))
                    if key in self._watched:
                        self._watched[key] = state.status
                # A failed invocation whose answer is stored may still turn late: keep watching.
                if state.status in _ANSWERS or (
                    state.status in _TERMINAL and key not in self._awaiting_answer
                ):
                    self._unwatch(key)
