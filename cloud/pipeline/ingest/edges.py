"""Ingest's side of the edge directory: what each edge stream tells, written rate-limited.

:class:`EdgeTracker` is told by ingest (cloud/pipeline/ingest/service.py) when an edge stream opens (with the
Hello's version), which tenants its events carry and each ``EdgeStatus`` report, and when the
stream ends. It keeps that in memory and a background task writes it to the shared
:class:`~fieldgate.cloud.store.edges.EdgeDirectory` — at once for a connect, a disconnect or a
new tenant, otherwise at most once per edge per ``min_interval_s``, and a heartbeat every
:data:`~fieldgate.cloud.store.edges.HEARTBEAT_MS` while the stream is open (the directory's
lease). So an edge sending a status every few seconds costs one small write per few seconds,
and the edge streams never wait on the store: the hooks only update memory.

Memory is bounded by the open streams (one entry per stream; a closed one is dropped once its
disconnect is written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from fieldgate.cloud.errors import CloudError
from fieldgate.cloud.store.edges import HEARTBEAT_MS, EdgeDirectory, EdgeRecord, EdgeReport
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms
from fieldgate.v1 import services_pb2 as svc

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Stream:
    edge_id: str
    session: str
    version: str
    connected_ms: int
    tenants: set[str] = field(default_factory=set)
    report: EdgeReport | None = None
    dirty: bool = True
    urgent: bool = True
    closed: bool = False
    written_ms: int = 0


@dataclass(slots=True)
class EdgeTrackerStats:
    writes: int = 0
    write_failures: int = 0
    reports: int = 0


class EdgeTracker:
    """See the module docstring. ``start()``/``stop()``; the hooks never block."""

    def __init__(self, directory: EdgeDirectory, *, min_interval_s: float = 5.0, tick_s: float = 0.5) -> None:
        self._dir = directory
        self._min_ms = int(min_interval_s * 1000)
        self._tick_s = tick_s
        self._streams: dict[str, _Stream] = {}  # session id -> stream
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stats = EdgeTrackerStats()

    # -- hooks (called by ingest) ----------------------------------------------------------

    def opened(self, edge_id: str, session: str, version: str) -> None:
        self._streams[session] = _Stream(edge_id, session, version[:64], now_ms())
        self._wake.set()

    def carried(self, session: str, tenant: str) -> None:
        stream = self._streams.get(session)
        if stream is not None and tenant not in stream.tenants:
            stream.tenants.add(tenant)
            stream.dirty = stream.urgent = True
            self._wake.set()

    def reported(self, session: str, status: svc.EdgeStatus) -> None:
        stream = self._streams.get(session)
        if stream is None:
            return
        self.stats.reports += 1
        first = stream.report is None
        stream.report = EdgeReport(
            buffer_depth=int(status.buffer_depth),
            oldest_pending_ms=int(status.oldest_pending_ms),
            failed_decodes=int(status.failed_decodes),
            time_ms=int(status.time_ms),
        )
        stream.dirty = True
        if first:  # the edges page shows the buffer as soon as the edge said it
            stream.urgent = True
            self._wake.set()

    def closed(self, session: str) -> None:
        stream = self._streams.get(session)
        if stream is not None:
            stream.closed = stream.urgent = True
            self._wake.set()

    def forget_tenant(self, tenant: str) -> None:
        """The tenant was deleted (its edge directory entries with it): stop writing it into the
        records of the open streams that carried it."""
        for stream in self._streams.values():
            stream.tenants.discard(tenant)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="edge-tracker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        for stream in self._streams.values():  # this process ends: its streams end with it
            stream.closed = stream.urgent = True
        with contextlib.suppress(CloudError):
            await self.flush()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except CloudError as err:  # task top: the next tick retries what is still due
                self.stats.write_failures += 1
                log.warning("edge directory: cannot write: %s", err)

    async def flush(self) -> None:
        """Write every record that is due (all urgent ones, rate-limited dirty ones, heartbeats)."""
        now = now_ms()
        for key, stream in list(self._streams.items()):
            age = now - stream.written_ms
            if not (stream.urgent or (stream.dirty and age >= self._min_ms) or age >= HEARTBEAT_MS):
                continue
            if stream.closed and stream.written_ms:
                await self._dir.disconnected(stream.edge_id, stream.session, now)
                self._streams.pop(key, None)
            else:  # (a stream that closed before its first write is written, then closed)
                await self._dir.put(
                    EdgeRecord(
                        edge_id=stream.edge_id,
                        session=stream.session,
                        version=stream.version,
                        connected_ms=stream.connected_ms,
                        last_seen_ms=now,
                        tenants=frozenset(stream.tenants),
                        report=stream.report,
                    )
                )
                stream.written_ms = now
                stream.dirty = False
                stream.urgent = stream.closed
            self.stats.writes += 1
