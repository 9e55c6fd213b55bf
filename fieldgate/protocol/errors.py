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


class EncodeError(ProtocolError):
    """A message for a device cannot be encoded (e.g. a command whose params are not a JSON
    object); the message says why. The edge fails that one command with this reason."""
