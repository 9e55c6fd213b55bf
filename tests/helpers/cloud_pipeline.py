"""Test infrastructure for the cloud pipeline: the real stages on the real embedded bus and
SQLite stores in a temporary directory, and :class:`EdgeClient`, a gRPC client that plays an
edge agent on the uplink stream (the peer of the thing under test, not a mock of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
from grpc import aio

from fieldgate.cloud.bus.embedded import EmbeddedBus
from fieldgate.cloud.config import TenantConfig
from fieldgate.cloud.pipeline.delivery import CommandDelivery
from fieldgate.cloud.pipeline.inbound import InboundProcessing
from fieldgate.cloud.pipeline.ingest.service import IngestService
from fieldgate.cloud.pipeline.persistence import EventPersistence
from fieldgate.cloud.pipeline.registration import Registration
from fieldgate.cloud.pipeline.sessions import EdgeSessions
from fieldgate.cloud.pipeline.stage import StageSettings
from fieldgate.cloud.services.commands import CommandService
from fieldgate.cloud.store.events import EventQuery
from fieldgate.cloud.store.sqlite.events import SqliteEventStore
from fieldgate.cloud.store.sqlite.invocations import SqliteInvocationStore
from fieldgate.cloud.store.sqlite.registry import SqliteRegistry
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc

DEFAULT_TENANTS = (
    TenantConfig(token="default", name="Default tenant"),
    TenantConfig(token="strict", name="No auto-registration", auto_register=False),
)


@dataclass
class CloudPipeline:
    """Ingest + inbound + registration + persistence + command delivery, all real."""

    data_dir: Path
    tenants: Sequence[TenantConfig] = DEFAULT_TENANTS
    recent_ids: int = 200_000
    unknown_tenant_ttl_s: float = 0.2  # how long "no such tenant" is believed (5 s in production)
    settings: StageSettings = field(default_factory=lambda: StageSettings(poll_timeout_s=0.2))

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.bus = EmbeddedBus(self.data_dir / "bus.db")
        self.registry = SqliteRegistry(self.data_dir / "registry")
        self.invocations = SqliteInvocationStore(self.data_dir / "registry")
        self.events = SqliteEventStore(self.data_dir / "events")
        self.sessions = EdgeSessions()
        self.ingest = IngestService(
            self.bus,
            self.registry,
            self.sessions,
            "127.0.0.1",
            0,
            unknown_tenant_ttl_s=self.unknown_tenant_ttl_s,
        )
        self.inbound = InboundProcessing(
            self.bus, self.registry, self.invocations, settings=self.settings, recent_ids=self.recent_ids
        )
        self.registration = Registration(self.bus, self.registry, self.tenants, settings=self.settings)
        self.persistence = EventPersistence(self.bus, self.events, settings=self.settings)
        self.delivery = CommandDelivery(
            self.bus,
            self.sessions,
            self.invocations,
            self.events,
            settings=self.settings,
            sweep_interval_s=0.2,
        )
        self.commands = CommandService(self.registry, self.invocations, self.bus, default_ttl_s=600)
        self._started: list[object] = []

    @property
    def port(self) -> int:
        return self.ingest.port

    async def start(self) -> None:
        parts = (
            self.bus,
            self.registry,
            self.invocations,
            self.events,
            self.registration,
            self.inbound,
            self.persistence,
            self.delivery,
            self.ingest,
        )
        for part in parts:
            await part.start()
            self._started.append(part)

    async def stop(self) -> None:
        while self._started:
            part = self._started.pop()
            await part.stop()  # type: ignore[attr-defined]

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def device_events(
        self, device: str, tenant: str = "default", kind: str | None = None
    ) -> list[pb.Event]:
        page = await self.events.list_device_events(
            EventQuery(tenant=tenant, device=device, kind=kind, page_size=10_000)
        )
        return page.items


def measurement(device: str, alt: str, tenant: str = "default", **values: float) -> pb.Event:
    return pb.Event(
        tenant=tenant,
        device=device,
        alternate_id=alt,
        event_time_ms=now_ms(),
        measurement=pb.Measurement(values=values or {"temperature": 21.5}),
    )


class EdgeClient:
    """One uplink stream, driven by the test: send Hello/batches/statuses, read what comes.

    A background task sorts incoming messages into bounded queues (acks, commands) so a test
    can wait for the one it expects; overflow is a test failure (the queue is big enough).
    """

    def __init__(self, port: int, edge_id: str = "edge-1") -> None:
        self.edge_id = edge_id
        self._channel = aio.insecure_channel(f"127.0.0.1:{port}")
        self._stub = svc_grpc.EdgeUplinkStub(self._channel)
        self._call: aio.StreamStreamCall[svc.EdgeMessage, svc.CloudMessage] | None = None
        self.welcome: svc.Welcome | None = None
        self.acks: asyncio.Queue[svc.BatchAck] = asyncio.Queue(maxsize=10_000)
        self.commands: asyncio.Queue[svc.CommandDown] = asyncio.Queue(maxsize=10_000)
        self._reader: asyncio.Task[None] | None = None
        self._seq = 0

    async def connect(self, wait_s: float = 10.0) -> svc.Welcome:
        self._call = self._stub.Connect()  # type: ignore[call-arg]  # read/write API, no iterator
        await self._call.write(svc.EdgeMessage(hello=svc.Hello(edge_id=self.edge_id, version="test")))
        first = await asyncio.wait_for(self._call.read(), wait_s)
        assert isinstance(first, svc.CloudMessage) and first.WhichOneof("kind") == "welcome", first
        self.welcome = first.welcome
        self._reader = asyncio.create_task(self._read())
        return first.welcome

    async def _read(self) -> None:
        assert self._call is not None
        while True:
            msg = await self._call.read()  # read() only: grpc forbids mixing it with `async for`
            if not isinstance(msg, svc.CloudMessage):  # aio.EOF
                return
            kind = msg.WhichOneof("kind")
            if kind == "ack":
                self.acks.put_nowait(msg.ack)
            elif kind == "command":
                self.commands.put_nowait(msg.command)

    @property
    def stream_ended(self) -> bool:
        """True once the cloud ended the stream (its half: no more messages will come)."""
        return self._reader is not None and self._reader.done()

    async def code(self) -> grpc.StatusCode:
        """The stream's final status (waits for it)."""
        assert self._call is not None
        return await self._call.code()

    async def send(self, events: Sequence[pb.Event]) -> int:
        """Send one EventBatchUp; returns its seq."""
        assert self._call is not None
        self._seq += 1
        await self._call.write(svc.EdgeMessage(batch=svc.EventBatchUp(seq=self._seq, events=list(events))))
        return self._seq

    async def send_and_ack(self, events: Sequence[pb.Event], wait_s: float = 10.0) -> svc.BatchAck:
        seq = await self.send(events)
        ack = await self.next_ack(wait_s)
        assert ack.seq == seq, (ack.seq, seq)
        return ack

    async def next_ack(self, wait_s: float = 10.0) -> svc.BatchAck:
        return await asyncio.wait_for(self.acks.get(), wait_s)

    async def next_command(self, wait_s: float = 10.0) -> svc.CommandDown:
        return await asyncio.wait_for(self.commands.get(), wait_s)

    async def status(
        self, cmd: svc.CommandDown, status: svc.CommandStatus.ValueType, reason: str = ""
    ) -> None:
        assert self._call is not None
        await self._call.write(
            svc.EdgeMessage(
                command_status=svc.CommandStatusUpdate(
                    tenant=cmd.tenant,
                    device=cmd.device,
                    invocation=cmd.invocation.invocation,
                    status=status,
                    reason=reason,
                    time_ms=now_ms(),
                )
            )
        )

    async def close(self) -> None:
        if self._call is not None:
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                await self._call.done_writing()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(self._reader, return_exceptions=True), 5)
            self._reader.cancel()
        await self._channel.close(None)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


@contextlib.asynccontextmanager
async def edge(port: int, edge_id: str | None = None) -> AsyncIterator[EdgeClient]:
    client = EdgeClient(port, edge_id or f"edge-{uuid.uuid4().hex[:6]}")
    async with client:
        yield client
