"""SiteWhere's protobuf device messages → fieldgate events, so firmware built on SiteWhere's
``sitewhere.proto`` works unchanged when it publishes to ``SiteWhere/<tenant>/input/protobuf``
(or SiteWhere 1.x's tenant-less ``SiteWhere/input/protobuf``). Pure functions, no I/O.

A message is what SiteWhere's own agents write (``Header.writeDelimitedTo(out);
message.writeDelimitedTo(out)``): a varint length and a Header, then a varint length and the
body the header's command names. Two generations of definitions exist, both in
``proto/fieldgate/sitewhere/`` with the SiteWhere source files they copy:

- **SiteWhere 2.x/3.x** (``sitewhere3.proto``): ``DeviceEvent.Header`` carries the command,
  the ``deviceToken`` and the ``originator`` as ``GOptionalString`` wrappers; bodies are
  ``DeviceRegistrationRequest``, ``DeviceAcknowledge``, ``DeviceLocation``, ``DeviceAlert``,
  ``DeviceMeasurements``; ``Stream`` is refused (fieldgate has no device streams).
- **SiteWhere 1.x** (``sitewhere1.proto``, the Arduino SDK): ``SiteWhere.Header`` carries the
  command and the originator as plain fields, each body names its ``hardwareId``, and the
  Arduino library ends the message with one 0x00 byte.

Which one a payload is follows from its header: a 2.x/3.x header's field 2 is the
``deviceToken`` wrapper message, a 1.x header's field 2 is the originator text (never a valid
wrapper, since a wrapper starts with byte 0x0a) or absent. Mapping onto fieldgate's events is
the one of the JSON path (:mod:`.sitewhere`): an acknowledgement is a command response to the
header's ``originator`` — exactly how SiteWhere's decoder sets ``originatingEventId`` — with
``{"message": ...}``; a registration is a REGISTRATION state change whose ``current`` is the
device type token (``specificationToken`` in 1.x); ``eventDate`` (epoch ms) is the event time;
the originator of other events is kept as metadata ``originator``.
"""

from __future__ import annotations

import math
from typing import TypeVar

import orjson
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.protocol.codec.json_events import (
    MAX_EVENTS,
    MAX_TIME_MS,
    check_latitude,
    check_longitude,
    field_name,
    short,
)
from fieldgate.protocol.topics import TOKEN_RE
from fieldgate.sitewhere import sitewhere1_pb2 as sw1
from fieldgate.sitewhere import sitewhere3_pb2 as sw3
from fieldgate.v1 import events_pb2 as pb

__all__ = [
    "decode_sitewhere_protobuf",
    "read_delimited",
    "write_delimited",
]

_LEVELS3: dict[int, pb.AlertLevel.ValueType] = {
    sw3.DeviceEvent.Info: pb.ALERT_LEVEL_INFO,
    sw3.DeviceEvent.Warning: pb.ALERT_LEVEL_WARNING,
    sw3.DeviceEvent.Error: pb.ALERT_LEVEL_ERROR,
    sw3.DeviceEvent.Critical: pb.ALERT_LEVEL_CRITICAL,
}
_MAX_VARINT_BYTES = 10
_M = TypeVar("_M", bound=Message)


def write_delimited(message: Message) -> bytes:
    """``message`` preceded by its length as a varint (Java's ``writeDelimitedTo``)."""
    body = message.SerializeToString(deterministic=True)
    return _varint(len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_delimited(payload: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """The length-delimited message at ``pos`` and the position after it (``parseDelimitedFrom``)."""
    length = 0
    shift = 0
    start = pos
    while True:
        if pos >= len(payload):
            if pos == start:
                raise DecodeError(f"{what}: missing (the payload ends at byte {pos})")
            raise DecodeError(f"{what}: truncated length prefix at byte {start}")
        byte = payload[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if pos - start >= _MAX_VARINT_BYTES:
            raise DecodeError(f"{what}: bad length prefix at byte {start}")
    end = pos + length
    if end > len(payload):
        raise DecodeError(
            f"{what}: its length prefix says {length} bytes, but only {len(payload) - pos} follow"
        )
    return payload[pos:end], end


def _parse(cls: type[_M], data: bytes, what: str) -> _M:
    message = cls()
    try:
        message.ParseFromString(data)
    except ProtobufDecodeError as err:
        raise DecodeError(f"{what}: not a valid SiteWhere protobuf message ({err})") from None
    if not message.IsInitialized():
        missing = ", ".join(message.FindInitializationErrors())  # type: ignore[attr-defined]
        raise DecodeError(f"{what}: required field missing: {missing}")
    return message


def _check_end(payload: bytes, pos: int, *, trailing_zero: bool) -> None:
    rest = payload[pos:]
    if not rest or (trailing_zero and rest == b"\x00"):
        return
    raise DecodeError(f"{len(rest)} unexpected bytes after the message (at byte {pos})")


def _device(token: str, where: str, ctx: DecodeContext) -> str:
    if not token:
        raise DecodeError(f"{where}: missing (the device token)")
    if not TOKEN_RE.match(token):
        raise DecodeError(
            f"{where}: {short(token)} is not a valid device token "
            "(letters, digits and . _ : - up to 128 characters)"
        )
    if ctx.device is not None and token != ctx.device:
        raise DecodeError(f"{where}: {short(token)} does not match the topic's device")
    return token


def _time(value: int, received_ms: int, where: str) -> int:
    if value == 0:
        return received_ms
    if value > MAX_TIME_MS:
        raise DecodeError(f"{where}: {value} is out of range (epoch milliseconds up to year 9999)")
    return value


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise DecodeError(f"{where}: not a finite number")
    return value


def _metadata(event: pb.Event, meta: dict[str, str] | None) -> None:
    if meta:
        for key, value in meta.items():
            if key not in event.metadata:
                event.metadata[key] = value


def _response(message: str | None) -> str:
    return orjson.dumps({} if message is None else {"message": message}).decode()


def _invocation(originator: str, where: str) -> str:
    if not originator:
        raise DecodeError(f"{where}: missing (an acknowledgement names the command it answers)")
    return originator


# ------------------------------------------------------------------------- SiteWhere 2.x/3.x


def _decode3(payload: bytes, header: sw3.DeviceEvent.Header, pos: int, ctx: DecodeContext) -> pb.Event:
    cmd = header.command
    names = sw3.DeviceEvent.Command
    event = pb.Event(
        tenant=ctx.tenant,
        device=_device(header.deviceToken.value, "header.deviceToken", ctx),
        received_time_ms=ctx.received_ms,
        event_time_ms=ctx.received_ms,
    )
    originator = header.originator.value if header.HasField("originator") else ""
    if cmd == names.Stream:
        raise DecodeError("command Stream (device streams) is not supported by fieldgate")
    if cmd not in names.values():
        raise DecodeError(f"header.command: unknown command {cmd}")
    name = names.Name(cmd)
    body, pos = read_delimited(payload, pos, f"{name} body")
    _check_end(payload, pos, trailing_zero=True)
    if originator and cmd != names.SEND_ACK:
        event.metadata["originator"] = originator
    if cmd == names.SEND_REGISTRATION:
        reg = _parse(sw3.DeviceEvent.DeviceRegistrationRequest, body, name)
        change = event.state_change
        change.kind = pb.STATE_CHANGE_KIND_REGISTRATION
        change.current = reg.deviceTypeToken.value
        for key in ("customerToken", "areaToken"):
            if reg.HasField(key):
                event.metadata[key] = getattr(reg, key).value
        _metadata(event, dict(reg.metadata))
    elif cmd == names.SEND_ACK:
        ack = _parse(sw3.DeviceEvent.DeviceAcknowledge, body, name)
        answer = event.command_response
        answer.invocation = _invocation(originator, "header.originator")
        answer.response_json = _response(ack.message.value if ack.HasField("message") else None)
    elif cmd == names.SEND_LOCATION:
        loc = _parse(sw3.DeviceEvent.DeviceLocation, body, name)
        if not loc.HasField("latitude"):
            raise DecodeError(f"{name}.latitude: missing")
        if not loc.HasField("longitude"):
            raise DecodeError(f"{name}.longitude: missing")
        location = event.location
        location.latitude = check_latitude(_finite(loc.latitude.value, "latitude"), f"{name}.latitude")
        location.longitude = check_longitude(_finite(loc.longitude.value, "longitude"), f"{name}.longitude")
        location.elevation = _finite(loc.elevation.value, f"{name}.elevation")
        event.event_time_ms = _time(loc.eventDate.value, ctx.received_ms, f"{name}.eventDate")
        _metadata(event, dict(loc.metadata))
    elif cmd == names.SEND_ALERT:
        alert_in = _parse(sw3.DeviceEvent.DeviceAlert, body, name)
        if not alert_in.alertType.value:
            raise DecodeError(f"{name}.alertType: missing")
        if alert_in.level not in _LEVELS3:
            raise DecodeError(f"{name}.level: unknown level {alert_in.level}")
        alert = event.alert
        alert.alert_type = alert_in.alertType.value
        alert.level = _LEVELS3[alert_in.level]
        alert.message = alert_in.alertMessage.value
        alert.source = pb.ALERT_SOURCE_DEVICE
        event.event_time_ms = _time(alert_in.eventDate.value, ctx.received_ms, f"{name}.eventDate")
        _metadata(event, dict(alert_in.metadata))
    else:  # SEND_MEASUREMENT
        dm = _parse(sw3.DeviceEvent.DeviceMeasurements, body, name)
        _measurements(
            event, [(m.measurementId.value, m.measurementValue.value) for m in dm.measurement], name
        )
        event.event_time_ms = _time(dm.eventDate.value, ctx.received_ms, f"{name}.eventDate")
        _metadata(event, dict(dm.metadata))
    return event


def _measurements(event: pb.Event, items: list[tuple[str, float]], where: str) -> None:
    if not items:
        raise DecodeError(f"{where}.measurement: no measurements")
    if len(items) > MAX_EVENTS:
        raise DecodeError(f"{where}.measurement: {len(items)} values, at most {MAX_EVENTS}")
    values = event.measurement.values
    for index, (name, value) in enumerate(items):
        if not name:
            raise DecodeError(f"{where}.measurement[{index}].measurementId: missing")
        values[name] = _finite(value, f"{where}.measurement.{field_name(name)}")


# ------------------------------------------------------------------------------ SiteWhere 1.x


def _decode1(payload: bytes, header: sw1.SiteWhere.Header, pos: int, ctx: DecodeContext) -> pb.Event:
    names = sw1.SiteWhere.Command
    name = names.Name(header.command)
    body, pos = read_delimited(payload, pos, f"{name} body")
    _check_end(payload, pos, trailing_zero=True)
    originator = header.originator
    event = pb.Event(tenant=ctx.tenant, received_time_ms=ctx.received_ms, event_time_ms=ctx.received_ms)
    if originator and header.command != names.ACKNOWLEDGE:
        event.metadata["originator"] = originator
    cmd = header.command
    if cmd == names.REGISTER:
        reg = _parse(sw1.SiteWhere.RegisterDevice, body, name)
        event.device = _device(reg.hardwareId, f"{name}.hardwareId", ctx)
        event.state_change.kind = pb.STATE_CHANGE_KIND_REGISTRATION
        event.state_change.current = reg.specificationToken
    elif cmd == names.ACKNOWLEDGE:
        ack = _parse(sw1.SiteWhere.Acknowledge, body, name)
        event.device = _device(ack.hardwareId, f"{name}.hardwareId", ctx)
        event.command_response.invocation = _invocation(originator, "header.originator")
        event.command_response.response_json = _response(ack.message if ack.HasField("message") else None)
    elif cmd == names.DEVICELOCATION:
        loc = _parse(sw1.SiteWhere.DeviceLocation, body, name)
        event.device = _device(loc.hardwareId, f"{name}.hardwareId", ctx)
        location = event.location
        location.latitude = check_latitude(_finite(loc.latitude, "latitude"), f"{name}.latitude")
        location.longitude = check_longitude(_finite(loc.longitude, "longitude"), f"{name}.longitude")
        location.elevation = _finite(loc.elevation, f"{name}.elevation")
        event.event_time_ms = _time(loc.eventDate, ctx.received_ms, f"{name}.eventDate")
    elif cmd == names.DEVICEALERT:
        alert_in = _parse(sw1.SiteWhere.DeviceAlert, body, name)
        event.device = _device(alert_in.hardwareId, f"{name}.hardwareId", ctx)
        if not alert_in.alertType:
            raise DecodeError(f"{name}.alertType: missing")
        alert = event.alert
        alert.alert_type = alert_in.alertType
        alert.level = pb.ALERT_LEVEL_INFO  # 1.x alerts have no level; SiteWhere 1.x set Info
        alert.message = alert_in.alertMessage
        alert.source = pb.ALERT_SOURCE_DEVICE
        event.event_time_ms = _time(alert_in.eventDate, ctx.received_ms, f"{name}.eventDate")
    else:  # DEVICEMEASUREMENT
        dm = _parse(sw1.SiteWhere.DeviceMeasurements, body, name)
        event.device = _device(dm.hardwareId, f"{name}.hardwareId", ctx)
        _measurements(event, [(m.measurementId, m.measurementValue) for m in dm.measurement], name)
        event.event_time_ms = _time(dm.eventDate, ctx.received_ms, f"{name}.eventDate")
    return event


def decode_sitewhere_protobuf(payload: bytes, ctx: DecodeContext) -> list[pb.Event]:
    """The event of one SiteWhere protobuf message (1.x or 2.x/3.x, told apart by the header)."""
    if not payload:
        raise DecodeError("empty payload")
    head, pos = read_delimited(payload, 0, "header")
    header3 = sw3.DeviceEvent.Header()
    try:
        header3.ParseFromString(head)
    except ProtobufDecodeError:
        parsed3 = False
    else:
        parsed3 = True
        # A 1.x originator (text) parsed as a wrapper never yields a value: that needs byte 0x0a.
        if header3.deviceToken.value:
            return [_decode3(payload, header3, pos, ctx)]
    try:
        header1 = _parse(sw1.SiteWhere.Header, head, "header")
    except DecodeError as err:
        if parsed3:
            raise DecodeError(
                "header: neither a SiteWhere 2.x/3.x header (it has no deviceToken) "
                f"nor a 1.x one ({err.reason})"
            ) from None
        raise
    try:
        return [_decode1(payload, header1, pos, ctx)]
    except DecodeError as err:
        if parsed3 and not header3.HasField("originator"):
            # A 2.x/3.x header without its deviceToken reads as a 1.x header: say both.
            raise DecodeError(
                f"{err.reason} (as SiteWhere 1.x; as 2.x/3.x: header.deviceToken missing)"
            ) from None
        raise
