"""paho-mqtt devices for edge agent tests: a QoS 1 publisher that knows what got a PUBACK.

:class:`AckedPublisher` publishes measurements with known alternate ids ("id" in the JSON
payload) and records which of them the broker acknowledged — the set a kill -9 test must
find in the cloud. It bounds its in-flight window (paho stalls past 65,535 unacknowledged
QoS 1 messages). :class:`CommandDevice` subscribes to its commands topic and answers every
command with a command_response.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fieldgate.protocol import topics


class AckedPublisher:
    """One paho client publishing QoS 1 measurements; ``acked`` holds the PUBACKed ids."""

    def __init__(self, port: int, client_id: str, *, window: int = 200) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_inflight_messages_set(window)
        self.client.max_queued_messages_set(window)
        self._port = port
        self._mid_to_id: dict[int, str] = {}
        self._acked_mids: list[int] = []  # appended by paho's thread (list.append is atomic)
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not rc.is_failure:
            self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.disconnected.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any = None) -> None:
        self._acked_mids.append(mid)

    def connect(self, within_s: float = 10.0) -> None:
        self.client.connect("127.0.0.1", self._port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(within_s):
            raise AssertionError("MQTT connect timed out")

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def publish(self, tenant: str, device: str, alternate_id: str, value: float) -> bool:
        """Publish one measurement; False if the client is no longer connected."""
        if self.disconnected.is_set():
            return False
        payload = json.dumps({"type": "measurement", "values": {"temperature": value}, "id": alternate_id})
        info = self.client.publish(topics.events_topic(tenant, device), payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self._mid_to_id[info.mid] = alternate_id
        return True

    def in_flight(self) -> int:
        return len(self._mid_to_id) - len(self._acked_mids)

    @property
    def acked(self) -> set[str]:
        return {self._mid_to_id[m] for m in list(self._acked_mids) if m in self._mid_to_id}

    @property
    def published(self) -> int:
        return len(self._mid_to_id)


class CommandDevice:
    """A device that answers every command on its commands topic with ``{"pong": true}``."""

    def __init__(self, port: int, tenant: str, device: str) -> None:
        self.tenant, self.device = tenant, device
        self.received: list[dict[str, Any]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{device}")
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._port = port

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe(topics.commands_topic(self.tenant, self.device), qos=1)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        command = json.loads(message.payload)
        self.received.append(command)
        answer = {"type": "command_response", "invocation": command["invocation"], "response": {"pong": True}}
        client.publish(topics.events_topic(self.tenant, self.device), json.dumps(answer), qos=1)

    def start(self, within_s: float = 10.0) -> None:
        self.client.connect("127.0.0.1", self._port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(within_s):
            raise AssertionError("device did not subscribe in time")

    def stop(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
