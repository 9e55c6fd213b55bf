"""One serial port's task: open with capped backoff, read and decode, deliver, reopen.

Life of a port: open (pyserial) → *connected* (link health, ``on_online`` so queued commands
go out) → read loop → the link fails (unplug: EIO/EOF; ENOENT while reopening) → every
command awaiting an ack fails with DeliveryError → *disconnected* → reopen after a delay that
starts at ``reconnect_initial_s`` and doubles up to ``reconnect_max_s`` (reset once a session
delivered a valid frame). A port that does not open at start is reported *disconnected* at
once (so a link the cloud knew from an earlier run of the agent does not stay "connected"),
and with ``silence_timeout_s`` an open port whose device sends nothing valid for that long is
*disconnected* until its next valid frame.

Backpressure: the read loop awaits ``sink.accept`` for the events of one read before it reads
again, and retries (not reading meanwhile) while the buffer is full under ``reject_new``. The
receive buffer therefore never holds more than one read plus one partial frame; the rest waits
in the kernel's tty buffer and then at the device.

Commands: ``send_command`` writes the command, waits up to ``ack_timeout_s`` for the device's
ack (a command_response for the same invocation counts as one), and returns — the router then
reports DELIVERED. The response arrives later as an ordinary event.
"""

from __future__ import annotations

import asyncio
import logging

from fieldgate.edge.adapters import EventSink, OnlineCallback
from fieldgate.edge.adapters.serial.config import SerialPortConfig
from fieldgate.edge.adapters.serial.link import LinkError, LinkLost, SerialLink
from fieldgate.edge.adapters.serial.protocol import PortProtocol, Received, build_protocol
from fieldgate.edge.adapters.serial.stats import SerialStats
from fieldgate.edge.errors import BufferFull, DeliveryError, EdgeError
from fieldgate.edge.health import HealthBoard
from fieldgate.protocol.errors import EncodeError
from fieldgate.retry import Backoff
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

# Commands awaiting an ack on one port; more are refused at once (the device is not keeping up).
MAX_PENDING_COMMANDS = 32
BUFFER_FULL_RETRY_INITIAL_S = 0.02
BUFFER_FULL_RETRY_MAX_S = 1.0


class SerialPort:
    def __init__(self, config: SerialPortConfig, health: HealthBoard, stats: SerialStats) -> None:
        self.config = config
        self.tenant = config.tenant
        self.device = config.device
        self.source = f"serial:{config.port}"
        self._health = health
        self._stats = stats
        self._protocol: PortProtocol = build_protocol(
            config.mode,
            config.tenant,
            config.device,
            channels=config.channels,
            max_line=config.max_line_bytes,
        )
        self._link: SerialLink | None = None
        self._silent = False
        self._pending: dict[str, asyncio.Future[str | None]] = {}
        self._write_lock = asyncio.Lock()
        self.last_hello: str | None = None
        # The current session decoded at least one valid frame (resets the reopen backoff).
        self._delivered = False

    @property
    def online(self) -> bool:
        return self._link is not None and not self._silent

    # ------------------------------------------------------------------ the task

    async def run(self, sink: EventSink, on_online: OnlineCallback) -> None:
        """Runs until cancelled. Catch-all at the top: an unexpected failure is logged and
        counted, the port is closed and reopened; it never ends the agent."""
        backoff = Backoff(self.config.reconnect_initial_s, self.config.reconnect_max_s)
        opened_before = False
        quiet_failures = 0
        while True:
            try:
                link = SerialLink.open(self.config.port, self.config.baudrate)
            except LinkError as err:
                self._stats.open_failures += 1
                # Not there (yet): the cloud must not keep a "connected" from an earlier run.
                self._health.down(self.tenant, self.device)
                if quiet_failures == 0:
                    log.warning(
                        "serial %s (%s/%s): %s; retrying", self.config.port, self.tenant, self.device, err
                    )
                quiet_failures += 1
                await backoff.sleep()
                continue
            quiet_failures = 0
            self._stats.ports_open += 1
            if opened_before:
                self._stats.reconnects += 1
            log.info(
                "serial %s open (%s/%s, %s mode)",
                self.config.port,
                self.tenant,
                self.device,
                self.config.mode,
            )
            self._delivered = False
            try:
                await self._session(link, sink, on_online, reconnect=opened_before)
            except LinkLost as err:
                self._stats.links_lost += 1
                self._health.error(self.tenant, self.device, "io")
                log.warning("serial %s lost: %s", self.config.port, err)
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except Exception:  # task top: count, log, reopen
                self._stats.port_task_errors += 1
                log.exception("serial %s: unexpected failure; reopening the port", self.config.port)
            finally:
                self._close(link)
            opened_before = True
            if self._delivered:
                backoff.reset()
            await backoff.sleep()

    async def _session(
        self, link: SerialLink, sink: EventSink, on_online: OnlineCallback, *, reconnect: bool
    ) -> None:
        self._link = link
        self._silent = False
        self._protocol.reset()
        self._health.connected(self.tenant, self.device, reconnect=reconnect)
        await self._online(on_online)
        buf = bytearray()
        while True:
            try:
                async with asyncio.timeout(self.config.silence_timeout_s):
                    data = await link.read()
            except TimeoutError:
                if not self._silent:
                    self._silent = True
                    self._health.error(self.tenant, self.device, "silent")
                    self._health.disconnected(self.tenant, self.device)
                    log.warning(
                        "serial %s: device silent for %.1f s", self.config.port, self.config.silence_timeout_s
                    )
                continue
            self._stats.bytes_read += len(data)
            buf += data
            got = self._protocol.feed(buf, now_ms())
            if got.frames:
                self._delivered = True
                self._health.seen(self.tenant, self.device)
                if self._silent:
                    self._silent = False
                    await self._online(on_online)
            self._settle_acks(got)
            await self._count_bad(got, sink)
            if got.events:
                await self._deliver(got.events, sink)

    def _close(self, link: SerialLink) -> None:
        link.close()
        self._link = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LinkLost("port lost while waiting for the ack"))
        self._health.disconnected(self.tenant, self.device)

    async def _online(self, on_online: OnlineCallback) -> None:
        try:
            await on_online(self.tenant, self.device)
        except EdgeError as err:
            self._stats.online_callback_errors += 1
            log.error("serial %s: on_online failed: %s", self.config.port, err)

    def _settle_acks(self, got: Received) -> None:
        self._stats.resync_dropped += got.resync_dropped
        self._stats.frames_ok += got.frames
        self._stats.unexpected_acks += got.unexpected_acks
        if got.hello is not None:
            self.last_hello = got.hello
        for invocation, refusal in got.acks:
            future = self._pending.get(invocation)
            if future is not None and not future.done():
                future.set_result(refusal)

    async def _count_bad(self, got: Received, sink: EventSink) -> None:
        for bad in got.bad:
            self._stats.count_bad(bad.kind)
            self._health.error(self.tenant, self.device, bad.kind)
            log.debug("serial %s: %s frame: %s", self.config.port, bad.kind, bad.reason)
            if bad.payload is not None:
                await sink.reject(bad.payload, source=self.source, reason=bad.reason, tenant=self.tenant)

    async def _deliver(self, events: list[pb.Event], sink: EventSink) -> None:
        backoff = Backoff(BUFFER_FULL_RETRY_INITIAL_S, BUFFER_FULL_RETRY_MAX_S)
        while True:
            try:
                await sink.accept(events, source=self.source)
            except BufferFull:
                # Not reading meanwhile: the tty buffer and then the device hold the data.
                self._stats.buffer_full_waits += 1
                await backoff.sleep()
                continue
            except EdgeError as err:
                self._stats.events_failed += len(events)
                log.error(
                    "serial %s: %d event(s) lost, the sink failed: %s", self.config.port, len(events), err
                )
                return
            self._stats.events_accepted += len(events)
            return

    # ------------------------------------------------------------------ commands

    async def send_command(self, invocation: pb.CommandInvocation) -> None:
        try:
            await self._send(invocation)
        except (DeliveryError, EncodeError) as err:
            kind = "no ack" if "no ack" in str(err) else "other"
            self._stats.count_command_failed(kind)
            raise
        self._stats.commands_acked += 1

    async def _send(self, invocation: pb.CommandInvocation) -> None:
        link = self._link
        if link is None or self._silent:
            raise DeliveryError(f"{self.source}: device not connected")
        if len(self._pending) >= MAX_PENDING_COMMANDS:
            raise DeliveryError(f"{self.source}: {MAX_PENDING_COMMANDS} commands already await an ack")
        key = invocation.invocation
        if key in self._pending:
            raise DeliveryError(f"{self.source}: command {key} is already being delivered")
        frame = self._protocol.encode_command(invocation)
        timeout = self.config.ack_timeout_s
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            async with asyncio.timeout(timeout):
                async with self._write_lock:
                    await link.write(frame)
                self._stats.commands_sent += 1
                refusal = await future
        except TimeoutError:
            self._health.error(self.tenant, self.device, "timeout")
            raise DeliveryError(f"no ack from the device within {timeout:g} s") from None
        except LinkLost as err:
            raise DeliveryError(f"{self.source}: {err}") from err
        finally:
            self._pending.pop(key, None)
        if refusal is not None:
            raise DeliveryError(f"device refused the command: {refusal}")
