"""The MQTT adapter for an external broker (Mosquitto): the agent is one subscriber among others.

Delivery guarantee: the agent connects with a fixed client id and ``clean_session=False`` (a
persistent session), subscribes with QoS 1 (``mqtt.qos``) and acknowledges each message
manually (paho ``manual_ack=True``) only after ``sink.accept`` returned. Whatever the broker
handed over and the agent did not make durable — the agent stopped, crashed, or the buffer was
full — stays unacknowledged in the session and is delivered again after the next connect. While
the agent is away, the broker queues for its session; it must be configured not to drop that
queue (Mosquitto: ``max_queued_messages 0``, see docs/operations/mosquitto.md and the shipped
``mosquitto-fieldgate.conf``).

When a message cannot be made durable (buffer full under ``reject_new``, or the sink failed),
the adapter disconnects and reconnects after a backoff, because brokers only resend
unacknowledged messages on a new connection. Connection attempts back off exponentially
(``backoff_initial_s`` doubling up to ``backoff_max_s``), each failure logged and counted in
``stats``; the backoff starts over once a connection is up and messages flow again.

I/O model: paho's socket is driven from the asyncio loop (:class:`PahoAsyncioBridge`), so every
callback runs on the loop and each message is handed over in its own task. At most
``max_inflight`` messages are handed over at once; above that the adapter stops reading the
socket until half of them are done (TCP backpressure towards the broker).

Online: the agent cannot see other clients' subscriptions on an external broker, so every
device counts as online while the agent is connected to the broker (which queues commands for
devices with persistent sessions); commands are published with QoS 1 on the device's commands
topic and ``send_command`` returns once the broker acknowledged them. While the broker is
unreachable every device is offline: the router keeps their commands waiting, and after the
reconnect ``on_online`` is called for each device it asked about in the meantime. Ownership:
every device of the configured tenants.

Link state (``health``, forwarded to the cloud as PRESENCE ``connected``/``disconnected``): the
broker does not tell other clients who connects (Mosquitto's ``$SYS`` tree has counts only),
so a device's link is what it reports on ``fieldgate/<tenant>/devices/<device>/link``:
``connected`` after connecting, ``disconnected`` as its will message (published by the broker
when the device misses its keepalive or its connection breaks) and before a clean DISCONNECT
(docs/protocols/mqtt.md, *Link state*). The agent subscribes to those topics too; a device
that never reports has no link state, and a lost broker connection changes none (the devices
may still be connected to the broker).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from fieldgate.edge.adapters import EventSink, OnlineCallback
from fieldgate.edge.adapters.mqtt.dispatch import Dispatcher, Outcome
from fieldgate.edge.adapters.mqtt.link import ReportedLinks
from fieldgate.edge.adapters.mqtt.paho_loop import PahoAsyncioBridge
from fieldgate.edge.adapters.mqtt.presence import DeviceRegistry, notify_online
from fieldgate.edge.adapters.mqtt.stats import MqttStats
from fieldgate.edge.config import MqttConfig
from fieldgate.edge.errors import DeliveryError
from fieldgate.edge.health import HealthBoard
from fieldgate.protocol import topics
from fieldgate.protocol.codec.commands import encode_command_json
from fieldgate.protocol.codec.sitewhere_commands import encode_sitewhere_command_json
from fieldgate.retry import Backoff
from fieldgate.tasks import cancel_and_wait
from fieldgate.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

COMMAND_ACK_TIMEOUT_S = 10.0
CONNACK_TIMEOUT_S = 10.0
# On stop, messages still being handed over get this long to finish (and be acknowledged).
STOP_DRAIN_TIMEOUT_S = 5.0


class _ConnectRefused(Exception):
    """The broker answered CONNECT with a failure reason code."""


class ExternalMqttAdapter:
    """Adapter backend subscribing to an external broker with a persistent session."""

    name = "mqtt-external"

    def __init__(
        self,
        config: MqttConfig,
        *,
        tenants: Collection[str],
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_inflight: int = 1000,
        max_pending_commands: int = 1000,
        max_known_devices: int = 100_000,
    ) -> None:
        self._config = config
        self._tenants = frozenset(tenants)
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._high = max_inflight
        self._low = max_inflight // 2
        self._max_pending_commands = max_pending_commands
        self.stats = MqttStats()
        self.devices = DeviceRegistry(max_known_devices)
        self.health = HealthBoard()
        self.links = ReportedLinks(self.health)
        self._waiting = DeviceRegistry(max_known_devices)
        self._filters = [
            f for f in topics.SUBSCRIPTIONS if config.sitewhere_compat or f not in topics.SITEWHERE_FILTERS
        ]
        if config.sitewhere_compat and config.sitewhere_1x_tenant is not None:
            self._filters += topics.SITEWHERE_1X_FILTERS

        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._bridge: PahoAsyncioBridge | None = None
        self._dispatcher: Dispatcher | None = None
        self._on_online: OnlineCallback | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

        # Per-connection state; ``_generation`` tells acknowledgements of a previous connection
        # apart (their packet ids mean nothing on the new one).
        self._generation = 0
        self._connack: asyncio.Future[bool] | None = None
        self._ended: asyncio.Future[str] | None = None
        self._ready = asyncio.Event()
        self._dropping = False
        self._sink_trouble = False
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending_commands: dict[int, asyncio.Future[None]] = {}

    # Adapter ------------------------------------------------------------------------------

    async def start(self, sink: EventSink, on_online: OnlineCallback) -> None:
        if self._runner is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._on_online = on_online
        self._stopping = False
        self._dispatcher = Dispatcher(
            sink,
            tenants=self._tenants,
            max_payload_bytes=self._config.max_payload_bytes,
            sitewhere_compat=self._config.sitewhere_compat,
            sitewhere_1x_tenant=self._config.sitewhere_1x_tenant,
            stats=self.stats,
            devices=self.devices,
            links=self.links,
        )
        self._client = self._make_client()
        self._bridge = PahoAsyncioBridge(self._client, self._loop)
        self._runner = self._loop.create_task(self._run(), name=f"{self.name}-connection")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        if self._tasks:
            # Let messages already being handed over finish, so they are acknowledged.
            await asyncio.wait(set(self._tasks), timeout=STOP_DRAIN_TIMEOUT_S)
        client, connack, ended = self._client, self._connack, self._ended
        connected = connack is not None and connack.done() and not connack.exception()
        if client is not None and connected and ended is not None and not ended.done():
            client.disconnect()
            await asyncio.wait({ended}, timeout=2.0)
        await cancel_and_wait(runner)
        await cancel_and_wait(*self._tasks)
        if self._bridge is not None:
            self._bridge.shutdown()
        self._ready.clear()
        for fut in self._pending_commands.values():
            if not fut.done():
                fut.set_exception(DeliveryError("MQTT adapter stopped"))
        self._pending_commands.clear()

    def owns(self, tenant: str, device: str) -> bool:
        return tenant in self._tenants

    def is_online(self, tenant: str, device: str) -> bool:
        if self._ready.is_set():
            return True
        # Remember who waits, to call on_online for them once the broker is back.
        self._waiting.add(tenant, device)
        return False

    async def send_command(self, tenant: str, device: str, invocation: pb.CommandInvocation) -> None:
        client, loop = self._client, self._loop
        if client is None or loop is None or not self._ready.is_set():
            self.stats.commands_failed += 1
            raise DeliveryError(f"not connected to the MQTT broker {self._config.host}:{self._config.port}")
        if len(self._pending_commands) >= self._max_pending_commands:
            self.stats.commands_failed += 1
            raise DeliveryError("too many commands waiting for the broker's acknowledgement")
        if tenant in self._config.sitewhere_command_tenants:
            topic = topics.sitewhere_command_topic(tenant, device)
            payload = encode_sitewhere_command_json(device, invocation)
        else:
            topic = topics.commands_topic(tenant, device)
            payload = encode_command_json(invocation)
        info = client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.stats.commands_failed += 1
            raise DeliveryError(f"publishing to {topic} failed: {mqtt.error_string(info.rc)}")
        acked: asyncio.Future[None] = loop.create_future()
        self._pending_commands[info.mid] = acked
        try:
            async with asyncio.timeout(COMMAND_ACK_TIMEOUT_S):
                await acked
        except TimeoutError as err:
            self.stats.commands_failed += 1
            raise DeliveryError(f"the broker did not acknowledge the command on {topic}") from err
        finally:
            self._pending_commands.pop(info.mid, None)
        self.stats.commands_sent += 1

    async def wait_ready(self) -> None:
        """Wait until connected and subscribed (wrap in ``asyncio.timeout`` as needed)."""
        await self._ready.wait()

    # connection management ----------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._config.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if self._config.username is not None:
            password = self._config.password.get_secret_value() if self._config.password else None
            client.username_pw_set(self._config.username, password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    async def _run(self) -> None:
        while not self._stopping:
            try:
                reason = await self._session()
            except Exception as err:
                # The top of the connection task: report, count, and try again after a backoff.
                log.exception("MQTT connection to %s:%d failed", self._config.host, self._config.port)
                self.stats.connect_failures += 1
                reason = f"unexpected error ({err!r})"
            if self._stopping:
                return
            delay = self._backoff.next_delay()
            log.warning(
                "MQTT broker %s:%d: %s; reconnecting in %.1f s",
                self._config.host,
                self._config.port,
                reason,
                delay,
            )
            await asyncio.sleep(delay)

    async def _session(self) -> str:
        """One connection, from connect to its end; returns why it ended."""
        assert self._loop is not None and self._bridge is not None and self._client is not None
        self._generation += 1
        self._dropping = False
        self._connack = self._loop.create_future()
        self._ended = self._loop.create_future()
        try:
            await self._bridge.connect(self._config.host, self._config.port, self._config.keepalive_s)
        except (OSError, ValueError) as err:
            self.stats.connect_failures += 1
            return f"cannot connect ({err})"
        try:
            async with asyncio.timeout(CONNACK_TIMEOUT_S):
                session_present = await self._connack
        except TimeoutError:
            self.stats.connect_failures += 1
            self._client.disconnect()
            return "no CONNACK"
        except (_ConnectRefused, ConnectionError) as err:
            self.stats.connect_failures += 1
            return f"connection refused ({err})"
        log.info(
            "connected to MQTT broker %s:%d as %s (session %s)",
            self._config.host,
            self._config.port,
            self._config.client_id,
            "resumed" if session_present else "new",
        )
        if not self._sink_trouble:
            self._backoff.reset()
        reason = await self._ended
        self._ready.clear()
        return reason

    def _drop(self, why: str) -> None:
        """Disconnect so that the broker resends what this connection left unacknowledged."""
        if self._dropping or self._client is None or self._stopping:
            return
        self._dropping = True
        self._sink_trouble = True
        self.stats.connections_dropped += 1
        log.warning("disconnecting from the MQTT broker: %s; unacknowledged messages come again", why)
        self._client.disconnect()

    # paho callbacks (on the event loop) ---------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        connack = self._connack
        if reason.is_failure:
            if connack is not None and not connack.done():
                connack.set_exception(_ConnectRefused(str(reason)))
            return
        subscriptions: list[tuple[str, int]] = [(f, self._config.qos) for f in self._filters]
        client.subscribe(subscriptions)
        if connack is not None and not connack.done():
            connack.set_result(bool(flags.session_present))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        failed = [str(code) for code in codes if code.is_failure]
        if failed:
            log.error("MQTT broker refused subscriptions %s: %s", self._filters, failed)
            return
        self._ready.set()
        if len(self._waiting):
            waiting, self._waiting = self._waiting, DeviceRegistry(self._waiting.capacity)
            self._spawn(self._announce(waiting))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        connack, ended = self._connack, self._ended
        if connack is not None and not connack.done():
            connack.set_exception(ConnectionError(str(reason)))
        if ended is not None and not ended.done():
            self.stats.disconnects += 1
            ended.set_result(f"disconnected ({reason})")
        self._ready.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._inflight += 1
        if self._inflight >= self._high and self._bridge is not None:
            self._bridge.pause_reading()
            self.stats.reads_paused += 1
        payload = bytes(message.payload)
        self._spawn(self._handle(message.topic, payload, message.mid, message.qos, self._generation))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        acked = self._pending_commands.get(mid)
        if acked is not None and not acked.done():
            acked.set_result(None)

    # per-message task ---------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, topic: str, payload: bytes, mid: int, qos: int, generation: int) -> None:
        assert self._dispatcher is not None and self._client is not None
        try:
            outcome = await self._dispatcher.handle(topic, payload)
        finally:
            self._inflight -= 1
            if self._inflight <= self._low and self._bridge is not None:
                self._bridge.resume_reading()
        current = generation == self._generation and not self._dropping
        if outcome.acknowledge:
            if qos and current:
                self._client.ack(mid, qos)
            if outcome is Outcome.ACCEPTED and self._sink_trouble and current:
                self._sink_trouble = False
                self._backoff.reset()
        elif qos and current:
            self._drop(f"a message on {topic} was not made durable ({outcome.value})")

    async def _announce(self, devices: DeviceRegistry) -> None:
        for tenant, device in devices:
            await notify_online(self._on_online, self.stats, tenant, device)
