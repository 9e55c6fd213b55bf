"""Counters of one MQTT adapter, read by the agent's metrics (``adapter.stats``).

Plain integers on a dataclass owned by the adapter instance: no registry, no globals. The
agent exports them (e.g. as ``fieldgate_mqtt_<name>_total{adapter="mqtt-embedded"}``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class MqttStats:
    # Messages whose events the sink made durable (then acknowledged to the device/broker).
    messages_accepted: int = 0
    events_accepted: int = 0
    # Messages put into the failed-decode lane, by reason kind: decode, oversize, tenant, topic.
    messages_rejected: dict[str, int] = field(default_factory=dict)
    # Devices' reports on their link topics (``connected``/``disconnected``), taken.
    link_reports: int = 0
    # Embedded broker: connections closed because the client sent nothing for 1.5 times its keepalive.
    keepalive_timeouts: int = 0
    # Messages on topics that are not fieldgate's (relayed by the embedded broker, nothing else).
    messages_ignored: int = 0
    # Not acknowledged because the buffer is full (overflow policy reject_new); the sender keeps
    # them and sends them again after reconnecting.
    messages_held: int = 0
    # Not acknowledged because the sink failed unexpectedly (logged with the traceback).
    messages_failed: int = 0
    # Connections closed by the adapter so that unacknowledged messages are sent again.
    connections_dropped: int = 0
    # Embedded broker: times acknowledgements waited for amqtt's relay queue to drain.
    relay_waits: int = 0
    # Times reading from a connection was paused because too many messages were in flight.
    reads_paused: int = 0
    # External broker only: connection attempts that failed, and connections lost.
    connect_failures: int = 0
    disconnects: int = 0
    commands_sent: int = 0
    commands_failed: int = 0
    # Errors raised by the on_online callback (logged).
    online_callback_errors: int = 0
    # Embedded broker with mqtt.auth: logins accepted / refused by reason (password,
    # unknown_user, anonymous, enrollment, session), devices enrolled, and what the ACLs
    # refused by kind (publish, subscribe, payload: a SiteWhere payload naming another device).
    auth_accepted: int = 0
    auth_refused: dict[str, int] = field(default_factory=dict)
    enrollments: int = 0
    messages_denied: dict[str, int] = field(default_factory=dict)

    def count_rejected(self, kind: str) -> None:
        self.messages_rejected[kind] = self.messages_rejected.get(kind, 0) + 1

    def count_refused(self, kind: str) -> None:
        self.auth_refused[kind] = self.auth_refused.get(kind, 0) + 1

    def count_denied(self, kind: str) -> None:
        self.messages_denied[kind] = self.messages_denied.get(kind, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
