"""A SiteWhere 2.x/3.x device agent, simulated: what SiteWhere's own Java agent does on the wire
(github.com/sitewhere/sitewhere-java-agent, ``src/main/java/com/sitewhere/agent/Agent.java``
and ``BaseCommandProcessor.java``), so a test can show that such a device works against the
edge unchanged.

Like that agent it

- connects to the broker and subscribes (QoS 1) to ``SiteWhere/<tenant>/system/<device>``
  (system messages: registration acknowledgements, ``Device.Header`` + ``RegistrationAck``)
  and ``SiteWhere/<tenant>/command/<device>`` (the device type's commands);
- publishes every event on ``SiteWhere/<tenant>/input/protobuf`` as SiteWhere's protobuf:
  a length-delimited ``DeviceEvent.Header`` (command, deviceToken, originator) and a
  length-delimited body (``MQTTOutbound.sendMessage``);
- registers with ``sendRegistration`` and acknowledges a command with ``sendAck``, whose
  header originator is the command's invocation id (``getOriginatorEventId``).

The Java agent's command topic carried Java-serialized calls (SiteWhere's "hybrid" encoder); this
simulator takes SiteWhere's JSON command encoding there (``JsonCommandExecutionEncoder``) — the
encoding the edge sends — and answers each command with an acknowledgement naming it.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from google.protobuf.message import DecodeError as ProtobufDecodeError
from paho.mqtt.enums import CallbackAPIVersion

from fieldgate.protocol.codec import DecodeError
from fieldgate.protocol.codec.sitewhere_protobuf import read_delimited, write_delimited
from fieldgate.protocol.topics import sitewhere_command_topic, sitewhere_system_topic
from fieldgate.sitewhere import sitewhere3_pb2 as sw3

__all__ = ["ReceivedCommand", "SiteWhereAgentSim"]

_EV = sw3.DeviceEvent


def _opt(text: str) -> sw3.GOptionalString:
    return sw3.GOptionalString(value=text)


@dataclass(frozen=True, slots=True)
class ReceivedCommand:
    invocation: str  # SiteWhere's originating event id: the acknowledgement's originator
    name: str
    parameters: dict[str, Any]


@dataclass
class SiteWhereAgentSim:
    host: str
    port: int
    tenant: str
    device: str
    device_type: str = ""
    # Acknowledge each command as it arrives (BaseCommandProcessor subclasses call sendAck).
    auto_ack: bool = True
    username: str | None = None
    password: str | None = None
    commands: queue.Queue[ReceivedCommand] = field(default_factory=queue.Queue)
    registration_acks: queue.Queue[sw3.Device.RegistrationAck] = field(default_factory=queue.Queue)
    # Payloads on the command or system topic that were not SiteWhere's encodings.
    undecodable: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sw-agent-{self.device}", clean_session=True
        )
        if self.username is not None:
            self._client.username_pw_set(self.username, self.password)
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    @property
    def outbound_topic(self) -> str:
        return f"SiteWhere/{self.tenant}/input/protobuf"

    # -------------------------------------------------------------------------- lifecycle

    def start(self, wait_s: float = 10.0) -> None:
        """Connect and subscribe to the system and command topics (Agent.start)."""
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(wait_s):
            raise TimeoutError(f"{self.device}: no CONNACK from {self.host}:{self.port}")
        self._client.subscribe(
            [
                (sitewhere_system_topic(self.tenant, self.device), 1),
                (sitewhere_command_topic(self.tenant, self.device), 1),
            ]
        )
        if not self._subscribed.wait(wait_s):
            raise TimeoutError(f"{self.device}: no SUBACK")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # ----------------------------------------------------------------- ISiteWhereEventDispatcher

    def send_registration(self, area: str = "", customer: str = "") -> None:
        request = _EV.DeviceRegistrationRequest(deviceTypeToken=_opt(self.device_type))
        if area:
            request.areaToken.CopyFrom(_opt(area))
        if customer:
            request.customerToken.CopyFrom(_opt(customer))
        self._send(_EV.SEND_REGISTRATION, request, None)

    def send_measurement(self, name: str, value: float, originator: str | None = None) -> None:
        body = _EV.DeviceMeasurements(
            measurement=[
                _EV.Measurement(measurementId=_opt(name), measurementValue=sw3.GOptionalDouble(value=value))
            ]
        )
        self._send(_EV.SEND_MEASUREMENT, body, originator)

    def send_location(self, latitude: float, longitude: float, elevation: float = 0.0) -> None:
        body = _EV.DeviceLocation(
            latitude=sw3.GOptionalDouble(value=latitude),
            longitude=sw3.GOptionalDouble(value=longitude),
            elevation=sw3.GOptionalDouble(value=elevation),
        )
        self._send(_EV.SEND_LOCATION, body, None)

    def send_alert(self, alert_type: str, message: str) -> None:
        body = _EV.DeviceAlert(alertType=_opt(alert_type), alertMessage=_opt(message))
        self._send(_EV.SEND_ALERT, body, None)

    def send_ack(self, originator: str, message: str) -> None:
        self._send(_EV.SEND_ACK, _EV.DeviceAcknowledge(message=_opt(message)), originator)

    def _send(self, command: Any, body: Any, originator: str | None) -> None:
        header = _EV.Header(command=command, deviceToken=_opt(self.device))
        if originator is not None:
            header.originator.CopyFrom(_opt(originator))
        info = self._client.publish(
            self.outbound_topic, write_delimited(header) + write_delimited(body), qos=1
        )
        info.wait_for_publish(10.0)
        if not info.is_published():
            raise TimeoutError(f"{self.device}: no PUBACK on {self.outbound_topic}")

    # -------------------------------------------------------------------------- callbacks

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not rc.is_failure:
            self._connected.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        if message.topic == sitewhere_system_topic(self.tenant, self.device):
            self._system(message.topic, payload)
        elif message.topic == sitewhere_command_topic(self.tenant, self.device):
            self._command(message.topic, payload)

    def _system(self, topic: str, payload: bytes) -> None:
        """processSiteWhereCommand: Device.Header, then the message it names."""
        try:
            head, pos = read_delimited(payload, 0, "header")
            header = sw3.Device.Header.FromString(head)
            if header.command != sw3.Device.REGISTRATION_ACK:
                raise ValueError(f"system command {header.command}")
            body, _ = read_delimited(payload, pos, "RegistrationAck")
            self.registration_acks.put(sw3.Device.RegistrationAck.FromString(body))
        except (DecodeError, ProtobufDecodeError, ValueError):
            # Firmware logs and carries on; a test sees it here.
            self.undecodable.append((topic, payload))

    def _command(self, topic: str, payload: bytes) -> None:
        """SiteWhere's JSON command execution: run it, then acknowledge it (sendAck)."""
        try:
            doc = json.loads(payload)
            execution = doc["command"]
            received = ReceivedCommand(
                invocation=execution["invocation"]["id"],
                name=execution["command"]["name"],
                parameters=dict(execution.get("parameters") or {}),
            )
        except (ValueError, KeyError, TypeError):
            self.undecodable.append((topic, payload))
            return
        self.commands.put(received)
        if self.auto_ack:
            # From paho's network thread: publish without waiting for the PUBACK it must process.
            header = _EV.Header(
                command=_EV.SEND_ACK, deviceToken=_opt(self.device), originator=_opt(received.invocation)
            )
            body = _EV.DeviceAcknowledge(message=_opt(f"Acknowledged {received.name}"))
            self._client.publish(self.outbound_topic, write_delimited(header) + write_delimited(body), qos=1)
