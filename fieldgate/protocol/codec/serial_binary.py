"""The compact binary message set of the serial protocol (docs/protocols/serial.md). No I/O.

A message is the *body* of one frame (:mod:`fieldgate.protocol.codec.serial_frames` adds COBS
and the CRC): one type byte, then fixed little-endian fields. Strings are a length byte and
UTF-8 bytes. Numbers carried as values are IEEE 754 float32 — what MCUs have — and are turned
into the shortest decimal that round-trips through float32 (``21.3``, not ``21.299999237``).

Devices send HELLO, MEASUREMENT (values by channel id; the names come from the port's
configuration), NAMED_MEASUREMENT (values with their names), LOCATION, ALERT, ACK and
COMMAND_RESPONSE; the agent sends COMMAND. Commands are correlated by a 16-bit *tag* the agent
picks per port, so that an MCU never has to store a 32-character invocation id.

:func:`parse_message` raises :class:`DecodeError` for any body that is not a well-formed
message; :func:`encode_message` is its inverse (used by the agent for COMMAND and by the
simulators and tests for everything else).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.protocol.codec.json_events import MAX_TIME_MS
from fieldgate.v1 import events_pb2 as pb

__all__ = [
    "ACK_STATUS",
    "Ack",
    "Alert",
    "Command",
    "CommandResponse",
    "Hello",
    "Location",
    "Measurement",
    "Message",
    "MsgType",
    "NamedMeasurement",
    "channel_name",
    "encode_message",
    "f32",
    "parse_message",
    "to_event",
]


class MsgType:
    HELLO = 0x01
    MEASUREMENT = 0x02
    NAMED_MEASUREMENT = 0x03
    LOCATION = 0x04
    ALERT = 0x05
    ACK = 0x06
    COMMAND_RESPONSE = 0x07
    COMMAND = 0x80


FLAG_TS = 0x01
FLAG_ELEVATION = 0x02  # LOCATION only

# ACK status byte → reason reported for the command (0 = accepted).
ACK_STATUS = {1: "unknown command", 2: "bad parameters", 3: "busy"}

_LEVELS = {
    1: pb.ALERT_LEVEL_INFO,
    2: pb.ALERT_LEVEL_WARNING,
    3: pb.ALERT_LEVEL_ERROR,
    4: pb.ALERT_LEVEL_CRITICAL,
}

Values = tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Hello:
    device: str = ""
    version: int = 1


@dataclass(frozen=True, slots=True)
class Measurement:
    values: tuple[tuple[int, float], ...]  # (channel id, value)
    ts_ms: int | None = None


@dataclass(frozen=True, slots=True)
class NamedMeasurement:
    values: Values
    ts_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Location:
    lat: float
    lon: float
    ele: float | None = None
    ts_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    level: int  # 1 info, 2 warning, 3 error, 4 critical
    alert_type: str
    message: str = ""
    ts_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    tag: int
    status: int = 0


@dataclass(frozen=True, slots=True)
class CommandResponse:
    tag: int
    values: Values = ()
    ts_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Command:
    tag: int
    command: str
    params: Values = ()


Message = Hello | Measurement | NamedMeasurement | Location | Alert | Ack | CommandResponse | Command

_F32 = struct.Struct("<f")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


def f32(value: float) -> float:
    """``value`` as float32 stores it, as the shortest decimal (up to 9 digits) that round-trips."""
    packed = _F32.pack(value)
    stored: float = _F32.unpack(packed)[0]
    if not math.isfinite(stored):
        return stored
    for digits in (7, 8):
        short = float(f"{stored:.{digits}g}")
        if _F32.pack(short) == packed:
            return short
    return float(f"{stored:.9g}")


def channel_name(channels: Mapping[int, str], channel: int) -> str:
    """The configured name of a channel; ``ch<N>`` for channels the configuration does not name
    (the data still arrives and says which channel to name)."""
    return channels.get(channel) or f"ch{channel}"


# ---------------------------------------------------------------------------- parsing


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError(f"message ends inside {what} (offset {self.pos}, needs {n} bytes)")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = _U16.unpack(self.take(2, what))[0]
        return value

    def i32(self, what: str) -> int:
        value: int = _I32.unpack(self.take(4, what))[0]
        return value

    def f32(self, what: str) -> float:
        value: float = _F32.unpack(self.take(4, what))[0]
        if not math.isfinite(value):
            raise DecodeError(f"{what}: not a finite number")
        return f32(value)

    def text(self, what: str) -> str:
        raw = self.take(self.u8(f"{what} length"), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"{what}: not UTF-8") from None

    def ts(self, flags: int) -> int | None:
        if not flags & FLAG_TS:
            return None
        value: int = _U64.unpack(self.take(8, "timestamp"))[0]
        if value > MAX_TIME_MS:
            raise DecodeError("timestamp: out of range (epoch milliseconds from 1970 to 9999)")
        return value

    def named_values(self, what: str, *, allow_empty: bool) -> Values:
        count = self.u8(f"{what} count")
        if count == 0 and not allow_empty:
            raise DecodeError(f"{what}: no values")
        out = []
        for i in range(count):
            name = self.text(f"{what} {i} name")
            if not name:
                raise DecodeError(f"{what} {i}: empty name")
            out.append((name, self.f32(f"{what} {name!r}")))
        return tuple(out)

    def end(self, kind: str) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{kind}: {len(self.data) - self.pos} unexpected byte(s) at the end")


def parse_message(body: bytes) -> Message:
    """The message in one frame body. Raises :class:`DecodeError` naming what is wrong."""
    if not body:
        raise DecodeError("empty message")
    r = _Reader(body)
    kind = r.u8("type")
    msg: Message
    if kind == MsgType.MEASUREMENT:
        ts = r.ts(r.u8("flags"))
        count = r.u8("value count")
        if count == 0:
            raise DecodeError("measurement: no values")
        values = []
        seen: set[int] = set()
        for i in range(count):
            channel = r.u8(f"channel {i}")
            if channel in seen:
                raise DecodeError(f"measurement: channel {channel} twice")
            seen.add(channel)
            values.append((channel, r.f32(f"channel {channel} value")))
        msg = Measurement(tuple(values), ts)
        name = "measurement"
    elif kind == MsgType.NAMED_MEASUREMENT:
        ts = r.ts(r.u8("flags"))
        msg = NamedMeasurement(r.named_values("value", allow_empty=False), ts)
        name = "named measurement"
    elif kind == MsgType.LOCATION:
        flags = r.u8("flags")
        ts = r.ts(flags)
        lat = r.i32("latitude") / 1e7
        lon = r.i32("longitude") / 1e7
        if not -90.0 <= lat <= 90.0:
            raise DecodeError(f"latitude {lat} is outside -90..90")
        if not -180.0 <= lon <= 180.0:
            raise DecodeError(f"longitude {lon} is outside -180..180")
        ele = r.f32("elevation") if flags & FLAG_ELEVATION else None
        msg = Location(lat, lon, ele, ts)
        name = "location"
    elif kind == MsgType.ALERT:
        ts = r.ts(r.u8("flags"))
        level = r.u8("level")
        if level not in _LEVELS:
            raise DecodeError(f"alert level {level} is not 1..4")
        alert_type = r.text("alert type")
        if not alert_type:
            raise DecodeError("alert type must not be empty")
        msg = Alert(level, alert_type, r.text("alert message"), ts)
        name = "alert"
    elif kind == MsgType.ACK:
        msg = Ack(r.u16("tag"), r.u8("status"))
        name = "ack"
    elif kind == MsgType.COMMAND_RESPONSE:
        ts = r.ts(r.u8("flags"))
        tag = r.u16("tag")
        msg = CommandResponse(tag, r.named_values("response", allow_empty=True), ts)
        name = "command response"
    elif kind == MsgType.HELLO:
        version = r.u8("version")
        msg = Hello(r.text("device id"), version)
        name = "hello"
    elif kind == MsgType.COMMAND:
        tag = r.u16("tag")
        command = r.text("command name")
        if not command:
            raise DecodeError("command name must not be empty")
        msg = Command(tag, command, r.named_values("parameter", allow_empty=True))
        name = "command"
    else:
        raise DecodeError(f"unknown message type 0x{kind:02X}")
    r.end(name)
    return msg


# ---------------------------------------------------------------------------- encoding


def _text(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"{what}: longer than 255 UTF-8 bytes")
    return bytes([len(raw)]) + raw


def _named(values: Values, what: str) -> bytes:
    if len(values) > 255:
        raise ValueError(f"{what}: more than 255 values")
    out = bytearray([len(values)])
    for name, value in values:
        out += _text(name, f"{what} name")
        out += _F32.pack(value)
    return bytes(out)


def _flags_ts(ts_ms: int | None, extra: int = 0) -> bytes:
    if ts_ms is None:
        return bytes([extra])
    return bytes([extra | FLAG_TS]) + _U64.pack(ts_ms)


def encode_message(msg: Message) -> bytes:
    """The frame body of ``msg``. Raises ValueError for values that do not fit the format."""
    if isinstance(msg, Measurement):
        if not 1 <= len(msg.values) <= 255:
            raise ValueError("a measurement carries 1..255 values")
        out = bytearray([MsgType.MEASUREMENT]) + _flags_ts(msg.ts_ms) + bytes([len(msg.values)])
        for channel, value in msg.values:
            out.append(channel)
            out += _F32.pack(value)
        return bytes(out)
    if isinstance(msg, NamedMeasurement):
        return bytes([MsgType.NAMED_MEASUREMENT]) + _flags_ts(msg.ts_ms) + _named(msg.values, "value")
    if isinstance(msg, Location):
        extra = FLAG_ELEVATION if msg.ele is not None else 0
        out = bytearray([MsgType.LOCATION]) + _flags_ts(msg.ts_ms, extra)
        out += _I32.pack(round(msg.lat * 1e7)) + _I32.pack(round(msg.lon * 1e7))
        if msg.ele is not None:
            out += _F32.pack(msg.ele)
        return bytes(out)
    if isinstance(msg, Alert):
        return (
            bytes([MsgType.ALERT])
            + _flags_ts(msg.ts_ms)
            + bytes([msg.level])
            + _text(msg.alert_type, "alert type")
            + _text(msg.message, "alert message")
        )
    if isinstance(msg, Ack):
        return bytes([MsgType.ACK]) + _U16.pack(msg.tag) + bytes([msg.status])
    if isinstance(msg, CommandResponse):
        return (
            bytes([MsgType.COMMAND_RESPONSE])
            + _flags_ts(msg.ts_ms)
            + _U16.pack(msg.tag)
            + _named(msg.values, "response")
        )
    if isinstance(msg, Hello):
        return bytes([MsgType.HELLO, msg.version]) + _text(msg.device, "device id")
    return (
        bytes([MsgType.COMMAND])
        + _U16.pack(msg.tag)
        + _text(msg.command, "command")
        + _named(msg.params, "parameter")
    )


# ---------------------------------------------------------------------------- → events


def to_event(
    msg: Measurement | NamedMeasurement | Location | Alert | CommandResponse,
    ctx: DecodeContext,
    channels: Mapping[int, str],
    invocation: str = "",
) -> pb.Event:
    """The fieldgate event of a device message; ``invocation`` is the id the agent mapped the
    response's tag to. Tenant and device come from the port's configuration (``ctx``)."""
    if ctx.device is None:
        raise DecodeError("no device configured for this port")
    event = pb.Event(
        tenant=ctx.tenant,
        device=ctx.device,
        event_time_ms=ctx.received_ms if msg.ts_ms is None else msg.ts_ms,
        received_time_ms=ctx.received_ms,
    )
    if isinstance(msg, Measurement):
        values = event.measurement.values
        for channel, value in msg.values:
            values[channel_name(channels, channel)] = value
    elif isinstance(msg, NamedMeasurement):
        event.measurement.values.update(dict(msg.values))
    elif isinstance(msg, Location):
        event.location.latitude = msg.lat
        event.location.longitude = msg.lon
        if msg.ele is not None:
            event.location.elevation = msg.ele
    elif isinstance(msg, Alert):
        event.alert.alert_type = msg.alert_type
        event.alert.level = _LEVELS[msg.level]
        event.alert.message = msg.message
        event.alert.source = pb.ALERT_SOURCE_DEVICE
    else:
        event.command_response.invocation = invocation
        event.command_response.response_json = orjson.dumps(dict(msg.values)).decode()
    return event
