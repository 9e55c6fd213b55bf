"""An in-memory transport double for edge tests: plays the devices behind an adapter.

It implements the :class:`fieldgate.edge.adapters.Adapter` protocol with no I/O: the test
publishes events "from a device" (they go to the agent's sink exactly as a real adapter
would hand them over), marks devices online/offline, and sees the commands delivered.
Optionally it answers every delivered command with a command_response event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Sequence

from fieldgate.edge.adapters import EventSink, OnlineCallback
from fieldgate.edge.errors import DeliveryError
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb


class LoopbackAdapter:
    name = "loopback"

    def __init__(self, tenants: Collection[str] = ("default",), *, auto_respond: bool = False) -> None:
        self.tenants = set(tenants)
        self.auto_respond = auto_respond
        self.online: set[tuple[str, str]] = set()
        self.delivered: list[tuple[str, str, pb.CommandInvocation]] = []
        self.fail_with: str | None = None
        self.started = False
        self._sink: EventSink | None = None
        self._on_online: OnlineCallback | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, sink: EventSink, on_online: OnlineCallback) -> None:
        self._sink, self._on_online = sink, on_online
        self.started = True

    async def stop(self) -> None:
        self.started = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def owns(self, tenant: str, device: str) -> bool:
        return tenant in self.tenants

    def is_online(self, tenant: str, device: str) -> bool:
        return (tenant, device) in self.online

    async def send_command(self, tenant: str, device: str, invocation: pb.CommandInvocation) -> None:
        if self.fail_with is not None:
            raise DeliveryError(self.fail_with)
        if (tenant, device) not in self.online:
            raise DeliveryError("device offline")
        self.delivered.append((tenant, device, invocation))
        if self.auto_respond:
            task = asyncio.create_task(self.respond(tenant, device, invocation.invocation, {"ok": True}))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ what the test does

    async def set_online(self, tenant: str, device: str) -> None:
        self.online.add((tenant, device))
        assert self._on_online is not None, "adapter not started"
        await self._on_online(tenant, device)

    def set_offline(self, tenant: str, device: str) -> None:
        self.online.discard((tenant, device))

    async def publish(self, events: Sequence[pb.Event], source: str = "loopback") -> None:
        """Hand events to the sink; returns once they are durable (like a PUBACK)."""
        assert self._sink is not None, "adapter not started"
        await self._sink.accept(events, source=source)

    async def publish_bad(self, payload: bytes, reason: str, tenant: str = "default") -> None:
        assert self._sink is not None, "adapter not started"
        await self._sink.reject(payload, source="loopback", reason=reason, tenant=tenant)

    async def respond(self, tenant: str, device: str, invocation: str, response: dict[str, object]) -> None:
        event = pb.Event(tenant=tenant, device=device, event_time_ms=now_ms(), received_time_ms=now_ms())
        event.command_response.invocation = invocation
        event.command_response.response_json = json.dumps(response)
        await self.publish([event])
