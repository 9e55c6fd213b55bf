"""amqtt 0.12.1 plugin enforcing ``mqtt.auth`` on the embedded broker.

:class:`DeviceAccessPlugin` is both of amqtt's plugin kinds at once — an authentication plugin
(``authenticate``, asked for every CONNECT; False → CONNACK 0x05 "not authorized") and a
topic-checking plugin (``topic_filtering``, asked for every SUBSCRIBE filter — False → SUBACK
0x80 — and for every relayed delivery) — so one object holds the principal of each connection
between the two. It is loaded by dotted path from the broker configuration
(:func:`~.amqtt_hooks.broker_config`); the adapter attaches the :class:`~.auth.DeviceAuthenticator`
before the broker starts, and until then every login is refused (fail closed).

PUBLISH is checked by :class:`~.amqtt_hooks.IngestHandler` *before* the hand-over to the buffer
(amqtt's own check runs after it has acknowledged and would be too late); it asks this plugin
through amqtt's plugin manager, the same path amqtt uses.

Principals are kept by client id (amqtt's ``Session`` is not hashable). A client that resumes a
persistent session (``clean_session=False``) must log in as the identity that created it:
otherwise it would inherit that identity's subscriptions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from fieldgate.edge.adapters.mqtt import acl
from fieldgate.edge.adapters.mqtt.acl import Principal
from fieldgate.edge.adapters.mqtt.auth import DeviceAuthenticator
from fieldgate.edge.adapters.mqtt.stats import MqttStats
from fieldgate.throttle import LogThrottle

log = logging.getLogger(__name__)


class DeviceAccessPlugin(BaseAuthPlugin, BaseTopicPlugin):  # type: ignore[misc]
    """See the module docstring. Attach ``authenticator`` and ``stats`` before ``start()``."""

    @dataclass
    class Config:
        """No options: everything comes from ``mqtt.auth`` through the authenticator."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.authenticator: DeviceAuthenticator | None = None
        self.stats: MqttStats | None = None
        # client id → (id of the amqtt Session it logged in on, principal)
        self._principals: dict[str, tuple[int, Principal]] = {}
        self._denied_log = LogThrottle()

    def principal_of(self, session: Any) -> Principal | None:
        client_id = getattr(session, "client_id", None)
        entry = self._principals.get(client_id) if client_id is not None else None
        return entry[1] if entry is not None else None

    async def authenticate(self, *, session: Any) -> bool:
        authenticator = self.authenticator
        client_id = session.client_id
        if authenticator is None or client_id is None:
            return False
        previous = self._principals.pop(client_id, None)
        principal = await authenticator.authenticate(session.username, session.password)
        if principal is None:
            return False
        resumed = getattr(session, "parent", 0) == 1
        if resumed and (previous is None or previous[1].username != principal.username):
            if self.stats is not None:
                self.stats.count_refused("session")
            log.warning(
                "MQTT client %r of %s tried to resume a session it did not create; refused",
                client_id,
                principal.describe(),
            )
            return False
        self._principals[client_id] = (id(session), principal)
        return True

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        principal = self.principal_of(session)
        if principal is None or topic is None:
            return False
        if action == Action.PUBLISH:
            allowed = acl.may_publish(principal, topic)
            kind = "publish"
        elif action == Action.SUBSCRIBE:
            allowed = acl.may_subscribe(principal, topic)
            kind = "subscribe"
        else:  # RECEIVE: a relayed message about to be written to this client
            return acl.may_receive(principal, topic)
        if not allowed:
            self._denied(principal, kind, topic)
        return allowed

    def _denied(self, principal: Principal, kind: str, topic: str) -> None:
        if self.stats is not None:
            self.stats.count_denied(kind)
        suppressed = self._denied_log.ready()
        if suppressed is not None:
            log.warning(
                "MQTT client %s may not %s %s; refused (%d more refusals since the last report)",
                principal.describe(),
                kind,
                topic,
                suppressed,
            )

    async def on_broker_client_disconnected(self, *, client_id: str, client_session: Any) -> None:
        # Persistent sessions stay in the broker with their subscriptions: keep their owner. A
        # connection taken over by a new one with the same client id must not drop the new
        # connection's principal.
        entry = self._principals.get(client_id)
        if entry is None or entry[0] != id(client_session):
            return
        if getattr(client_session, "clean_session", True):
            del self._principals[client_id]
