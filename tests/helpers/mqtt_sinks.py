"""In-test peers of the MQTT adapters: an EventSink that records what it got, and an on_online
callback that records which devices became reachable. They stand in for the edge agent, which
is not what these tests are about."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from fieldgate.edge.errors import BufferFull
from fieldgate.v1 import events_pb2 as pb


@dataclass
class Rejected:
    payload: bytes
    source: str
    reason: str
    tenant: str


@dataclass
class RecordingSink:
    """Keeps every accepted event and rejected payload.

    ``gate``: when set to an unset Event, ``accept`` waits for it (after recording the call in
    ``pending``), so a test can hold a message between "handed over" and "durable".
    ``fail_next``: that many ``accept`` calls raise (a sink crash before it made anything durable).
    ``full``: while True, ``accept`` raises BufferFull (overflow policy reject_new).
    """

    events: list[pb.Event] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    pending: int = 0
    gate: asyncio.Event | None = None
    fail_next: int = 0
    failed: int = 0
    full: bool = False
    count_only: bool = False
    accepted_messages: int = 0

    async def accept(self, events: Sequence[pb.Event], *, source: str) -> None:
        if self.full:
            raise BufferFull("buffer full (test)")
        if self.fail_next > 0:
            self.fail_next -= 1
            self.failed += 1
            raise RuntimeError("sink crashed (test)")
        if self.gate is not None and not self.gate.is_set():
            self.pending += 1
            try:
                await self.gate.wait()
            finally:
                self.pending -= 1
        self.accepted_messages += 1
        if not self.count_only:
            self.events.extend(events)
            self.sources.append(source)

    async def reject(self, payload: bytes, *, source: str, reason: str, tenant: str = "") -> None:
        self.rejected.append(Rejected(payload, source, reason, tenant))

    def alternate_ids(self) -> list[str]:
        return [e.alternate_id for e in self.events]

    def values(self, name: str) -> list[float]:
        return [e.measurement.values[name] for e in self.events if e.HasField("measurement")]


@dataclass
class OnlineRecorder:
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, tenant: str, device: str) -> None:
        self.seen.append((tenant, device))
