"""Exception tree of the protocol layer (codecs, topics)."""

from __future__ import annotations

from fieldgate.errors import FieldgateError


class ProtocolError(FieldgateError):
    """Base of every error raised by the protocol layer."""


class DecodeError(ProtocolError):
    """A device payload could not be decoded; ``reason`` is a short human-readable cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
