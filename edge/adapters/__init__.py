"""Southbound adapters: one per transport (MQTT, serial, Modbus, BLE).

An adapter owns the connection to its devices. It hands decoded events to an
:class:`EventSink` (the agent, which makes them durable before the adapter acknowledges
anything to a device) and delivers commands to devices it owns. It knows nothing of the
cloud, the uplink or the buffer's implementation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from fieldgate.v1 import events_pb2 as pb


class EventSink(Protocol):
    """Where adapters put what devices send. Both calls return once the data is durable."""

    async def accept(self, events: Sequence[pb.Event], *, source: str) -> None:
        """Make ``events`` durable. Raises BufferFull under the ``reject_new`` policy."""

    async def reject(self, payload: bytes, *, source: str, reason: str, tenant: str = "") -> None:
        """Keep an undecodable payload in the failed-decode lane (counted, logged)."""


# Called by an adapter when a device becomes reachable for commands (e.g. subscribed).
OnlineCallback = Callable[[str, str], Awaitable[None]]  # (tenant, device)


class Adapter(Protocol):
    """A transport backend. Lifecycle: ``start`` → running → ``stop`` (idempotent)."""

    name: str

    async def start(self, sink: EventSink, on_online: OnlineCallback) -> None: ...

    async def stop(self) -> None: ...

    def owns(self, tenant: str, device: str) -> bool:
        """True if commands for this device should go through this adapter."""

    def is_online(self, tenant: str, device: str) -> bool:
        """True if a command sent now would reach the device."""

    async def send_command(self, tenant: str, device: str, invocation: pb.CommandInvocation) -> None:
        """Hand the command to the device; raises DeliveryError if it cannot (EncodeError from
        :mod:`fieldgate.protocol` if the command cannot be encoded for it)."""
