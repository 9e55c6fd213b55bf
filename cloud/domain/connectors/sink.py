"""The interface every connector kind implements, and its errors.

A sink is one destination's transport: :meth:`Sink.send` delivers a small batch of events
(already filtered) or raises :class:`DeliveryError`. Retrying, back-off, queueing and
dead-lettering are not the sink's business (:mod:`fieldgate.cloud.pipeline.connectors.runner` does
them, the same for every kind), so a sink is a thin adapter over its client library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from fieldgate.cloud.errors import CloudError
from fieldgate.v1 import events_pb2 as pb


class DeliveryError(CloudError):
    """A delivery failed. ``permanent``: retrying cannot help (e.g. HTTP 400/401/404, a message
    too large), so the events go to the dead letters without further attempts."""

    def __init__(self, reason: str, *, permanent: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.retry_after_s = retry_after_s


class Sink(Protocol):
    async def start(self) -> None:
        """Create the client (connect lazily: a destination that is down must not fail start)."""

    async def stop(self) -> None: ...

    async def send(self, events: Sequence[pb.Event], *, attempt: int) -> None:
        """Deliver ``events`` (one delivery); DeliveryError if they were not accepted."""
