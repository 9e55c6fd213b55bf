"""A test cloud for edge tests: a real gRPC EdgeUplink server on 127.0.0.1 that plays the peer.

It is not the thing under test (the real one is ``fieldgate.cloud.pipeline.ingest.service.IngestService``):
it answers Hello with Welcome, records every event it receives (counting duplicates and
unique ``(tenant, device, alternate_id)`` keys separately), acknowledges batches (or holds
the acks back when told to), records command statuses, and can push CommandDown messages to
connected edges. ``stop()`` then ``start()`` again on the same port simulates an outage.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio

from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc
from tests.helpers.waiting import eventually

EventKey = tuple[str, str, str]


@dataclass
class _Session:
    edge_id: str
    context: grpc.aio.ServicerContext[svc.EdgeMessage, svc.CloudMessage]
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    held_acks: list[int] = field(default_factory=list)

    async def write(self, message: svc.CloudMessage) -> None:
        async with self.write_lock:
            await self.context.write(message)


class TestCloud(svc_grpc.EdgeUplinkServicer):
    """See the module docstring. ``async with TestCloud() as cloud: cloud.target``."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, port: int = 0, ack: bool = True) -> None:
        self.port = port
        self.ack = ack
        self.events: dict[EventKey, pb.Event] = {}
        self.received = 0  # events including duplicates
        self.batches = 0
        self.statuses: list[svc.CommandStatusUpdate] = []
        self.hellos: list[str] = []
        self.sessions: list[_Session] = []
        self._server: grpc.aio.Server | None = None
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ lifecycle

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server()
        svc_grpc.add_EdgeUplinkServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        """Stop at once, cancelling the edges' streams (an outage)."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(None)
        self.sessions.clear()

    async def __aenter__(self) -> TestCloud:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ what the test uses

    def unique_ids(self) -> set[str]:
        return {alt for _, _, alt in self.events}

    async def wait_until(
        self, predicate: Callable[[], object], within_s: float = 30.0, what: str | None = None
    ) -> None:
        """Wait until ``predicate()`` holds (:func:`tests.helpers.waiting.eventually`)."""
        await eventually(predicate, within_s, what)

    async def wait_for_session(self, within_s: float = 30.0) -> None:
        await self.wait_until(lambda: bool(self.sessions), within_s)

    async def send_command(self, down: svc.CommandDown) -> None:
        """Push a command to every connected edge session."""
        for session in list(self.sessions):
            await session.write(svc.CloudMessage(command=down))

    async def release_acks(self) -> None:
        """Start acknowledging again and acknowledge everything held back."""
        self.ack = True
        for session in list(self.sessions):
            held, session.held_acks = session.held_acks, []
            for seq in held:
                await session.write(svc.CloudMessage(ack=svc.BatchAck(seq=seq)))

    # ------------------------------------------------------------------ the service

    async def Connect(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[svc.EdgeMessage],
        context: grpc.aio.ServicerContext[svc.EdgeMessage, svc.CloudMessage],
    ) -> None:
        first = await context.read()
        if not isinstance(first, svc.EdgeMessage) or first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "Hello first")
            return
        session = _Session(first.hello.edge_id, context)
        self.hellos.append(first.hello.edge_id)
        await session.write(svc.CloudMessage(welcome=svc.Welcome(session_id=f"s{next(self._ids)}")))
        self.sessions.append(session)
        try:
            while True:
                message = await context.read()
                if not isinstance(message, svc.EdgeMessage):
                    return
                kind = message.WhichOneof("kind")
                if kind == "batch":
                    for event in message.batch.events:
                        self.events.setdefault((event.tenant, event.device, event.alternate_id), event)
                    self.received += len(message.batch.events)
                    self.batches += 1
                    if self.ack:
                        await session.write(svc.CloudMessage(ack=svc.BatchAck(seq=message.batch.seq)))
                    else:
                        session.held_acks.append(message.batch.seq)
                elif kind == "command_status":
                    self.statuses.append(message.command_status)
        finally:
            if session in self.sessions:
                self.sessions.remove(session)
