"""Cassandra edge directory: table ``edges`` of the instance keyspace (see :mod:`fieldgate.cloud.store.edges`).

One listing partition (``bucket = 0``), clustered by edge id: the directory is small (one row
per edge agent). ``tenants`` is a CQL set, so writers add to it without reading; the
disconnect is a lightweight transaction on ``session`` so that the close of a stream a newer
stream (maybe on another ingest replica) superseded cannot mark the edge disconnected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fieldgate.cloud.store.cassandra.keyspace import PreparedKeyspaces
from fieldgate.cloud.store.cassandra.session import KEYSPACE_PREFIX, CassandraSession, Migration
from fieldgate.cloud.store.edges import MAX_EDGES, EdgeRecord, EdgeReport, without_tenant

COMPONENT = "edges"
_BUCKET = 0


def _migrations(ks: str) -> list[Migration]:
    """Schema versions of the edge directory. Append, never edit."""
    return [
        (
            1,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.edges ("
                " bucket int, edge_id text, session text, version text, connected_ms bigint,"
                " last_seen_ms bigint, tenants set<text>, report text,"
                " PRIMARY KEY ((bucket), edge_id))"
            ],
        )
    ]


def _statements(ks: str) -> dict[str, str]:
    base = "UPDATE {ks}.edges SET session = ?, version = ?, connected_ms = ?, last_seen_ms = ?, tenants = tenants + ?"
    where = " WHERE bucket = ? AND edge_id = ?"
    return {
        "put": base.format(ks=ks) + where,
        "put_report": base.format(ks=ks) + ", report = ?" + where,
        "down": f"UPDATE {ks}.edges SET connected_ms = 0, last_seen_ms = ?"
        " WHERE bucket = ? AND edge_id = ? IF session = ?",
        "list": f"SELECT edge_id, session, version, connected_ms, last_seen_ms, tenants, report"
        f" FROM {ks}.edges WHERE bucket = ? LIMIT {MAX_EDGES}",
        "drop_tenant": f"UPDATE {ks}.edges SET tenants = tenants - ? WHERE bucket = ? AND edge_id = ?",
        "delete": f"DELETE FROM {ks}.edges WHERE bucket = ? AND edge_id = ?",
    }


class CassandraEdgeDirectory:
    """Implements :class:`fieldgate.cloud.store.edges.EdgeDirectory` (module docstring)."""

    def __init__(
        self,
        session: CassandraSession,
        *,
        keyspace_prefix: str = KEYSPACE_PREFIX,
        replication: int = 1,
        max_concurrency: int = 8,
    ) -> None:
        self._ks = PreparedKeyspaces(
            session,
            COMPONENT,
            what="cassandra edge directory",
            instance=(_migrations, _statements),
            keyspace_prefix=keyspace_prefix,
            replication=replication,
            max_concurrency=max_concurrency,
        )

    async def start(self) -> None:
        if not self._ks.started:
            await self._ks.start()

    async def stop(self) -> None:
        await self._ks.stop()

    async def _run(self, name: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return await self._ks.run(self._ks.instance(name), params)

    async def put(self, record: EdgeRecord) -> None:
        head = [record.session, record.version, record.connected_ms, record.last_seen_ms, set(record.tenants)]
        key = [_BUCKET, record.edge_id]
        if record.report is None:
            await self._run("put", [*head, *key])
        else:
            await self._run("put_report", [*head, record.report.to_json(), *key])

    async def disconnected(self, edge_id: str, session: str, last_seen_ms: int) -> None:
        await self._run("down", [last_seen_ms, _BUCKET, edge_id, session])

    async def list_edges(self) -> list[EdgeRecord]:
        rows = await self._run("list", [_BUCKET])
        return [
            EdgeRecord(
                edge_id=str(e),
                session=str(s or ""),
                version=str(v or ""),
                connected_ms=int(c or 0),
                last_seen_ms=int(ls or 0),
                tenants=frozenset(str(t) for t in (ts or ())),
                report=EdgeReport.from_json(r),
            )
            for e, s, v, c, ls, ts, r in rows
        ]

    # ------------------------------------------------------------------ tenants

    async def ensure_tenant(self, tenant: str) -> None:
        """Nothing to provision: ingest writes an edge's record when it sees the edge."""

    async def delete_tenant(self, tenant: str) -> bool:
        """Take ``tenant`` out of every edge's record; delete the records left with none (an
        ingest replica that still carries another tenant for that edge writes it again at its
        next heartbeat)."""
        changed = False
        for edge in await self.list_edges():
            if tenant not in edge.tenants:
                continue
            changed = True
            if without_tenant(edge.tenants, tenant) is None:
                await self._run("delete", [_BUCKET, edge.edge_id])
            else:
                await self._run("drop_tenant", [{tenant}, _BUCKET, edge.edge_id])
        return changed

    def forget_tenant(self, tenant: str) -> None:
        """Nothing cached per tenant."""
