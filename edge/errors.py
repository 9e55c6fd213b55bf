"""Exception tree of the edge agent."""

from __future__ import annotations

from fieldgate.errors import FieldgateError


class EdgeError(FieldgateError):
    """Base of every error raised by the edge agent."""


class BufferFull(EdgeError):
    """The durable buffer is full and its overflow policy is ``reject_new``."""


class DeliveryError(EdgeError):
    """A command could not be handed to its device (offline, transport failure)."""


class UplinkError(EdgeError):
    """The uplink to the cloud failed; the uplink reconnects by itself."""
