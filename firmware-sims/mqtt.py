"""N simulated devices over MQTT (paho-mqtt 2.x), for tests, demos and load runs.

Each device publishes measurements on ``fieldgate/<tenant>/devices/<device>/events`` (or, with
``fmt="sitewhere"``, SiteWhere DeviceMeasurement messages on ``SiteWhere/<tenant>/input/json``),
subscribes to ``fieldgate/<tenant>/devices/<device>/commands`` and answers ``ping`` and
``set-interval`` there like real firmware (:mod:`fieldgate.sims.device` holds that behaviour;
this module is only transport and scheduling).

Use from async code (tests, :mod:`fieldgate.suite`)::

    async with MqttDeviceSim(port=port, devices=3, rate_hz=2.0, with_ids=True) as sim:
        await sim.wait_done(timeout_s=10)        # only when bounded by count= or duration_s=
        print(sim.stats().acked, sim.acked_ids())

or from threads / scripts with the ``*_sync`` twins (``start_sync``, ``stop_sync``, ``with sim:``).
``fieldgate sim mqtt`` is :func:`add_cli_arguments` + :func:`run_from_args`.

Design points:

- **Rate** is messages per second per device, each message carrying ``batch`` events (a JSON
  array when ``batch`` > 1). ``rate_hz=0`` sends as fast as the in-flight window allows (load
  runs). A ``set-interval`` command changes one device's period to ``seconds``.
- **Bounded in-flight window**: at most ``max_inflight`` (default 1000) data messages are
  unacknowledged at any time across all connections; the sender waits for PUBACKs beyond it.
  paho itself queues without bound and stalls once 65,535 QoS 1 message ids are in use
  (docs/simulators.md), so this window is what keeps a load run honest. QoS 0 messages count as
  acknowledged once written to the socket.
- **Threads**: one sender thread schedules every device (a heap of due times); each MQTT
  connection has paho's network thread, which handles PUBACKs and commands. Command responses
  are published from the network thread and are not counted against the window (the thread
  that processes PUBACKs must never wait for one).
- **Connections**: one per device by default, like real devices; ``connections=k`` spreads the
  devices round-robin over k connections for load runs with many devices. Each device still
  subscribes to its own commands topic, so the gateway sees exactly which devices are online.
- **Ids**: with ``with_ids=True`` every event carries ``"id": "<run_id>-<n>"`` (unique within
  the run, n counting up across all devices), so a test can check that each acknowledged event
  was stored exactly once. ``acked_ids()`` lists them; ``on_sent``/``on_acked`` callbacks see them
  as they go (``on_sent`` gets ``time.monotonic()`` just before the publish: on Linux that clock is
  system-wide, so another process can compute latencies from it).
- **Timestamps** (``ts``, epoch ms) are the wall clock when the message is built, so two messages
  of one device sent within a millisecond share one. ``distinct_ts=True`` makes each device's
  ``ts`` strictly increase (the next millisecond when the clock has not moved on): stores that
  key readings by (device, key, ts), such as ThingsBoard, would otherwise merge them.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from fieldgate.protocol import topics
from fieldgate.sims.device import (
    CommandReply,
    Sensors,
    device_tokens,
    encode_command_response,
    encode_events,
    encode_sitewhere_measurement,
    handle_command,
    interval_for_rate,
    measurement,
)
from fieldgate.sims.errors import CommandError, SimConfigError, SimConnectError
from fieldgate.sims.mqtt_cli import DEFAULT_MAX_INFLIGHT, FORMATS, Format, add_cli_arguments
from fieldgate.timeutil import now_ms

__all__ = ["MqttDeviceSim", "SimStats", "add_cli_arguments", "run_from_args"]

log = logging.getLogger(__name__)


# paho uses 16-bit message ids per connection; past this it refuses or stalls.
PAHO_MID_LIMIT = 65_535
# Topics per SUBSCRIBE packet when one connection carries many devices.
SUBSCRIBE_CHUNK = 100
# A device that fell further behind than this (a stalled broker) skips the backlog instead of
# bursting it out afterwards: real firmware does not replay missed sampling ticks.
MAX_CATCH_UP_S = 1.0
# How often blocked waits look at the stop flag.
POLL_S = 0.1
# The values a SiteWhere-flavoured device reports, one DeviceMeasurement per message in turn.
SITEWHERE_VALUES = ("temperature", "humidity")

OnSent = Callable[[Sequence[str], float], None]
OnAcked = Callable[[Sequence[str]], None]


def sitewhere_topic(tenant: str) -> str:
    """Where SiteWhere devices publish (docs/protocols/mqtt.md)."""
    return f"SiteWhere/{tenant}/input/json"


@dataclass(frozen=True, slots=True)
class SimStats:
    """A snapshot of the simulator's counters (data messages unless named otherwise)."""

    devices: int
    connections: int
    sent: int  # messages handed to paho
    events_sent: int
    acked: int  # PUBACK received (QoS 1) / written to the socket (QoS 0)
    events_acked: int
    inflight: int  # sent and not yet acknowledged
    inflight_peak: int
    publish_errors: int  # messages paho refused; they were not sent
    commands_received: int
    commands_invalid: int  # no invocation id to answer to (not answered, logged)
    responses_sent: int
    responses_acked: int
    disconnects: int
    callback_errors: int  # bugs caught at the top of a paho callback (logged)
    elapsed_s: float  # since the sender started


@dataclass(slots=True)
class _Pending:
    ids: list[str]
    events: int


@dataclass(eq=False, slots=True)
class _Connection:
    """One paho client and the bookkeeping of its unacknowledged publishes."""

    client_id: str
    client: mqtt.Client
    devices: list[_Device] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # mid → what that data message carried, until its PUBACK arrives.
    pending: dict[int, _Pending] = field(default_factory=dict)
    # PUBACKs that arrived before publish() returned the mid to the sender (they race).
    early: set[int] = field(default_factory=set)
    # Command responses in flight; their PUBACKs must not release the data window.
    response_mids: set[int] = field(default_factory=set)
    subscribe_mids: set[int] = field(default_factory=set)
    ready: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    by_topic: dict[str, _Device] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class _Device:
    token: str
    index: int
    events_topic: str
    commands_topic: str
    sensors: Sensors
    interval_s: float
    conn: _Connection | None = None
    generation: int = 0  # bumped by set-interval; stale heap entries are skipped
    turn: int = 0  # SiteWhere flavour: which value the next message carries
    last_ts: int = 0  # the ts of its previous message (distinct_ts)


class MqttDeviceSim:
    """N simulated MQTT devices. See the module docstring for the model and the guarantees."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        tenant: str = "default",
        devices: int | Sequence[str] = 1,
        rate_hz: float = 1.0,
        batch: int = 1,
        qos: int = 1,
        fmt: Format = "json",
        count: int | None = None,
        duration_s: float | None = None,
        with_ids: bool = False,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        connections: int | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        connect_timeout_s: float = 10.0,
        client_id_prefix: str = "fieldgate-sim",
        seed: int | None = None,
        run_id: str | None = None,
        on_sent: OnSent | None = None,
        on_acked: OnAcked | None = None,
        distinct_ts: bool = False,
    ) -> None:
        tokens = device_tokens(devices) if isinstance(devices, int) else list(devices)
        _check(bool(tokens), "at least one device")
        _check(
            run_id is None or bool(topics.TOKEN_RE.match(run_id)),
            "run_id must be a token (letters, digits, .:_-)",
        )
        _check(len(set(tokens)) == len(tokens), "device tokens must be unique")
        for token in (tenant, *tokens):
            _check(bool(topics.TOKEN_RE.match(token)), f"not a valid tenant/device token: {token!r}")
        try:
            interval = interval_for_rate(rate_hz)
        except ValueError as err:
            raise SimConfigError(str(err)) from err
        _check(batch >= 1, "batch must be >= 1")
        _check(batch <= 10_000, "batch must be <= 10000 (the gateway's per-message limit)")
        _check(qos in (0, 1), "qos must be 0 or 1")
        _check(fmt in FORMATS, f"format must be one of {', '.join(FORMATS)}")
        _check(fmt == "json" or batch == 1, "the SiteWhere format carries one measurement per message")
        _check(count is None or count >= 0, "count must be >= 0")
        _check(duration_s is None or duration_s >= 0, "duration must be >= 0")
        _check(1 <= max_inflight <= PAHO_MID_LIMIT // 2, f"max_inflight must be 1..{PAHO_MID_LIMIT // 2}")
        n_conn = len(tokens) if connections is None else connections
        _check(1 <= n_conn <= len(tokens), "connections must be between 1 and the number of devices")

        self.host = host
        self.port = port
        self.tenant = tenant
        self.rate_hz = rate_hz
        self.batch = batch
        self.qos = qos
        self.fmt: Format = fmt
        self.count = count
        self.duration_s = duration_s
        self.with_ids = with_ids
        self.distinct_ts = distinct_ts
        self.max_inflight = max_inflight
        # Prefix of the event ids; a caller that must recognise its events elsewhere can set it.
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self._username = username
        self._password = password
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._on_sent = on_sent
        self._on_acked = on_acked
        self._rng = random.Random(seed)  # used by the sender thread only
        self._ids = itertools.count(1)

        self._devices = [
            _Device(
                token=token,
                index=i,
                events_topic=topics.events_topic(tenant, token),
                commands_topic=topics.commands_topic(tenant, token),
                sensors=Sensors.initial(self._rng),
                interval_s=interval,
            )
            for i, token in enumerate(tokens)
        ]
        self._by_token = {d.token: d for d in self._devices}
        self._connections: list[_Connection] = []
        for c in range(n_conn):
            client_id = f"{client_id_prefix}-{self.run_id}-{c + 1}"
            conn = _Connection(client_id=client_id, client=self._new_client(client_id))
            self._connections.append(conn)
        for dev in self._devices:
            conn = self._connections[dev.index % n_conn]
            dev.conn = conn
            conn.devices.append(dev)
            conn.by_topic[dev.commands_topic] = dev

        # Scheduling state: guarded by _cond (sender thread + set-interval from network threads).
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, int]] = []
        self._stopping = False
        # Counters: guarded by _stats_cond (sender + every network thread).
        self._stats_cond = threading.Condition()
        self._sent = self._events_sent = self._acked = self._events_acked = 0
        self._inflight = self._inflight_peak = self._publish_errors = 0
        self._commands_received = self._commands_invalid = 0
        self._responses_sent = self._responses_acked = 0
        self._disconnects = self._callback_errors = 0
        self._acked_ids: list[str] = []
        self._window = threading.BoundedSemaphore(max_inflight)
        self._sender: threading.Thread | None = None
        self._finished = threading.Event()
        self._started_at: float | None = None
        self._running = False

    # ----------------------------------------------------------------- public API

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(d.token for d in self._devices)

    @property
    def sent(self) -> int:
        return self.stats().sent

    @property
    def acked(self) -> int:
        return self.stats().acked

    @property
    def commands_received(self) -> int:
        return self.stats().commands_received

    @property
    def responses_sent(self) -> int:
        return self.stats().responses_sent

    def stats(self) -> SimStats:
        with self._stats_cond:
            return SimStats(
                devices=len(self._devices),
                connections=len(self._connections),
                sent=self._sent,
                events_sent=self._events_sent,
                acked=self._acked,
                events_acked=self._events_acked,
                inflight=self._inflight,
                inflight_peak=self._inflight_peak,
                publish_errors=self._publish_errors,
                commands_received=self._commands_received,
                commands_invalid=self._commands_invalid,
                responses_sent=self._responses_sent,
                responses_acked=self._responses_acked,
                disconnects=self._disconnects,
                callback_errors=self._callback_errors,
                elapsed_s=0.0 if self._started_at is None else time.monotonic() - self._started_at,
            )

    def acked_ids(self) -> list[str]:
        """Ids of the events whose messages were acknowledged (``with_ids=True``), in ack order."""
        with self._stats_cond:
            return list(self._acked_ids)

    def interval_of(self, device: str) -> float:
        """The device's current send period in seconds (0: as fast as the window allows)."""
        with self._cond:
            return self._by_token[device].interval_s

    def set_interval(self, device: str, seconds: float) -> None:
        """What ``set-interval`` does: the device's next message goes out ``seconds`` from now."""
        if not math.isfinite(seconds) or seconds < 0:
            raise SimConfigError("interval must be a finite number >= 0")
        with self._cond:
            dev = self._by_token[device]
            dev.interval_s = seconds
            dev.generation += 1
            heapq.heappush(self._heap, (time.monotonic() + seconds, dev.generation, dev.index))
            self._cond.notify()

    async def start(self) -> None:
        """Connect every device, subscribe to its commands topic, then start sending."""
        await asyncio.to_thread(self.start_sync)

    async def stop(self, drain_s: float = 5.0) -> None:
        """Stop sending, wait up to ``drain_s`` for outstanding PUBACKs, disconnect."""
        await asyncio.to_thread(self.stop_sync, drain_s)

    async def wait_done(self, timeout_s: float | None = None) -> bool:
        """True once the run's ``count``/``duration_s`` is reached (False on timeout)."""
        return await asyncio.to_thread(self.wait_done_sync, timeout_s)

    async def wait_acked(self, timeout_s: float | None = None) -> bool:
        """True once no data message is waiting for its acknowledgement."""
        return await asyncio.to_thread(self.wait_acked_sync, timeout_s)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __enter__(self) -> Self:
        self.start_sync()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_sync()

    def start_sync(self) -> None:
        if self._running:
            return
        if self._stopping:
            raise SimConfigError("a simulator runs once; create a new one to run again")
        self._running = True
        try:
            for conn in self._connections:
                self._connect(conn)
            deadline = time.monotonic() + self._connect_timeout_s
            for conn in self._connections:
                if not conn.ready.wait(max(0.0, deadline - time.monotonic())):
                    raise SimConnectError(
                        f"no CONNACK/SUBACK from {self.host}:{self.port} within {self._connect_timeout_s}s"
                    )
                if conn.error is not None:
                    raise SimConnectError(f"{self.host}:{self.port} refused {conn.client_id}: {conn.error}")
        except BaseException:
            self._disconnect_all()
            self._running = False
            raise
        now = time.monotonic()
        with self._cond:
            n = len(self._devices)
            for dev in self._devices:
                # Spread the first messages over one period so devices do not fire in lockstep.
                heapq.heappush(self._heap, (now + dev.interval_s * dev.index / n, dev.generation, dev.index))
        self._started_at = now
        self._sender = threading.Thread(target=self._sender_main, name=f"mqtt-sim-{self.run_id}", daemon=True)
        self._sender.start()
        log.info(
            "simulating %d device(s) on %s:%d over %d connection(s)",
            len(self._devices),
            self.host,
            self.port,
            len(self._connections),
        )

    def stop_sync(self, drain_s: float = 5.0) -> None:
        if not self._running:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join()
        if drain_s > 0 and not self.wait_acked_sync(drain_s):
            log.warning("stopping with %d message(s) not acknowledged", self.stats().inflight)
        self._disconnect_all()
        self._running = False

    def wait_done_sync(self, timeout_s: float | None = None) -> bool:
        return self._finished.wait(timeout_s)

    def wait_acked_sync(self, timeout_s: float | None = None) -> bool:
        with self._stats_cond:
            return self._stats_cond.wait_for(lambda: self._inflight == 0, timeout_s)

    # ----------------------------------------------------------------- connections

    def _new_client(self, client_id: str) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        client.max_inflight_messages_set(self.max_inflight)
        # Explicit reconnect policy: exponential backoff from 1 s, capped at 10 s (paho's loop).
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _connect(self, conn: _Connection) -> None:
        conn.client.user_data_set(conn)
        try:
            conn.client.connect(self.host, self.port, keepalive=self._keepalive_s)
        except OSError as err:
            raise SimConnectError(f"cannot connect to MQTT broker {self.host}:{self.port}: {err}") from err
        conn.client.loop_start()

    def _disconnect_all(self) -> None:
        for conn in self._connections:
            conn.client.disconnect()
            conn.client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, conn: _Connection, flags: Any, reason: Any, props: Any
    ) -> None:
        try:
            if reason.is_failure:
                conn.error = str(reason)
                conn.ready.set()
                return
            log.debug("%s connected", conn.client_id)
            wanted = [(d.commands_topic, 1) for d in conn.devices]
            for i in range(0, len(wanted), SUBSCRIBE_CHUNK):
                rc, mid = client.subscribe(wanted[i : i + SUBSCRIBE_CHUNK])
                if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                    conn.subscribe_mids.add(mid)
        except Exception:  # top of a paho callback: an escaping error would kill its thread
            log.exception("simulator on_connect failed")
            self._count_callback_error()

    def _on_subscribe(
        self, client: mqtt.Client, conn: _Connection, mid: int, reasons: Any, props: Any
    ) -> None:
        try:
            if any(r.is_failure for r in reasons):
                conn.error = "subscription to a commands topic refused"
            conn.subscribe_mids.discard(mid)
            if not conn.subscribe_mids:
                conn.ready.set()
        except Exception:  # top of a paho callback
            log.exception("simulator on_subscribe failed")
            self._count_callback_error()

    def _on_disconnect(
        self, client: mqtt.Client, conn: _Connection, flags: Any, reason: Any, props: Any
    ) -> None:
        try:
            if self._stopping:
                return
            with self._stats_cond:
                self._disconnects += 1
            log.warning("%s disconnected (%s); paho reconnects with backoff", conn.client_id, reason)
        except Exception:  # top of a paho callback
            log.exception("simulator on_disconnect failed")
            self._count_callback_error()

    def _count_callback_error(self) -> None:
        with self._stats_cond:
            self._callback_errors += 1

    # ----------------------------------------------------------------- sending

    def _sender_main(self) -> None:
        try:
            self._send_loop()
        except Exception:  # top of the sender thread: report and count, stop sending
            log.exception("simulator sender failed")
            self._count_callback_error()
        finally:
            self._finished.set()

    def _send_loop(self) -> None:
        deadline = math.inf if self.duration_s is None else time.monotonic() + self.duration_s
        sent = 0
        while self.count is None or sent < self.count:
            dev = self._next_due(deadline)
            if dev is None or not self._acquire_window(deadline):
                return
            self._publish_data(dev)
            sent += 1

    def _next_due(self, deadline: float) -> _Device | None:
        """The next device whose message is due, waiting for it; None when the run is over."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if now >= deadline:
                    return None
                due, generation, index = self._heap[0]
                dev = self._devices[index]
                if generation != dev.generation:
                    heapq.heappop(self._heap)
                    continue
                if due <= now:
                    following = due + dev.interval_s
                    if dev.interval_s == 0 or following < now - MAX_CATCH_UP_S:
                        following = now
                    heapq.heapreplace(self._heap, (following, generation, index))
                    return dev
                self._cond.wait(min(due, deadline) - now)
            return None

    def _acquire_window(self, deadline: float) -> bool:
        while not self._window.acquire(timeout=POLL_S):
            if self._stopping or time.monotonic() >= deadline:
                return False
        with self._stats_cond:
            self._inflight += 1
            self._inflight_peak = max(self._inflight_peak, self._inflight)
        return True

    def _publish_data(self, dev: _Device) -> None:
        ts = now_ms()
        if self.distinct_ts:
            ts = max(ts, dev.last_ts + 1)
            dev.last_ts = ts
        ids: list[str] = []
        if self.fmt == "json":
            events = []
            for _ in range(self.batch):
                event_id = f"{self.run_id}-{next(self._ids)}" if self.with_ids else None
                if event_id is not None:
                    ids.append(event_id)
                events.append(measurement(dev.sensors.read(self._rng), ts, event_id))
            topic, payload = dev.events_topic, encode_events(events)
        else:
            name = SITEWHERE_VALUES[dev.turn % len(SITEWHERE_VALUES)]
            dev.turn += 1
            event_id = f"{self.run_id}-{next(self._ids)}" if self.with_ids else None
            if event_id is not None:
                ids.append(event_id)
            value = dev.sensors.read(self._rng)[name]
            topic = sitewhere_topic(self.tenant)
            payload = encode_sitewhere_measurement(dev.token, name, value, ts, event_id)
        if self._on_sent is not None:
            self._on_sent(ids, time.monotonic())
        assert dev.conn is not None
        conn = dev.conn
        info = conn.client.publish(topic, payload, qos=self.qos)
        queued = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            # QoS 1 while reconnecting: paho keeps it and sends it once connected.
            self.qos == 1 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
        )
        if not queued:
            log.warning("paho refused a publish on %s: %s", topic, mqtt.error_string(info.rc))
            with self._stats_cond:
                self._publish_errors += 1
                self._inflight -= 1
                self._stats_cond.notify_all()
            self._window.release()
            return
        pending = _Pending(ids, self.batch)
        with self._stats_cond:
            self._sent += 1
            self._events_sent += pending.events
        with conn.lock:
            acked_already = info.mid in conn.early
            if acked_already:
                conn.early.discard(info.mid)
            else:
                conn.pending[info.mid] = pending
        if acked_already:
            self._settle(pending)

    def _on_publish(self, client: mqtt.Client, conn: _Connection, mid: int, reason: Any, props: Any) -> None:
        try:
            with conn.lock:
                if mid in conn.response_mids:
                    conn.response_mids.discard(mid)
                    pending = None
                    response = True
                else:
                    response = False
                    pending = conn.pending.pop(mid, None)
                    if pending is None:
                        conn.early.add(mid)
            if response:
                with self._stats_cond:
                    self._responses_acked += 1
            elif pending is not None:
                self._settle(pending)
        except Exception:  # top of a paho callback
            log.exception("simulator on_publish failed")
            self._count_callback_error()

    def _settle(self, pending: _Pending) -> None:
        with self._stats_cond:
            self._acked += 1
            self._events_acked += pending.events
            self._inflight -= 1
            if self.with_ids:
                self._acked_ids.extend(pending.ids)
            self._stats_cond.notify_all()
        self._window.release()
        if self._on_acked is not None:
            self._on_acked(pending.ids)

    # ----------------------------------------------------------------- commands

    def _on_message(self, client: mqtt.Client, conn: _Connection, message: mqtt.MQTTMessage) -> None:
        try:
            dev = conn.by_topic.get(message.topic)
            if dev is None:
                return
            with self._stats_cond:
                self._commands_received += 1
            try:
                reply = handle_command(message.payload)
            except CommandError as err:
                log.warning("%s: unusable command (%s), not answered", dev.token, err.reason)
                with self._stats_cond:
                    self._commands_invalid += 1
                return
            self._answer(conn, dev, reply)
        except Exception:  # top of a paho callback
            log.exception("simulator on_message failed")
            self._count_callback_error()

    def _answer(self, conn: _Connection, dev: _Device, reply: CommandReply) -> None:
        if reply.interval_s is not None:
            self.set_interval(dev.token, reply.interval_s)
        log.info("%s: %s (%s) → %s", dev.token, reply.command, reply.invocation, reply.response)
        info = conn.client.publish(dev.events_topic, encode_command_response(reply, now_ms()), qos=1)
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # Safe without racing the PUBACK: it is handled by this same network thread, later.
            with conn.lock:
                conn.response_mids.add(info.mid)
            with self._stats_cond:
                self._responses_sent += 1
        else:
            log.warning(
                "%s: response to %s not sent: %s", dev.token, reply.invocation, mqtt.error_string(info.rc)
            )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SimConfigError(message)


# --------------------------------------------------------------------- CLI


def run_from_args(ns: argparse.Namespace) -> int:
    """``fieldgate sim mqtt``: run until --count/--duration is reached or Ctrl-C, print a summary."""
    try:
        tokens: list[str] = ns.device_tokens or device_tokens(ns.devices, ns.prefix)
    except ValueError as err:
        print(f"fieldgate sim mqtt: {err}", file=sys.stderr)
        return 2
    try:
        sim = MqttDeviceSim(
            ns.host,
            ns.port,
            tenant=ns.tenant,
            devices=tokens,
            rate_hz=ns.rate,
            batch=ns.batch,
            qos=ns.qos,
            fmt=ns.sim_format,
            count=ns.count,
            duration_s=ns.duration,
            with_ids=ns.with_ids,
            max_inflight=ns.max_inflight,
            connections=ns.connections,
            username=ns.username,
            password=ns.password or os.environ.get("FIELDGATE_SIM_PASSWORD"),
            seed=ns.seed,
        )
    except SimConfigError as err:
        print(f"fieldgate sim mqtt: {err}", file=sys.stderr)
        return 2
    try:
        sim.start_sync()
    except SimConnectError as err:
        print(f"fieldgate sim mqtt: {err}", file=sys.stderr)
        return 1
    bound = []
    if ns.count is not None:
        bound.append(f"{ns.count} messages")
    if ns.duration is not None:
        bound.append(f"{ns.duration:g} s")
    print(
        f"simulating {len(sim.devices)} device(s) {sim.devices[0]}.. on {ns.host}:{ns.port}, tenant "
        f"{ns.tenant}, {ns.rate:g} msg/s each, {ns.batch} event(s)/message, QoS {ns.qos}, "
        f"{' or '.join(bound) or 'until Ctrl-C'}",
        flush=True,
    )
    interrupted = False
    previous = _sigterm_as_interrupt()
    try:
        step = ns.progress if ns.progress > 0 else 1.0
        while not sim.wait_done_sync(step):
            if ns.progress > 0:
                _progress_line(sim.stats())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        sim.stop_sync()
    _summary(sim.stats(), interrupted)
    return 0


def _sigterm_as_interrupt() -> signal.Handlers | Callable[[int, FrameType | None], Any] | int | None:
    """Let SIGTERM stop the run as cleanly as Ctrl-C does (when we own the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _progress_line(s: SimStats) -> None:
    print(
        f"[{s.elapsed_s:7.1f}s] sent {s.sent} ({s.events_sent} events), acked {s.acked}, "
        f"in flight {s.inflight}, commands {s.commands_received}",
        file=sys.stderr,
        flush=True,
    )


def _summary(s: SimStats, interrupted: bool) -> None:
    rate = s.sent / s.elapsed_s if s.elapsed_s > 0 else 0.0
    print(
        f"{'interrupted' if interrupted else 'done'} after {s.elapsed_s:.1f} s: sent {s.sent} messages "
        f"({s.events_sent} events, {rate:.0f} msg/s), acknowledged {s.acked}, not acknowledged {s.inflight}, "
        f"publish errors {s.publish_errors}; commands received {s.commands_received} "
        f"(unusable {s.commands_invalid}), responses sent {s.responses_sent}; "
        f"in-flight peak {s.inflight_peak}, disconnects {s.disconnects}",
        flush=True,
    )
