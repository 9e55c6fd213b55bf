"""The edge directory: which edge agents exist, whether they are connected, what they report.

Only the ingest process sees the edge streams, but the REST API (the dashboard's edges page and
``/api/v1/fleet``) may run in another process, so ingest writes a small record per edge into
this shared store (:mod:`fieldgate.cloud.pipeline.ingest.edges` rate-limits those writes) and the
API reads it. Two implementations: :mod:`.sqlite.edges` (``data_dir/edges.db``) and
:mod:`.cassandra.edges`
(the instance keyspace). A record is instance-wide, not per tenant: an edge may carry events
of several tenants, listed in ``tenants`` (readers filter by it). Deleting a tenant
(:meth:`EdgeDirectory.delete_tenant`) takes it out of every record and removes the records of
edges that carried no other tenant.

``connected`` is a lease, not a flag: a record counts as connected while ``connected_ms`` is
set and ``last_seen_ms`` is recent (:data:`STALE_AFTER_MS`), so an ingest process that died
without writing the disconnect does not leave its edges "connected" forever.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fieldgate.cloud.store import TenantOwned

#: A connected edge's record is refreshed at least this often by ingest (heartbeat) ...
HEARTBEAT_MS = 10_000
#: ... and counts as disconnected when it was not refreshed for this long.
STALE_AFTER_MS = 3 * HEARTBEAT_MS
#: Listings return at most this many edges.
MAX_EDGES = 10_000


@dataclass(frozen=True, slots=True)
class EdgeReport:
    """The edge's own last status report (``EdgeStatus`` of the uplink protocol)."""

    buffer_depth: int
    oldest_pending_ms: int  # 0: buffer empty
    failed_decodes: int
    time_ms: int  # the edge's clock when it took the figures

    def to_json(self) -> str:
        return json.dumps(
            [self.buffer_depth, self.oldest_pending_ms, self.failed_decodes, self.time_ms],
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> EdgeReport | None:
        if not text:
            return None
        depth, oldest, failed, at = json.loads(text)
        return cls(int(depth), int(oldest), int(failed), int(at))


@dataclass(frozen=True, slots=True)
class EdgeRecord:
    edge_id: str
    session: str = ""  # the ingest stream that wrote it last (a stale close must not win)
    version: str = ""  # from the edge's Hello
    connected_ms: int = 0  # when the current stream opened (0: disconnected)
    last_seen_ms: int = 0  # the last time ingest knew the stream alive
    tenants: frozenset[str] = field(default_factory=frozenset)  # tenants its events carried
    report: EdgeReport | None = None

    def connected(self, now_ms: int) -> bool:
        return self.connected_ms > 0 and now_ms - self.last_seen_ms < STALE_AFTER_MS


class EdgeDirectory(TenantOwned, Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def put(self, record: EdgeRecord) -> None:
        """Upsert ``record``: tenants are added to the stored ones; a record without a
        ``report`` keeps the stored report."""

    async def disconnected(self, edge_id: str, session: str, last_seen_ms: int) -> None:
        """Mark the edge disconnected, unless a newer stream (another ``session``) owns it."""

    async def list_edges(self) -> list[EdgeRecord]:
        """Every known edge (at most :data:`MAX_EDGES`), by edge id."""


def tenants_json(tenants: Iterable[str]) -> str:
    return json.dumps(sorted(tenants), separators=(",", ":"))


def tenants_of(text: Any) -> frozenset[str]:
    if not text:
        return frozenset()
    return frozenset(str(t) for t in json.loads(text))


def without_tenant(record_tenants: frozenset[str], tenant: str) -> frozenset[str] | None:
    """The tenants left on an edge's record when ``tenant`` is deleted; None: delete the record
    (it carried that tenant only). Not called for records without ``tenant``."""
    left = record_tenants - {tenant}
    return left or None
