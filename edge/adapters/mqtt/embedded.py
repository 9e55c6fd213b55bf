"""The MQTT adapter with the broker inside: amqtt runs in the agent's event loop.

Devices connect to the agent itself (127.0.0.1:1883 by default). Their messages are taken from
amqtt's protocol handler in-process (see :mod:`amqtt_hooks`) — no second MQTT client hop — and a
QoS 1 message is acknowledged only after ``sink.accept`` returned, i.e. once its events are
durable. The broker still relays every message to other subscribers, so ``mosquitto_sub``
watching ``fieldgate/#`` sees device traffic as with any broker.

Authentication: ``mqtt.auth.mode: none`` (the default) lets any client connect (amqtt's
``AnonymousAuthPlugin`` with ``allow_anonymous``), which is why the listener binds to 127.0.0.1
by default. ``password`` authenticates every client against the credentials file and confines it
to its own devices' topics (:mod:`.auth`, :mod:`.acl`, :mod:`.auth_plugins`; docs/security.md);
enrolling devices get their credentials on their ``.../credentials`` topic. ``mqtt.tls`` adds a
listener speaking MQTT over TLS.

Ownership: every device of the configured tenants (MQTT is the catch-all transport).

Online: a device is online while a connected client holds a subscription matching its commands
topic (``fieldgate/<tenant>/devices/<device>/commands``; wildcard filters count, so a monitor
subscribed to ``#`` makes every device look reachable and receives their commands). When such a
subscription appears, ``on_online`` is called so the command router can flush what waited.
Anonymous sessions are not kept after a disconnect, so the broker never queues commands for
offline devices: they wait on disk in the router until the device subscribes again.

Commands are written straight to each matching subscriber's connection with QoS 1 and
``send_command`` returns once a subscriber acknowledged (PUBACK), so "delivered" means the
device's MQTT client has it.

Link state (``health``, forwarded to the cloud as PRESENCE ``connected``/``disconnected``): a
device is connected while some connected client serves it — logged in with the device's
credentials (``mqtt.auth``), subscribed to its own commands topic, published events for it, or
reported ``connected`` on its link topic — and
disconnected within moments of the last such client's DISCONNECT, closed socket or missed
keepalive (1.5 times the keepalive the client asked for). :mod:`.link` has the exact rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from amqtt.errors import BrokerError

from fieldgate.edge.adapters import EventSink, OnlineCallback
from fieldgate.edge.adapters.mqtt.amqtt_hooks import IngestBroker, broker_config, check_amqtt_compatible
from fieldgate.edge.adapters.mqtt.dispatch import Dispatcher
from fieldgate.edge.adapters.mqtt.link import LinkTracker
from fieldgate.edge.adapters.mqtt.presence import DeviceRegistry, filter_matches, is_wildcard, notify_online
from fieldgate.edge.adapters.mqtt.stats import MqttStats
from fieldgate.edge.config import MqttConfig
from fieldgate.edge.errors import DeliveryError, EdgeError
from fieldgate.edge.health import HealthBoard
from fieldgate.errors import ConfigError
from fieldgate.protocol import topics
from fieldgate.protocol.codec.commands import encode_command_json
from fieldgate.protocol.codec.sitewhere_commands import encode_sitewhere_command_json
from fieldgate.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

# amqtt logs every connection at INFO and its state machine library is chattier still.
_QUIET_LOGGERS = ("amqtt", "transitions")
# A command not acknowledged by the device's client within this time counts as not delivered.
COMMAND_ACK_TIMEOUT_S = 10.0


def _quiet_amqtt_logging() -> None:
    """Raise amqtt's loggers to WARNING unless the user configured them explicitly."""
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


class EmbeddedMqttAdapter:
    """Adapter backend running the amqtt broker in-process."""

    name = "mqtt-embedded"

    def __init__(
        self,
        config: MqttConfig,
        *,
        tenants: Collection[str],
        max_inflight_per_connection: int = 1000,
        max_known_devices: int = 100_000,
        data_dir: Path | None = None,
    ) -> None:
        self._config = config
        self._data_dir = data_dir
        self._authenticator: Any = None  # DeviceAuthenticator with mqtt.auth (imported then)
        self._tenants = frozenset(tenants)
        self._max_inflight = max_inflight_per_connection
        self.stats = MqttStats()
        self.devices = DeviceRegistry(max_known_devices)
        self.health = HealthBoard()
        self.links = LinkTracker(self.health, max_bindings=max_known_devices)
        self._broker: IngestBroker | None = None
        self._on_online: OnlineCallback | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self._config.host, self._config.port

    async def start(self, sink: EventSink, on_online: OnlineCallback) -> None:
        if self._broker is not None:
            return
        check_amqtt_compatible()
        _quiet_amqtt_logging()
        access_control = self._config.auth.mode != "none"
        if access_control:
            self._authenticator = self._build_authenticator()
            if self._config.auth.allow_anonymous:
                log.warning("mqtt.auth.allow_anonymous: clients without a username may use every topic")
        tls = self._tls_listener()
        hosts = {self._config.host} | ({tls["host"]} if tls else set())
        if not access_control and hosts - {"127.0.0.1", "::1", "localhost"}:
            log.warning(
                "embedded MQTT broker listens on %s without authentication: any client that can "
                "reach it can publish events and read commands",
                ", ".join(sorted(hosts)),
            )
        self._on_online = on_online
        dispatcher = Dispatcher(
            sink,
            tenants=self._tenants,
            max_payload_bytes=self._config.max_payload_bytes,
            sitewhere_compat=self._config.sitewhere_compat,
            sitewhere_1x_tenant=self._config.sitewhere_1x_tenant,
            stats=self.stats,
            devices=self.devices,
            links=self.links,
        )
        broker = IngestBroker(
            broker_config(self._config.host, self._config.port, access_control=access_control, tls=tls),
            dispatcher=dispatcher,
            stats=self.stats,
            max_inflight=self._max_inflight,
            links=self.links,
        )
        broker.presence_plugin().listener = self
        if access_control:
            plugin = broker.access_plugin()
            if plugin is None:
                raise EdgeError("the embedded MQTT broker did not load its access plugin")
            plugin.authenticator = self._authenticator
            plugin.stats = self.stats
        try:
            await broker.start()
        except BrokerError as err:
            raise EdgeError(
                f"embedded MQTT broker cannot listen on {self._config.host}:{self._config.port}: {err}"
            ) from err
        self._broker = broker
        log.info(
            "embedded MQTT broker listening on %s:%d%s (authentication: %s)",
            self._config.host,
            self._config.port,
            f", TLS on {tls['host']}:{tls['port']}" if tls else "",
            self._config.auth.mode,
        )

    def _resolve(self, path: Path) -> Path:
        return path if path.is_absolute() or self._data_dir is None else self._data_dir / path

    def _build_authenticator(self) -> Any:
        """Load the credentials file (a bad one fails here, naming the key) and the policy."""
        from fieldgate.edge.adapters.mqtt.auth import DeviceAuthenticator
        from fieldgate.edge.adapters.mqtt.credentials import CredentialStore

        auth = self._config.auth
        assert auth.credentials_file is not None  # validated with the configuration
        path = self._resolve(auth.credentials_file)
        try:
            store = CredentialStore.load(path)
        except ConfigError as err:
            raise ConfigError(f"mqtt.auth.credentials_file: {err}") from err
        return DeviceAuthenticator(auth, store, tenants=self._tenants, stats=self.stats)

    def _tls_listener(self) -> dict[str, Any] | None:
        tls = self._config.tls
        if not tls.enabled:
            return None
        files: dict[str, Path | None] = {}
        for key in ("certfile", "keyfile", "cafile"):
            value: Path | None = getattr(tls, key)
            if value is not None:
                value = self._resolve(value)
                if not value.is_file():
                    raise ConfigError(f"mqtt.tls.{key}: {value}: no such file")
            files[key] = value
        return {"host": tls.host or self._config.host, "port": tls.port, **files}

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        broker.presence_plugin().listener = None
        await broker.shutdown()
        self.links.close_all()  # whatever amqtt did with the connections: they are gone

    def owns(self, tenant: str, device: str) -> bool:
        # Any device of our tenants may connect at any time (also one not seen since a restart):
        # its commands wait here until it subscribes. More specific adapters go first.
        return tenant in self._tenants

    def _command_topics(self, tenant: str, device: str) -> list[str]:
        """Where the device may take commands: fieldgate's topic, and SiteWhere's with compat on."""
        found = [topics.commands_topic(tenant, device)]
        if self._config.sitewhere_compat:
            found.append(topics.sitewhere_command_topic(tenant, device))
            if tenant == self._config.sitewhere_1x_tenant:
                found.append(topics.sitewhere_1x_command_topic(device))
        return found

    def is_online(self, tenant: str, device: str) -> bool:
        return any(self._subscribers(topic) for topic in self._command_topics(tenant, device))

    async def send_command(self, tenant: str, device: str, invocation: pb.CommandInvocation) -> None:
        # Each subscriber gets the encoding of the topic it subscribed to: fieldgate's JSON, or
        # SiteWhere's JSON command execution on SiteWhere/<tenant>/command/<device>.
        sends: list[tuple[Any, str, bytes, int]] = []
        for topic in self._command_topics(tenant, device):
            targets = self._subscribers(topic)
            if not targets:
                continue
            if topic.startswith(topics.ROOT + "/"):
                payload = encode_command_json(invocation)
            else:
                payload = encode_sitewhere_command_json(device, invocation)
            sends += [(handler, topic, payload, qos) for handler, qos in targets.values()]
        if not sends:
            self.stats.commands_failed += 1
            raise DeliveryError(
                f"device {tenant}/{device} is offline: no client subscribes to "
                + " or ".join(self._command_topics(tenant, device))
            )
        results = await asyncio.gather(
            *(self._publish(handler, topic, payload, qos) for handler, topic, payload, qos in sends),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results):
            self.stats.commands_failed += 1
            raise DeliveryError(f"command to {tenant}/{device} not acknowledged: {errors[0]!r}")
        self.stats.commands_sent += 1

    @staticmethod
    async def _publish(handler: Any, topic: str, payload: bytes, qos: int) -> None:
        async with asyncio.timeout(COMMAND_ACK_TIMEOUT_S):
            await handler.mqtt_publish(topic, payload, qos, retain=False)

    def _subscribers(self, topic: str) -> dict[str, tuple[Any, int]]:
        """Connected clients subscribed to ``topic``: client id → (protocol handler, QoS ≤ 1)."""
        broker = self._broker
        found: dict[str, tuple[Any, int]] = {}
        if broker is None:
            return found
        sessions = broker.sessions
        for topic_filter, subscriptions in broker.subscriptions.items():
            if not filter_matches(topic_filter, topic):
                continue
            for session, qos in subscriptions:
                client_id = session.client_id
                entry = sessions.get(client_id)
                if entry is None or not session.transitions.is_connected():
                    continue
                level = min(1, max(qos, found[client_id][1] if client_id in found else 0))
                found[client_id] = (entry[1], level)
        return found

    # PresenceListener -------------------------------------------------------------------

    async def client_subscribed(self, client_id: str, topic_filter: str) -> None:
        if self._authenticator is not None and topic_filter.endswith("/credentials"):
            await self._hand_over_credentials(client_id)
            return
        self._bind_subscriber(client_id, topic_filter)
        await self._announce(topic_filter)

    def _bind_subscriber(self, client_id: str, topic_filter: str) -> None:
        """A client subscribed to one device's own commands topic (fieldgate's or, with
        sitewhere_compat, SiteWhere's command or system topic) serves that device."""
        parsed = self._destination(topic_filter)
        if parsed is not None and parsed[0] in self._tenants:
            self.links.bind(client_id, *parsed)

    async def _hand_over_credentials(self, client_id: str) -> None:
        """An enrolling device subscribed to its credentials topic: send what was made for it."""
        from fieldgate.edge.adapters.mqtt.acl import credentials_topic

        broker = self._broker
        entry = broker.sessions.get(client_id) if broker is not None else None
        if broker is None or entry is None:
            return
        session, handler = entry
        principal = broker.principal_of(session)
        issued = self._authenticator.take_issued(principal) if principal is not None else None
        if issued is None:
            return
        topic = credentials_topic(principal.tenant, principal.device)
        try:
            await self._publish(handler, topic, issued.payload(), 1)
        except (OSError, TimeoutError, EdgeError) as err:
            # Not confirmed yet: the device may enroll again and get a new password.
            log.warning("credentials for enrolled device %s not delivered: %r", principal.describe(), err)

    async def client_connected(self, client_id: str) -> None:
        broker = self._broker
        if broker is None:
            return
        # With mqtt.auth a device's credentials name it: logged in is connected.
        entry = broker.sessions.get(client_id)
        principal = broker.principal_of(entry[0]) if entry is not None else None
        if principal is not None and principal.device and not (principal.enrolling or principal.unrestricted):
            self.links.bind(client_id, principal.tenant, principal.device)
        # A persistent session may come back with its subscriptions and send no SUBSCRIBE.
        for topic_filter, subscriptions in list(broker.subscriptions.items()):
            if any(session.client_id == client_id for session, _ in subscriptions):
                self._bind_subscriber(client_id, topic_filter)
                await self._announce(topic_filter)

    def _destination(self, topic_filter: str) -> tuple[str, str] | None:
        if self._config.sitewhere_compat:
            return topics.parse_command_destination(topic_filter, self._config.sitewhere_1x_tenant)
        return topics.parse_commands_topic(topic_filter)

    async def _announce(self, topic_filter: str) -> None:
        """Call on_online for every device whose commands topic ``topic_filter`` matches."""
        if is_wildcard(topic_filter):
            candidates = [
                (tenant, device)
                for tenant, device in self.devices
                if any(filter_matches(topic_filter, t) for t in self._command_topics(tenant, device))
            ]
        else:
            parsed = self._destination(topic_filter)
            valid = parsed is not None and parsed[0] in self._tenants and topics.TOKEN_RE.match(parsed[1])
            candidates = [parsed] if parsed is not None and valid else []
            for tenant, device in candidates:
                self.devices.add(tenant, device)
        for tenant, device in candidates:
            await notify_online(self._on_online, self.stats, tenant, device)
