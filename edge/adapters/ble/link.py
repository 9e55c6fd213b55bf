"""One configured BLE device: its coordinator task, notifications and command writes.

The coordinator loops *find → connect → subscribe → wait for the disconnect*, forever:

- **find**: ask the shared :class:`~fieldgate.edge.adapters.ble.discovery.Discovery` for the
  device's advertisement (allow-list match) for ``scan_interval_s``; a miss just scans again.
- **connect**: ``bleak_retry_connector.establish_connection`` (``connect_attempts`` attempts with
  its own short backoff between them, handling BlueZ's transient errors).
- **subscribe**: ``start_notify`` on every configured characteristic and on the command response
  characteristic; then the device is online (``on_online``; HealthBoard connected, reconnects
  counted from the second connection on).
- **disconnect**: bleak's disconnected callback ends the session; the link waits, then finds the
  device again. Failures (scan, connect) back off exponentially from ``backoff_initial_s`` to
  ``backoff_max_s``; a good session resets the backoff.

Notifications arrive in bleak's callback (synchronous, in the event loop). They are decoded at
once and queued (bounded, ``queue_size``, policy drop newest, counted as ``dropped["queue_full"]``)
for a consumer task that hands them to the sink in batches. A notification that does not decode
(wrong length...) is counted (HealthBoard error "decode", ``stats.decode_errors``), logged and
put in the sink's failed-decode lane; the device keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakError
from bleak_retry_connector import establish_connection

from fieldgate.edge.adapters import EventSink, OnlineCallback
from fieldgate.edge.adapters.ble.config import BleConfig, BleDeviceConfig
from fieldgate.edge.adapters.ble.decoding import DeviceDecoder
from fieldgate.edge.adapters.ble.discovery import Discovery, allow_list_matcher
from fieldgate.edge.adapters.ble.stats import BleStats
from fieldgate.edge.errors import BufferFull, DeliveryError
from fieldgate.edge.health import HealthBoard
from fieldgate.protocol.codec import DecodeContext
from fieldgate.protocol.codec.commands import encode_command_json
from fieldgate.protocol.codec.json_events import decode_json
from fieldgate.protocol.errors import DecodeError
from fieldgate.retry import Backoff
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

# What bleak and D-Bus raise when a link or the adapter goes away underneath us.
BLE_ERRORS: tuple[type[BaseException], ...] = (BleakError, TimeoutError, EOFError, OSError)
# A GATT write (with response, long write) carries at most 512 bytes (Core spec Vol 3 Part F 3.2.9).
MAX_WRITE = 512
MAX_PENDING_COMMANDS = 1000
BATCH = 256


@dataclass(frozen=True, slots=True)
class _Reject:
    payload: bytes
    reason: str


_Item = list[pb.Event] | _Reject


def _setter(event: asyncio.Event) -> Callable[[BleakClient], None]:
    """bleak's disconnected callback for one connection: sets that connection's event."""
    return lambda _client: event.set()


class DeviceLink:
    def __init__(
        self,
        cfg: BleDeviceConfig,
        adapter_cfg: BleConfig,
        discovery: Discovery,
        health: HealthBoard,
        stats: BleStats,
    ) -> None:
        self.cfg = cfg
        self._acfg = adapter_cfg
        self._discovery = discovery
        self._health = health
        self._stats = stats
        self._decoder = DeviceDecoder(cfg)
        self._match = allow_list_matcher(cfg.address, cfg.name)
        self.source = f"ble:{cfg.address or cfg.name}"
        self.client: BleakClient | None = None
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=adapter_cfg.queue_size)
        self._write_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.TimerHandle] = {}
        self._ever_connected = False
        self._stopping = False

    @property
    def key(self) -> tuple[str, str]:
        return self.cfg.tenant, self.cfg.device

    @property
    def online(self) -> bool:
        return self.client is not None and self.client.is_connected

    # ------------------------------------------------------------------ coordinator

    async def run(self, on_online: OnlineCallback) -> None:
        """The coordinator task (see the module docstring). Runs until cancelled."""
        tenant, device = self.key
        backoff = Backoff(self._acfg.backoff_initial_s, self._acfg.backoff_max_s)
        while True:
            try:
                found = await self._discovery.find(self._match, self._acfg.scan_interval_s)
            except BLE_ERRORS as err:
                self._stats.scan_failures += 1
                self._health.error(tenant, device, "scan_failed")
                delay = backoff.next_delay()
                log.warning("BLE %s: scanning failed: %s; retrying in %.1f s", device, err, delay)
                await asyncio.sleep(delay)
                continue
            if found is None:
                self._stats.scan_misses += 1
                log.debug("BLE %s: not advertising within %.1f s", device, self._acfg.scan_interval_s)
                continue
            gone = asyncio.Event()
            try:
                client = await establish_connection(
                    BleakClient,
                    found,
                    device,
                    disconnected_callback=_setter(gone),
                    max_attempts=self._acfg.connect_attempts,
                    use_services_cache=False,
                )
            except BLE_ERRORS as err:
                self._stats.connect_failures += 1
                self._health.error(tenant, device, "connect_failed")
                delay = backoff.next_delay()
                log.warning("BLE %s: connect failed: %s; retrying in %.1f s", device, err, delay)
                await asyncio.sleep(delay)
                continue
            if await self._session(client, gone, on_online):
                backoff.reset()
            await backoff.sleep()

    async def _session(self, client: BleakClient, gone: asyncio.Event, on_online: OnlineCallback) -> bool:
        """Subscribe and stay until the device disconnects; True if the session was good."""
        tenant, device = self.key
        good = False
        try:
            for uuid in self._decoder.by_uuid:
                await self._subscribe(client, uuid, self._on_measurement)
            command = self.cfg.command
            if command is not None and command.response_uuid is not None:
                await self._subscribe(client, command.response_uuid, self._on_response)
            good = True
            self.client = client
            self._stats.connects += 1
            self._health.connected(tenant, device, reconnect=self._ever_connected)
            if self._ever_connected:
                log.info("BLE %s: reconnected", device)
            else:
                log.info("BLE %s: connected (%s)", device, client.address)
            self._ever_connected = True
            try:
                await on_online(tenant, device)
            except Exception:  # a failing router must not take the link down
                self._stats.online_callback_errors += 1
                log.exception("BLE %s: on_online callback failed", device)
            await gone.wait()
        except BLE_ERRORS as err:
            self._health.error(tenant, device, "subscribe_failed")
            log.warning("BLE %s: setting up notifications failed: %s", device, err)
        finally:
            self.client = None
            self._health.disconnected(tenant, device)
            if not self._stopping and good:
                self._stats.disconnects += 1
                self._health.error(tenant, device, "disconnected")
                log.warning("BLE %s: disconnected; reconnecting", device)
            with contextlib.suppress(*BLE_ERRORS):
                async with asyncio.timeout(10):
                    await client.disconnect()
        return good

    async def _subscribe(self, client: BleakClient, uuid: str, handler: Any) -> None:
        def callback(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            handler(uuid, bytes(data))

        await client.start_notify(uuid, callback)

    # ------------------------------------------------------------------ notifications

    def _enqueue(self, item: _Item) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._stats.drop("queue_full")

    def _on_measurement(self, uuid: str, data: bytes) -> None:
        tenant, device = self.key
        self._stats.notifications += 1
        try:
            events = self._decoder.decode(uuid, data, now_ms())
        except DecodeError as err:
            self._stats.decode_errors += 1
            self._health.error(tenant, device, "decode")
            log.warning("BLE %s: bad notification on %s (%s): %s", device, uuid, err.reason, data.hex())
            self._enqueue(_Reject(data, f"{uuid}: {err.reason}"))
            return
        self._health.seen(tenant, device)
        if events:
            self._enqueue(events)

    def _on_response(self, uuid: str, data: bytes) -> None:
        """The device's answer on the response characteristic: fieldgate JSON events."""
        tenant, device = self.key
        self._stats.notifications += 1
        try:
            events = decode_json(data, DecodeContext(tenant, device, now_ms()))
        except DecodeError as err:
            self._stats.decode_errors += 1
            self._health.error(tenant, device, "decode")
            log.warning("BLE %s: bad command response (%s): %r", device, err.reason, data[:200])
            self._enqueue(_Reject(data, f"{uuid}: {err.reason}"))
            return
        self._health.seen(tenant, device)
        for event in events:
            if event.HasField("command_response"):
                self._stats.command_responses += 1
                timer = self._pending.pop(event.command_response.invocation, None)
                if timer is not None:
                    timer.cancel()
        self._enqueue(events)

    async def drain(self, sink: EventSink) -> None:
        """Consumer task: hand queued events to the sink in batches (runs until cancelled)."""
        while True:
            items = [await self._queue.get()]
            while len(items) < BATCH and not self._queue.empty():
                items.append(self._queue.get_nowait())
            events: list[pb.Event] = []
            for item in items:
                if isinstance(item, _Reject):
                    await self._reject(sink, item)
                else:
                    events.extend(item)
            if events:
                await self._accept(sink, events)

    async def _accept(self, sink: EventSink, events: list[pb.Event]) -> None:
        try:
            await sink.accept(events, source=self.source)
        except BufferFull:
            # A notification cannot be sent again: what the buffer refuses is lost, and counted.
            self._stats.drop("buffer_full", len(events))
            return
        except Exception:  # top of the consumer: count, log, keep consuming
            self._stats.sink_errors += 1
            self._stats.drop("sink_error", len(events))
            log.exception("BLE %s: sink failed", self.cfg.device)
            return
        self._stats.events_accepted += len(events)

    async def _reject(self, sink: EventSink, item: _Reject) -> None:
        try:
            await sink.reject(item.payload, source=self.source, reason=item.reason, tenant=self.cfg.tenant)
        except Exception:  # top of the consumer: count, log, keep consuming
            self._stats.sink_errors += 1
            log.exception("BLE %s: failed-decode lane failed", self.cfg.device)

    # ------------------------------------------------------------------ commands

    async def send_command(self, invocation: pb.CommandInvocation) -> None:
        """Write the command (with response); returning means the device took it (DELIVERED)."""
        tenant, device = self.key
        command = self.cfg.command
        if command is None:
            raise DeliveryError(f"BLE device {device} has no command characteristic configured")
        client = self.client
        if client is None or not client.is_connected:
            raise DeliveryError("device offline")
        if command.encoding == "json":
            payload = encode_command_json(invocation)
        else:
            payload = invocation.command.encode()
        if len(payload) > MAX_WRITE:
            raise DeliveryError(f"command is {len(payload)} bytes; a GATT write carries at most {MAX_WRITE}")
        inv = invocation.invocation
        if command.response_uuid is not None:
            self._expect_response(inv, command.response_timeout_s)
        try:
            async with self._write_lock, asyncio.timeout(command.write_timeout_s):
                await client.write_gatt_char(command.uuid, payload, response=True)
        except BLE_ERRORS as err:
            timer = self._pending.pop(inv, None)
            if timer is not None:
                timer.cancel()
            self._stats.commands_failed += 1
            self._health.error(tenant, device, "command_failed")
            raise DeliveryError(f"BLE write failed: {str(err) or type(err).__name__}") from err
        self._stats.commands_sent += 1
        if command.response_uuid is None:
            self._synthesize(inv, {"written": True})

    def _expect_response(self, invocation: str, timeout_s: float) -> None:
        if len(self._pending) >= MAX_PENDING_COMMANDS:
            oldest = next(iter(self._pending))
            self._pending.pop(oldest).cancel()
            self._synthesize(oldest, {"written": True, "answered": False})
        loop = asyncio.get_running_loop()
        self._pending[invocation] = loop.call_later(timeout_s, self._response_timeout, invocation)

    def _response_timeout(self, invocation: str) -> None:
        if self._pending.pop(invocation, None) is not None:
            log.info("BLE %s: no response to %s; reporting the write only", self.cfg.device, invocation)
            self._synthesize(invocation, {"written": True, "answered": False})

    def _synthesize(self, invocation: str, response: dict[str, object]) -> None:
        ms = now_ms()
        event = pb.Event(
            tenant=self.cfg.tenant,
            device=self.cfg.device,
            event_time_ms=ms,
            received_time_ms=ms,
            command_response=pb.CommandResponse(
                invocation=invocation, response_json=orjson.dumps(response).decode()
            ),
        )
        event.metadata["source"] = "ble"
        self._stats.command_responses_synthesized += 1
        self._enqueue([event])

    def close(self) -> None:
        self._stopping = True
        for timer in self._pending.values():
            timer.cancel()
        self._pending.clear()
