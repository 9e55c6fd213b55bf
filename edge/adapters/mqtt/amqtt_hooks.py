"""Hooks into amqtt 0.12.1 that let the embedded broker hand device messages over in-process.

Why hooks and not an ordinary amqtt plugin: amqtt acknowledges a QoS 1 PUBLISH (PUBACK) in
``ProtocolHandler._handle_qos1_message_flow`` right after queueing it, and plugins hear about
the message (``MESSAGE_RECEIVED``) only after that. fieldgate promises that a device's QoS 1
message is acknowledged only once its events are durable, so the hand-over has to happen
before amqtt's own handling:

- :class:`IngestHandler` subclasses amqtt's ``BrokerProtocolHandler``. Its ``handle_publish``
  (amqtt runs one task per received PUBLISH) first awaits the :class:`Dispatcher` (decode,
  ``sink.accept``) and only then acknowledges — itself, or by calling amqtt's
  ``handle_publish``, which sends the PUBACK and relays the message (see "Relaying"). Awaiting
  a group commit there does not serialize a connection: the next PUBLISH is already being
  handled in its own task.
- :class:`IngestBroker` subclasses ``Broker`` and replaces the (still unattached) handler that
  ``Broker._initialize_client_session`` created with an :class:`IngestHandler`. amqtt 0.12.1 has
  an ``_init_handler`` method, but nothing calls it; ``_initialize_client_session`` is the place.
- Relaying: amqtt relays a message through a per-message queue and task machinery that is
  slower than the hand-over itself (its broadcast queue is unbounded and would grow without
  limit under load). So a device event that no client subscribes to is acknowledged directly
  (PUBACK) and not relayed; if some client does subscribe (``mosquitto_sub -t 'fieldgate/#'``),
  the message takes amqtt's normal path, and a relay backlog above ``RELAY_BACKLOG_LIMIT``
  holds acknowledgements back until amqtt catches up (the devices slow down to its pace).
- Backpressure: a connection with more than ``max_inflight`` messages being handed over stops
  being read (its reader waits on a gate) until half of them are done, so a QoS 0 flood cannot
  create unbounded tasks; TCP flow control then slows the device down.
- Not acknowledged (buffer full under ``reject_new``, or the sink failed): the PUBACK is not
  sent and the device's connection is closed. MQTT clients (paho included) send unacknowledged
  QoS 1 messages again when they reconnect, so nothing is lost, and the device stops sending
  new messages while the buffer is full. QoS 0 messages have no acknowledgement and are dropped.
- Access control (``mqtt.auth``): :class:`~.auth_plugins.DeviceAccessPlugin`, an ordinary amqtt
  authentication and topic-checking plugin, replaces ``AnonymousAuthPlugin``. amqtt checks a
  PUBLISH against the topic plugins only after acknowledging and relaying it, so
  :class:`IngestHandler` asks the plugins (through amqtt's plugin manager) before the hand-over:
  a refused message is acknowledged (MQTT 3.1.1 has no negative PUBACK; Mosquitto does the same),
  never handed to the buffer nor relayed, and counted.
- :class:`PresencePlugin` is an ordinary amqtt plugin (loaded by dotted path from the broker
  configuration): it reports subscriptions and connections to a :class:`PresenceListener` so the
  adapter can tell the command router that a device became reachable.
- Link state (:mod:`.link`): :class:`IngestBroker` wraps amqtt's per-connection
  ``_handle_client_session`` so that the :class:`~.link.LinkTracker` hears of every connection
  opening and — whatever ends it — closing, synchronously and in order (amqtt's plugin events
  are tasks that may run after the connection is gone). The dispatcher tells it which devices
  each client publishes for.
- Keepalive: amqtt's broker never closes a client that stops sending (its read timeout handler
  does nothing), so a device whose network vanished would stay connected. :class:`IngestHandler`
  closes a connection that sent nothing for 1.5 times its keepalive (MQTT 3.1.1 §3.1.2.10) as a
  network failure — amqtt then publishes the client's will — unless the agent itself paused
  reading it (backpressure).

These hooks use amqtt internals; ``amqtt==0.12.1`` is pinned for that reason and
:func:`check_amqtt_compatible` refuses other versions at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any, Protocol

import amqtt
from amqtt.adapters import ReaderAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.constants import QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.plugins.base import BasePlugin

from fieldgate.edge.adapters.mqtt.dispatch import Dispatcher, Outcome
from fieldgate.edge.adapters.mqtt.link import LinkTracker
from fieldgate.edge.adapters.mqtt.presence import filter_matches, is_wildcard
from fieldgate.edge.adapters.mqtt.stats import MqttStats
from fieldgate.edge.errors import EdgeError

log = logging.getLogger(__name__)

SUPPORTED_AMQTT = "0.12.1"
# Messages waiting in amqtt's relay queue above which acknowledgements wait for it to drain.
RELAY_BACKLOG_LIMIT = 10_000
PRESENCE_PLUGIN = f"{__name__}.PresencePlugin"
# A client that sends nothing for this many keepalive periods is disconnected (MQTT 3.1.1: 1.5).
KEEPALIVE_GRACE = 1.5
# Loaded by amqtt from this path only when mqtt.auth is on (it imports argon2 on first use).
ACCESS_PLUGIN = "fieldgate.edge.adapters.mqtt.auth_plugins.DeviceAccessPlugin"


def check_amqtt_compatible() -> None:
    version = getattr(amqtt, "__version__", "unknown")
    hooked = ("_initialize_client_session", "_handle_client_session")
    if version != SUPPORTED_AMQTT or not all(hasattr(Broker, name) for name in hooked):
        raise EdgeError(
            f"the embedded MQTT broker needs amqtt=={SUPPORTED_AMQTT} (installed: {version}); "
            "it hooks amqtt's protocol handler to acknowledge messages only once they are durable"
        )


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def broker_config(
    host: str, port: int, *, access_control: bool = False, tls: dict[str, Any] | None = None
) -> dict[str, Any]:
    """amqtt configuration: a TCP listener, no $SYS or packet logging.

    The default plugin set of amqtt logs every packet and publishes $SYS topics; an explicit
    ``plugins`` map replaces it. Without ``access_control``, ``AnonymousAuthPlugin`` with
    ``allow_anonymous`` lets local devices connect without credentials (bind to 127.0.0.1 unless
    the network is trusted); with it, :data:`ACCESS_PLUGIN` authenticates every client and
    checks its topics. ``tls`` (``host``, ``port``, ``certfile``, ``keyfile``, ``cafile``) adds
    a second listener speaking MQTT over TLS.
    """
    listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": _bind(host, port)}}
    if tls is not None:
        listeners["tls"] = {
            "type": "tcp",
            "bind": _bind(tls["host"], tls["port"]),
            "ssl": True,
            "certfile": str(tls["certfile"]),
            "keyfile": str(tls["keyfile"]),
            **({"cafile": str(tls["cafile"])} if tls.get("cafile") else {}),
        }
    auth_plugin: dict[str, Any] = (
        {ACCESS_PLUGIN: {}}
        if access_control
        else {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    )
    return {"listeners": listeners, "plugins": {**auth_plugin, PRESENCE_PLUGIN: {}}}


class PresenceListener(Protocol):
    async def client_subscribed(self, client_id: str, topic_filter: str) -> None: ...

    async def client_connected(self, client_id: str) -> None: ...


class PresencePlugin(BasePlugin):  # type: ignore[misc]
    """Forwards amqtt's subscribe/connect events to the adapter (set ``listener`` after start)."""

    listener: PresenceListener | None = None

    async def on_broker_client_subscribed(self, *, client_id: str, topic: str, qos: int) -> None:
        if self.listener is not None:
            await self.listener.client_subscribed(client_id, topic)

    async def on_broker_client_connected(self, *, client_id: str, client_session: Any) -> None:
        if self.listener is not None:
            await self.listener.client_connected(client_id)


class _GatedReader(ReaderAdapter):  # type: ignore[misc]
    """Reads from the connection only while the gate is open (flow control)."""

    def __init__(self, inner: Any, gate: asyncio.Event) -> None:
        self._inner = inner
        self._gate = gate

    async def read(self, n: int = -1) -> bytes:
        if not self._gate.is_set():
            await self._gate.wait()
        data: bytes = await self._inner.read(n)
        return data

    def feed_eof(self) -> None:
        self._inner.feed_eof()


class _RelayQueue(asyncio.Queue[dict[str, Any]]):
    """amqtt's broadcast queue with a high-water mark that relaying producers wait on.

    Overflow policy ``block``: the queue itself never refuses (amqtt's own producers, e.g. will
    messages, do not wait), but :meth:`IngestBroker.wait_relay_capacity` holds device messages
    back above ``limit`` until it has drained to half of it.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self._room = asyncio.Event()
        self._room.set()

    def has_room(self) -> bool:
        return self._room.is_set()

    async def wait_for_room(self) -> None:
        await self._room.wait()

    def put_nowait(self, item: dict[str, Any]) -> None:
        super().put_nowait(item)
        if self.qsize() > self._limit:
            self._room.clear()

    def get_nowait(self) -> dict[str, Any]:
        item = super().get_nowait()
        if not self._room.is_set() and self.qsize() <= self._limit // 2:
            self._room.set()
        return item


class IngestHandler(BrokerProtocolHandler):  # type: ignore[misc]
    """amqtt's broker-side protocol handler, handing PUBLISHes to the dispatcher before PUBACK."""

    def __init__(
        self,
        plugins_manager: Any,
        *,
        loop: asyncio.AbstractEventLoop,
        broker: IngestBroker,
        dispatcher: Dispatcher,
        stats: MqttStats,
        max_inflight: int,
    ) -> None:
        super().__init__(plugins_manager, loop=loop)
        self._broker = broker
        self._dispatcher = dispatcher
        self._stats = stats
        self._high = max_inflight
        self._low = max_inflight // 2
        self._inflight = 0
        self._gate = asyncio.Event()
        self._gate.set()
        self._dropping = False
        self._expired: asyncio.Task[None] | None = None

    def attach(self, session: Any, reader: Any, writer: Any) -> None:
        super().attach(session, _GatedReader(reader, self._gate), writer)

    async def handle_publish(self, publish_packet: Any) -> None:
        topic = publish_packet.topic_name
        data = publish_packet.data
        speaker = None
        if topic is not None and self._broker.access_controlled:
            speaker = self._broker.principal_of(self.session)
            if not await self._broker.may_publish(self.session, topic):
                # Refused (counted and logged by the access plugin): acknowledged, dropped.
                if publish_packet.qos == QOS_1:
                    await self._send_packet(PubackPacket.build(publish_packet.packet_id))
                elif publish_packet.qos:
                    await super().handle_publish(publish_packet)  # QoS 2 flow; amqtt drops it after
                return
        if topic is not None and data is not None:
            self._inflight += 1
            if self._inflight >= self._high and self._gate.is_set():
                self._gate.clear()
                self._stats.reads_paused += 1
            try:
                client = self.session.client_id if self.session is not None else None
                outcome = await self._dispatcher.handle(topic, bytes(data), speaker, client)
            finally:
                self._inflight -= 1
                if self._inflight <= self._low and not self._gate.is_set():
                    self._gate.set()
            if not outcome.acknowledge:
                if publish_packet.qos:
                    await self._drop_connection()
                return
            if outcome is Outcome.DENIED:
                if publish_packet.qos == QOS_1:
                    await self._send_packet(PubackPacket.build(publish_packet.packet_id))
                return
            if outcome is not Outcome.IGNORED and publish_packet.qos in (0, QOS_1):
                if not publish_packet.retain_flag and not self._broker.has_subscriber(topic):
                    if publish_packet.qos == QOS_1:
                        await self._send_packet(PubackPacket.build(publish_packet.packet_id))
                    return
                await self._broker.wait_relay_capacity()
        await super().handle_publish(publish_packet)

    def handle_read_timeout(self) -> None:
        """Nothing came for the session's keepalive (already times 1.5): the client is gone."""
        if not self._gate.is_set() or self._expired is not None or self.session is None:
            return  # we paused reading ourselves, or the connection is already being closed
        self._stats.keepalive_timeouts += 1
        log.info(
            "MQTT client %s sent nothing for %d s (1.5 times its keepalive): disconnecting it",
            self.session.client_id,
            self.session.keep_alive,
        )
        # As a network failure: amqtt's broker loop publishes the will and stops this handler.
        self._expired = asyncio.get_running_loop().create_task(self.handle_connection_closed())

    async def _drop_connection(self) -> None:
        """Close the device's connection so that it sends its unacknowledged messages again."""
        if self._dropping or self.writer is None:
            return
        self._dropping = True
        self._stats.connections_dropped += 1
        client_id = self.session.client_id if self.session is not None else "?"
        log.info(
            "closing connection of MQTT client %s: it has messages that were not acknowledged", client_id
        )
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(5):
                await self.writer.close()


class IngestBroker(Broker):  # type: ignore[misc]
    """amqtt's broker whose client connections are served by :class:`IngestHandler`."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        dispatcher: Dispatcher,
        stats: MqttStats,
        max_inflight: int,
        links: LinkTracker | None = None,
    ) -> None:
        super().__init__(config)
        self._links = links
        self._ingest_dispatcher = dispatcher
        self._ingest_stats = stats
        self._ingest_max_inflight = max_inflight
        # amqtt's relay queue, replaced (still empty, before start) by one that signals room.
        self._relay_queue = _RelayQueue(RELAY_BACKLOG_LIMIT)
        self._broadcast_queue = self._relay_queue
        # Wildcard subscription filters, recomputed when the set of filters may have changed.
        self._wildcards: list[str] = []
        self._wildcards_key = -1
        self._access_plugin = self.plugins_manager.get_plugin("DeviceAccessPlugin")

    async def add_subscription(self, subscription: tuple[str, int], session: Any) -> int:
        self._wildcards_key = -1
        result: int = await super().add_subscription(subscription, session)
        return result

    def has_subscriber(self, topic: str) -> bool:
        """True if some session subscribes to ``topic`` (exact filters by lookup, not by scan)."""
        subscriptions = self.subscriptions
        if subscriptions.get(topic):
            return True
        if self._wildcards_key != len(subscriptions):
            self._wildcards = [f for f in subscriptions if is_wildcard(f)]
            self._wildcards_key = len(subscriptions)
        return any(subscriptions.get(f) and filter_matches(f, topic) for f in self._wildcards)

    @property
    def access_controlled(self) -> bool:
        return self._access_plugin is not None

    def access_plugin(self) -> Any:
        """The :class:`~.auth_plugins.DeviceAccessPlugin` (None without ``mqtt.auth``)."""
        return self._access_plugin

    def principal_of(self, session: Any) -> Any:
        plugin = self._access_plugin
        return plugin.principal_of(session) if plugin is not None else None

    async def may_publish(self, session: Any, topic: str) -> bool:
        """amqtt's topic plugins on a PUBLISH — asked before the hand-over, not after the PUBACK."""
        results = await self.plugins_manager.map_plugin_topic(
            session=session, topic=topic, action=Action.PUBLISH
        )
        return bool(results) and all(results.values())

    async def wait_relay_capacity(self) -> None:
        """Hold a relayed message's acknowledgement while amqtt's relay queue is too long."""
        if not self._relay_queue.has_room():
            self._ingest_stats.relay_waits += 1
            await self._relay_queue.wait_for_room()

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[IngestHandler, Any]:
        _unattached, session = await super()._initialize_client_session(
            reader, writer, remote_address, remote_port
        )
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * KEEPALIVE_GRACE)
        handler = IngestHandler(
            self.plugins_manager,
            loop=self._loop,
            broker=self,
            dispatcher=self._ingest_dispatcher,
            stats=self._ingest_stats,
            max_inflight=self._ingest_max_inflight,
        )
        return handler, session

    async def _handle_client_session(
        self,
        reader: Any,
        writer: Any,
        client_session: Any,
        handler: Any,
        server: Any,
        listener_name: str,
    ) -> None:
        """amqtt's whole life of one connection, from CONNECT to its end, told to the link
        tracker: opened before anything of it is handled, closed whatever ends it."""
        client_id = client_session.client_id
        links = self._links if isinstance(client_id, str) and client_id else None
        if links is not None:
            links.opened(client_id)
        try:
            await super()._handle_client_session(
                reader, writer, client_session, handler, server, listener_name
            )
        finally:
            if links is not None:
                links.closed(client_id)

    def presence_plugin(self) -> PresencePlugin:
        plugin = self.plugins_manager.get_plugin(PresencePlugin.__name__)
        if not isinstance(plugin, PresencePlugin):
            raise EdgeError("the embedded MQTT broker did not load its presence plugin")
        return plugin
