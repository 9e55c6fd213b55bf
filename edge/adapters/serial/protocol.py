"""Per-port protocol state: received bytes → events, acks and bad frames; commands → bytes.

The link between the pure codecs (:mod:`fieldgate.protocol.codec.serial_frames`,
:mod:`~fieldgate.protocol.codec.serial_binary`, :mod:`~fieldgate.protocol.codec.json_events`) and the
port's task (:mod:`.port`). No I/O and no asyncio here: ``feed`` takes the bytes of one read
and returns what they contained, so the same code is driven by a pty, real hardware or a test.

After :meth:`reset` (the port was just opened) the first frame that fails to decode is taken
to be the tail of a frame the agent joined in the middle of: it is dropped silently
(``resync_dropped``), not counted as a device error.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from fieldgate.edge.errors import DeliveryError
from fieldgate.protocol.codec import DecodeContext, DecodeError
from fieldgate.protocol.codec.commands import encode_command_json
from fieldgate.protocol.codec.json_events import decode_json
from fieldgate.protocol.codec.serial_binary import (
    ACK_STATUS,
    Ack,
    Command,
    CommandResponse,
    Hello,
    encode_message,
    parse_message,
    to_event,
)
from fieldgate.protocol.codec.serial_frames import BinaryFramer, FrameError, LineFramer
from fieldgate.v1 import events_pb2 as pb

# Commands whose tag → invocation mapping is remembered (for late responses), per port.
MAX_TAGS = 1024
# Bad payload bytes kept in the failed-decode lane per entry.
MAX_KEPT = 1024


@dataclass(frozen=True, slots=True)
class Bad:
    kind: str  # link-health error kind
    reason: str
    payload: bytes | None  # kept in the failed-decode lane when not None


@dataclass(slots=True)
class Received:
    events: list[pb.Event] = field(default_factory=list)
    # (invocation id, refusal reason or None): the device took (or refused) a command.
    acks: list[tuple[str, str | None]] = field(default_factory=list)
    bad: list[Bad] = field(default_factory=list)
    frames: int = 0
    resync_dropped: int = 0
    unexpected_acks: int = 0
    hello: str | None = None


class PortProtocol(Protocol):
    def reset(self) -> None: ...

    def feed(self, buf: bytearray, received_ms: int) -> Received:
        """Decode every complete frame in ``buf`` and remove the bytes it used."""

    def encode_command(self, invocation: pb.CommandInvocation) -> bytes:
        """The wire bytes of a command; raises DeliveryError if it cannot be expressed."""


class _Framer(Protocol):
    def reset(self) -> None: ...

    def decode(self, buf: bytes | bytearray) -> tuple[int, bytes | None]: ...


class _Base:
    """The framing loop both modes share; a mode decodes one complete frame in ``_frame``."""

    def __init__(self, tenant: str, device: str, framer: _Framer) -> None:
        self.tenant = tenant
        self.device = device
        self._framer = framer
        self._hunting = True

    def reset(self) -> None:
        self._hunting = True
        self._framer.reset()

    def feed(self, buf: bytearray, received_ms: int) -> Received:
        out = Received()
        ctx = DecodeContext(self.tenant, self.device, received_ms)
        while True:
            try:
                consumed, frame = self._framer.decode(buf)
            except FrameError as err:
                del buf[: err.consumed]
                self._bad(out, Bad(err.kind, err.reason, None))
                continue
            if consumed == 0:
                return out
            del buf[:consumed]
            if frame is None:
                continue
            if self._frame(frame, ctx, out):
                out.frames += 1
                self._hunting = False

    def _frame(self, frame: bytes, ctx: DecodeContext, out: Received) -> bool:
        """Decode one frame into ``out``; False (after reporting it) if it was bad."""
        raise NotImplementedError

    def _bad(self, out: Received, bad: Bad) -> None:
        if self._hunting:
            out.resync_dropped += 1
        else:
            out.bad.append(bad)
        self._hunting = False


class JsonLineProtocol(_Base):
    """Readable mode: one JSON document per line (docs/protocols/serial.md)."""

    def __init__(self, tenant: str, device: str, max_line: int) -> None:
        super().__init__(tenant, device, LineFramer(max_line))

    def _frame(self, line: bytes, ctx: DecodeContext, out: Received) -> bool:
        try:
            if b'"ack"' in line and self._ack(line, out):
                return True
            events = decode_json(line, ctx)
        except DecodeError as err:
            kind = "decode" if _is_utf8(line) else "garbage"
            reason = err.reason if kind == "decode" else "line is not UTF-8"
            self._bad(out, Bad(kind, reason, line[:MAX_KEPT]))
            return False
        for event in events:
            if event.WhichOneof("payload") == "command_response":
                out.acks.append((event.command_response.invocation, None))
        out.events.extend(events)
        return True

    def _ack(self, line: bytes, out: Received) -> bool:
        """Handle ``{"type":"ack","invocation":..,"ok":true|false,"reason":..}``; False if the
        line is not an ack (an event that merely contains the text "ack")."""
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            return False  # decode_json reports it
        if type(doc) is not dict or doc.get("type") != "ack":
            return False
        invocation = doc.get("invocation")
        if type(invocation) is not str or not invocation:
            raise DecodeError('ack: "invocation" must be a non-empty string')
        ok = doc.get("ok", True)
        if type(ok) is not bool:
            raise DecodeError('ack: "ok" must be true or false')
        reason = doc.get("reason")
        refusal = None if ok else (reason if type(reason) is str and reason else "refused")
        out.acks.append((invocation, refusal))
        return True

    def encode_command(self, invocation: pb.CommandInvocation) -> bytes:
        return encode_command_json(invocation) + b"\n"


class BinaryProtocol(_Base):
    """Compact mode: COBS frames with CRC-16 (docs/protocols/serial.md)."""

    def __init__(self, tenant: str, device: str, channels: Mapping[int, str]) -> None:
        super().__init__(tenant, device, BinaryFramer())
        self._channels = dict(channels)
        self._tags: OrderedDict[int, str] = OrderedDict()
        self._next_tag = 1

    def _frame(self, body: bytes, ctx: DecodeContext, out: Received) -> bool:
        try:
            msg = parse_message(body)
            if isinstance(msg, Ack):
                invocation = self._tags.get(msg.tag)
                if invocation is None:
                    out.unexpected_acks += 1
                else:
                    out.acks.append((invocation, _refusal(msg.status)))
            elif isinstance(msg, Hello):
                out.hello = msg.device
                if msg.device and msg.device != self.device:
                    out.bad.append(
                        Bad(
                            "identity",
                            f"device says it is {msg.device!r}, the port is configured for {self.device!r}",
                            None,
                        )
                    )
            elif isinstance(msg, Command):
                raise DecodeError("COMMAND frames go from the agent to the device, not back")
            elif isinstance(msg, CommandResponse):
                invocation = self._tags.get(msg.tag)
                if invocation is None:
                    raise DecodeError(f"response to unknown command tag {msg.tag}")
                out.acks.append((invocation, None))
                out.events.append(to_event(msg, ctx, self._channels, invocation))
            else:
                out.events.append(to_event(msg, ctx, self._channels))
        except DecodeError as err:
            self._bad(out, Bad("decode", err.reason, body[:MAX_KEPT]))
            return False
        return True

    def encode_command(self, invocation: pb.CommandInvocation) -> bytes:
        command = orjson.loads(encode_command_json(invocation))  # validated like the JSON mode
        params: list[tuple[str, float]] = []
        for key, value in command["params"].items():
            if type(value) is bool:
                value = 1.0 if value else 0.0
            if type(value) not in (int, float):
                raise DeliveryError(
                    f"parameter {key!r}: binary serial mode carries numbers and booleans only"
                )
            params.append((key, float(value)))
        tag = self._next_tag
        self._next_tag = tag % 0xFFFF + 1
        try:
            body = encode_message(Command(tag, invocation.command, tuple(params)))
            frame = BinaryFramer.encode(body)
        except (ValueError, OverflowError) as err:
            raise DeliveryError(f"command does not fit a binary frame: {err}") from err
        self._tags[tag] = invocation.invocation
        self._tags.move_to_end(tag)
        while len(self._tags) > MAX_TAGS:
            self._tags.popitem(last=False)
        # A leading delimiter: the device's receiver is back in step even after line noise.
        return b"\x00" + frame


def _refusal(status: int) -> str | None:
    if status == 0:
        return None
    return ACK_STATUS.get(status, f"refused (status {status})")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def build_protocol(
    mode: str, tenant: str, device: str, *, channels: Mapping[int, str], max_line: int
) -> PortProtocol:
    if mode == "binary":
        return BinaryProtocol(tenant, device, channels)
    return JsonLineProtocol(tenant, device, max_line)
