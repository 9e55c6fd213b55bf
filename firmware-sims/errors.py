"""Exception tree of the simulators."""

from __future__ import annotations

from fieldgate.errors import FieldgateError


class SimError(FieldgateError):
    """Base of every error a simulator raises on purpose."""


class SimConfigError(SimError, ValueError):
    """The simulator was asked for something it cannot do (bad rate, batch, format...)."""


class SimConnectError(SimError):
    """The simulator could not connect to (or subscribe at) its broker in time."""


class CommandError(SimError):
    """A command message was unusable (not JSON, no invocation id): it cannot be answered.

    ``reason`` is a short human-readable cause.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
