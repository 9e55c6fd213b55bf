"""Device payload codecs: pure functions from bytes to protobuf events and back. No I/O.

A codec turns one transport message (an MQTT payload, a serial frame) into zero or more
:class:`fieldgate.v1.events_pb2.Event` objects, or raises :class:`DecodeError` with a reason.
Transport-level facts the payload does not carry (tenant and device from the MQTT topic, the
time of receipt) come in a :class:`DecodeContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fieldgate.protocol.errors import DecodeError
from fieldgate.v1 import events_pb2 as pb

__all__ = ["CommandEncoder", "DecodeContext", "DecodeError", "EventDecoder"]


@dataclass(frozen=True, slots=True)
class DecodeContext:
    tenant: str
    # None when the payload names its device itself (SiteWhere's deviceToken).
    device: str | None
    received_ms: int


class EventDecoder(Protocol):
    def __call__(self, payload: bytes, ctx: DecodeContext) -> list[pb.Event]: ...


class CommandEncoder(Protocol):
    def __call__(self, invocation: pb.CommandInvocation) -> bytes: ...
