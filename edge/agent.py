"""The edge agent: wires adapters, the durable buffer, the uplink and the command router.

Orchestration only — no protocol code lives here. The agent is the adapters'
:class:`~fieldgate.edge.adapters.EventSink`:

- ``accept`` gives every event without one a unique alternate id (``uuid4().hex``) *before*
  it is written, so every resend carries the same idempotency key; appends it to the buffer
  (returning only once it is on disk, which is when an adapter may acknowledge the device);
  and tells the command router about command_response events.
- ``reject`` keeps an undecodable payload in the failed-decode lane, counts it by reason kind
  and logs it at WARNING (rate-limited, so a misbehaving device cannot flood the log).

Link health → cloud: every adapter with a :class:`~fieldgate.edge.health.HealthBoard`
(``adapter.health``) has its connect/disconnect transitions turned into PRESENCE state change
events, queued in order (bounded: ``MAX_PRESENCE_PENDING``, the oldest dropped and counted in
``presence_dropped``) and written to the buffer in batches by one task. The queue is open from
the moment the buffer is open until after the adapters stopped, so a port that does not open
at start, and every link the agent's own stop takes down, are reported too (the latter reach
the cloud with the next start, with the time they happened).

Under systemd (``Type=notify``, :mod:`fieldgate.edge.systemd`): ``READY=1`` once started,
``WATCHDOG=1`` from the event-loop heartbeat of the probes (run whenever the unit has a
watchdog, metrics port or not), ``STATUS=`` with the buffer depth and the uplink's state when
they change, ``STOPPING=1`` when the stop begins.

Start order: buffer → link queue → command router → adapters → uplink → metrics endpoint;
``stop`` undoes whatever was started, in reverse, and is idempotent. Unacknowledged events and
pending commands stay on disk for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from fieldgate.edge.adapters import Adapter
from fieldgate.edge.adapters.ble import build_ble_adapter
from fieldgate.edge.adapters.modbus import build_modbus_adapter
from fieldgate.edge.adapters.mqtt import build_mqtt_adapter
from fieldgate.edge.adapters.serial import build_serial_adapter
from fieldgate.edge.buffer import EventBuffer
from fieldgate.edge.commands import CommandRouter
from fieldgate.edge.config import EdgeConfig
from fieldgate.edge.errors import BufferFull, EdgeError
from fieldgate.edge.health import HealthBoard
from fieldgate.edge.metrics import EdgeMetrics
from fieldgate.edge.probes import AgentProbes
from fieldgate.edge.systemd import Notifier
from fieldgate.edge.uplink import Uplink
from fieldgate.retry import Backoff
from fieldgate.throttle import LogThrottle
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc

log = logging.getLogger(__name__)

COMMANDS_DB = Path("commands.db")
# At most one failed-decode WARNING per this many seconds; the next one says how many were quiet.
REJECT_LOG_INTERVAL_S = 10.0
# Link changes waiting to be written; beyond this the oldest are dropped and counted (a flapping
# link must not grow memory). Twice what one adapter's board tracks (health.MAX_DEVICES): every
# device of a broker going down and coming back at once fits.
MAX_PRESENCE_PENDING = 20_000
# Link changes written to the buffer in one append; retries while the buffer is full.
PRESENCE_BATCH = 1000
PRESENCE_RETRY_INITIAL_S = 0.05
PRESENCE_RETRY_MAX_S = 1.0


def build_adapters(config: EdgeConfig) -> list[Adapter]:
    """The enabled adapters, the most specific first: the command router hands a command to the
    first adapter that owns the device, and MQTT owns every device of its tenants."""
    tenants = config.tenants
    adapters: list[Adapter] = []
    if config.serial.enabled:
        adapters.append(build_serial_adapter(config.serial, tenants=tenants))
    if config.modbus.enabled:
        adapters.append(build_modbus_adapter(config.modbus, tenants=tenants))
    if config.ble.enabled:
        adapters.append(build_ble_adapter(config.ble, tenants=tenants))
    if config.mqtt.enabled:
        adapters.append(build_mqtt_adapter(config.mqtt, tenants=tenants, data_dir=config.data_dir))
    return adapters


class EdgeAgent:
    """One edge agent. ``async with EdgeAgent(config) as agent: ...`` or ``start()``/``stop()``.

    With ``adapters=None`` the adapters are built from the configuration (:func:`build_adapters`).
    ``notifier``: systemd's notify socket (:meth:`Notifier.from_environ`), or None.
    """

    def __init__(
        self,
        config: EdgeConfig,
        adapters: Sequence[Adapter] | None = None,
        *,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        if adapters is None:
            adapters = build_adapters(config)
        self.adapters: list[Adapter] = list(adapters)
        self.buffer = EventBuffer(config.buffer, config.resolve(config.buffer.path))
        self.router = CommandRouter(
            config.commands, self.adapters, config.resolve(COMMANDS_DB), self._send_status
        )
        self.uplink = Uplink(
            config.uplink, config.edge_id, self.buffer, self.router.on_command, outbox=self.router
        )
        self.metrics = EdgeMetrics()
        self.notifier = notifier
        self._watchdog = notifier is not None and notifier.watchdog_s is not None
        # The heartbeat pings the watchdog: at least three beats per watchdog period.
        beat_s = 1.0
        if notifier is not None and notifier.watchdog_s is not None:
            beat_s = min(beat_s, notifier.watchdog_s / 3)
        self.probes = AgentProbes(
            self,
            self.buffer,
            self.uplink,
            config.buffer.max_events,
            interval_s=beat_s,
            on_beat=self._on_beat if notifier is not None else None,
        )
        self._status = ""
        self.metrics.watch(buffer=self.buffer, uplink=self.uplink, router=self.router, adapters=self.adapters)
        self._tenants = frozenset(config.tenants)
        self._reject_log = LogThrottle(REJECT_LOG_INTERVAL_S)
        self._lifecycle = asyncio.Lock()
        self._stack: contextlib.AsyncExitStack | None = None
        self._presence_queue: deque[pb.Event] = deque()
        self._presence_wake = asyncio.Event()
        self._presence_open = False
        self._presence_writer: asyncio.Task[None] | None = None
        self.presence_dropped = 0
        for adapter in self.adapters:
            board = getattr(adapter, "health", None)
            if isinstance(board, HealthBoard):
                board.on_change = self._make_presence_hook(adapter.name)

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._stack is not None

    async def start(self) -> None:
        async with self._lifecycle:
            if self._stack is not None:
                return
            async with contextlib.AsyncExitStack() as stack:
                self.config.data_dir.mkdir(parents=True, exist_ok=True)
                await self.buffer.open()
                stack.push_async_callback(self.buffer.close)
                self._open_presence()
                stack.push_async_callback(self._close_presence)
                await self.router.start()
                stack.push_async_callback(self.router.stop)
                for adapter in self.adapters:
                    await adapter.start(self, self.router.on_online)
                    stack.push_async_callback(adapter.stop)
                await self.uplink.start()
                stack.push_async_callback(self.uplink.stop)
                if self.config.metrics_port or self._watchdog:
                    await self.probes.start()
                    stack.push_async_callback(self.probes.stop)
                if self.config.metrics_port:
                    self.metrics.serve(self.config.metrics_port, self.config.metrics_host, self.probes)
                    stack.callback(self.metrics.close)
                self._stack = stack.pop_all()
            log.info(
                "edge agent %s started: %d events buffered, %d commands pending, adapters: %s, cloud: %s",
                self.config.edge_id,
                self.buffer.depth,
                self.router.pending,
                ", ".join(a.name for a in self.adapters) or "none",
                self.config.uplink.target,
            )
            if self.notifier is not None:
                self._status = self._status_line()
                self.notifier.ready(self._status)

    async def stop(self) -> None:
        """Stop adapters first (no new input), then uplink, router and buffer. Idempotent."""
        async with self._lifecycle:
            stack, self._stack = self._stack, None
            if stack is not None:
                if self.notifier is not None:
                    self.notifier.stopping(f"stopping ({self.buffer.depth} events buffered)")
                await stack.aclose()
                log.info("edge agent %s stopped (%d events buffered)", self.config.edge_id, self.buffer.depth)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ EventSink

    async def accept(self, events: Sequence[pb.Event], *, source: str) -> None:
        """Make ``events`` durable (see the module docstring). Raises BufferFull under reject_new."""
        if not events:
            return
        accepted: list[pb.Event] = []
        for event in events:
            if event.tenant not in self._tenants:
                # Adapters check tenants themselves; this guards the buffer against one that did not.
                await self.reject(
                    event.SerializeToString(),
                    source=source,
                    reason=f"tenant {event.tenant!r} is not served by this edge",
                    tenant=event.tenant,
                )
                continue
            if not event.alternate_id:
                event.alternate_id = uuid.uuid4().hex
            accepted.append(event)
        if not accepted:
            return
        await self.buffer.append(accepted)
        self.metrics.count_accepted(len(accepted))
        for event in accepted:
            if event.WhichOneof("payload") == "command_response":
                try:
                    await self.router.on_response(
                        event.tenant, event.device, event.command_response.invocation
                    )
                except EdgeError as err:
                    # The event is durable and goes up regardless; only the edge's timeout tracking
                    # for this invocation is affected, so the device must not be asked to resend.
                    log.error("command response %s not recorded: %s", event.command_response.invocation, err)

    async def reject(self, payload: bytes, *, source: str, reason: str, tenant: str = "") -> None:
        """Keep an undecodable payload in the failed-decode lane (counted, logged)."""
        self.metrics.count_rejected(reason)
        suppressed = self._reject_log.ready()
        if suppressed is not None:
            quiet = f" ({suppressed} more not logged in the last {REJECT_LOG_INTERVAL_S:.0f}s)"
            log.warning(
                "payload from %s rejected: %s (%d bytes kept in the failed-decode lane)%s",
                source,
                reason,
                len(payload),
                quiet if suppressed else "",
            )
        await self.buffer.add_failed(source=source, tenant=tenant, reason=reason, payload=payload)

    async def failed_decodes(self, limit: int = 100) -> list[pb.FailedDecode]:
        """The newest payloads of the failed-decode lane, newest first."""
        return await self.buffer.failed_decodes(limit)

    # ------------------------------------------------------------------ link health → cloud

    def _make_presence_hook(self, adapter_name: str) -> Callable[[str, str, bool], None]:
        def hook(tenant: str, device: str, connected: bool) -> None:
            self._presence(adapter_name, tenant, device, connected)

        return hook

    def _presence(self, adapter_name: str, tenant: str, device: str, connected: bool) -> None:
        """Queue a link going up or down, for the cloud, as a PRESENCE state change event."""
        if not self._presence_open:
            self.presence_dropped += 1
            return
        t = now_ms()
        event = pb.Event(tenant=tenant, device=device, event_time_ms=t, received_time_ms=t)
        event.metadata["adapter"] = adapter_name
        event.state_change.kind = pb.STATE_CHANGE_KIND_PRESENCE
        event.state_change.previous = "disconnected" if connected else "connected"
        event.state_change.current = "connected" if connected else "disconnected"
        if len(self._presence_queue) >= MAX_PRESENCE_PENDING:
            self._presence_queue.popleft()  # drop-oldest: the newest change is the one that counts
            self.presence_dropped += 1
        self._presence_queue.append(event)
        self._presence_wake.set()

    def _open_presence(self) -> None:
        self._presence_open = True
        self._presence_writer = asyncio.get_running_loop().create_task(
            self._write_presence(), name="agent:link-changes"
        )

    async def _close_presence(self) -> None:
        """After the adapters stopped: write what they reported, then stop the writer."""
        self._presence_open = False
        writer, self._presence_writer = self._presence_writer, None
        self._presence_wake.set()
        if writer is not None:
            await writer

    async def _write_presence(self) -> None:
        """The one writer of link changes: in order, in batches, until closed and drained.
        While the buffer is full (``reject_new``) it retries with a capped backoff, the queue
        keeping the newest changes; what is left when the agent stops is dropped and counted."""
        backoff = Backoff(PRESENCE_RETRY_INITIAL_S, PRESENCE_RETRY_MAX_S)
        while True:
            if not self._presence_queue:
                if not self._presence_open:
                    return
                self._presence_wake.clear()
                await self._presence_wake.wait()
                continue
            n = min(len(self._presence_queue), PRESENCE_BATCH)
            batch = [self._presence_queue.popleft() for _ in range(n)]
            try:
                await self.accept(batch, source="link-health")
            except BufferFull as err:
                if not self._presence_open:
                    self.presence_dropped += len(batch) + len(self._presence_queue)
                    self._presence_queue.clear()
                    log.warning("link changes not recorded at stop: %s", err)
                    return
                self._presence_queue.extendleft(reversed(batch))
                while len(self._presence_queue) > MAX_PRESENCE_PENDING:
                    self._presence_queue.popleft()
                    self.presence_dropped += 1
                await backoff.sleep()
                continue
            except Exception:  # task top: count, report, keep writing the next changes
                self.presence_dropped += len(batch)
                log.exception("%d link change(s) not recorded", len(batch))
            backoff.reset()

    # ------------------------------------------------------------------ systemd

    def _status_line(self) -> str:
        uplink = "cloud connected" if self.uplink.connected else "cloud not connected"
        return f"{self.buffer.depth} events buffered, {uplink}"

    def _on_beat(self) -> None:
        """Every heartbeat of the event loop: the watchdog ping, and the status when it changed."""
        notifier = self.notifier
        if notifier is None:
            return
        lines = ["WATCHDOG=1"] if self._watchdog else []
        if self.running:
            status = self._status_line()
            if status != self._status:
                self._status = status
                lines.append(f"STATUS={status}")
        if lines:
            notifier.notify(*lines)

    # ------------------------------------------------------------------ wiring

    async def _send_status(self, update: svc.CommandStatusUpdate) -> None:
        await self.uplink.send_status(update)
