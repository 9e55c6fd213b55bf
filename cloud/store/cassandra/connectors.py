"""The Cassandra connector store: component ``connectors`` of each tenant's keyspace (the
protocol and what both backends share in :mod:`fieldgate.cloud.store.connectors`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.errors import Conflict, NotFound
from fieldgate.cloud.store.cassandra.keyspace import TenantKeyspaceStore
from fieldgate.cloud.store.connectors import (
    MAX_DEAD_LETTERS,
    DeadLetter,
    check_limit,
    letter_from_row,
    start_rows,
)


def _migrations(ks: str) -> list[tuple[int, list[str]]]:
    return [
        (
            1,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.connectors (id text PRIMARY KEY, spec text, updated_ms bigint)",
                f"CREATE TABLE IF NOT EXISTS {ks}.connector_dead_letters ("
                " connector text, event_id text, event blob, reason text, attempts int, failed_ms bigint,"
                " redrive boolean, PRIMARY KEY ((connector), event_id))",
            ],
        ),
        (
            2,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.connector_positions ("
                " owner text, bus_partition int, next_offset bigint, PRIMARY KEY ((owner), bus_partition))",
            ],
        ),
    ]


class CassandraConnectorStore(TenantKeyspaceStore):
    """:class:`ConnectorStore` in each tenant's keyspace (see the module docstring)."""

    component = "connectors"
    migrations = staticmethod(_migrations)

    async def list_connectors(self, tenant: str) -> list[ConnectorSpec]:
        rows = await self._run(tenant, "SELECT spec FROM {ks}.connectors LIMIT 10000")
        return sorted((ConnectorSpec.from_json(r[0]) for r in rows), key=lambda s: s.id)

    async def get(self, tenant: str, connector: str) -> ConnectorSpec | None:
        rows = await self._run(tenant, "SELECT spec FROM {ks}.connectors WHERE id = %s", (connector,))
        return ConnectorSpec.from_json(rows[0][0]) if rows else None

    async def create(
        self, tenant: str, spec: ConnectorSpec, start: Mapping[int, int] | None = None
    ) -> ConnectorSpec:
        # The start goes in first: the stage must never see the connector without it. Two
        # tables cannot share one lightweight transaction; a create that loses the race for
        # the id to another one of the same moment rewrites that one's start with its own
        # (the same point, give or take the milliseconds between them).
        if await self.get(tenant, spec.id) is not None:
            raise Conflict(f"connector {spec.id!r} exists")
        await self._run(tenant, "DELETE FROM {ks}.connector_positions WHERE owner = %s", (spec.id,))
        if start is not None:
            await self._put_positions(tenant, start_rows(spec.id, start))
        rows = await self._run(
            tenant,
            "INSERT INTO {ks}.connectors (id, spec, updated_ms) VALUES (%s, %s, %s) IF NOT EXISTS",
            (spec.id, spec.to_json(), spec.updated_ms),
        )
        if not rows or not rows[0][0]:
            raise Conflict(f"connector {spec.id!r} exists")
        return spec

    async def _put_positions(self, tenant: str, rows: Sequence[tuple[str, int, int]]) -> None:
        await asyncio.gather(
            *(
                self._run(
                    tenant,
                    "INSERT INTO {ks}.connector_positions (owner, bus_partition, next_offset) VALUES (%s, %s, %s)",
                    row,
                )
                for row in rows
            )
        )

    async def positions(self, tenant: str) -> dict[str, dict[int, int]]:
        rows = await self._run(
            tenant, "SELECT owner, bus_partition, next_offset FROM {ks}.connector_positions LIMIT 1000000"
        )
        out: dict[str, dict[int, int]] = {}
        for owner, partition, offset in rows:
            out.setdefault(str(owner), {})[int(partition)] = int(offset)
        return out

    async def save_positions(self, tenant: str, owner: str, positions: Mapping[int, int]) -> None:
        await self._put_positions(tenant, [(owner, int(p), int(o)) for p, o in positions.items()])

    async def replace(self, tenant: str, spec: ConnectorSpec) -> ConnectorSpec:
        rows = await self._run(
            tenant,
            "UPDATE {ks}.connectors SET spec = %s, updated_ms = %s WHERE id = %s IF EXISTS",
            (spec.to_json(), spec.updated_ms, spec.id),
        )
        if not rows or not rows[0][0]:
            raise NotFound(f"no connector {spec.id!r}")
        return spec

    async def delete(self, tenant: str, connector: str) -> bool:
        rows = await self._run(tenant, "DELETE FROM {ks}.connectors WHERE id = %s IF EXISTS", (connector,))
        await self._run(tenant, "DELETE FROM {ks}.connector_dead_letters WHERE connector = %s", (connector,))
        await self._run(tenant, "DELETE FROM {ks}.connector_positions WHERE owner = %s", (connector,))
        return bool(rows and rows[0][0])

    async def add_dead_letters(self, tenant: str, letters: Sequence[DeadLetter]) -> None:
        await asyncio.gather(
            *(
                self._run(
                    tenant,
                    "INSERT INTO {ks}.connector_dead_letters"
                    " (connector, event_id, event, reason, attempts, failed_ms, redrive)"
                    " VALUES (%s, %s, %s, %s, %s, %s, false)",
                    (d.connector, d.event_id, d.event, d.reason, d.attempts, d.failed_ms),
                )
                for d in letters
            )
        )

    async def _letters(self, tenant: str, connector: str) -> list[DeadLetter]:
        rows = await self._run(
            tenant,
            "SELECT connector, event_id, event, reason, attempts, failed_ms, redrive"
            " FROM {ks}.connector_dead_letters WHERE connector = %s LIMIT %s",
            (connector, MAX_DEAD_LETTERS),
        )
        return sorted((letter_from_row(r) for r in rows), key=lambda d: (d.failed_ms, d.event_id))

    async def list_dead_letters(self, tenant: str, connector: str, limit: int = 100) -> list[DeadLetter]:
        return (await self._letters(tenant, connector))[: check_limit(limit)]

    async def count_dead_letters(self, tenant: str, connector: str) -> int:
        rows = await self._run(
            tenant, "SELECT COUNT(*) FROM {ks}.connector_dead_letters WHERE connector = %s", (connector,)
        )
        return int(rows[0][0]) if rows else 0

    async def request_redrive(
        self, tenant: str, connector: str, event_ids: Sequence[str] | None = None
    ) -> int:
        letters = await self._letters(tenant, connector)
        wanted = None if event_ids is None else set(event_ids)
        chosen = [d.event_id for d in letters if wanted is None or d.event_id in wanted]
        # IF EXISTS: a letter removed meanwhile (delivered by a re-drive) is not re-created.
        results = await asyncio.gather(
            *(
                self._run(
                    tenant,
                    "UPDATE {ks}.connector_dead_letters SET redrive = true WHERE connector = %s"
                    " AND event_id = %s IF EXISTS",
                    (connector, eid),
                )
                for eid in chosen
            )
        )
        return sum(1 for rows in results if rows and rows[0][0])

    async def redrive_batch(self, tenant: str, connector: str, limit: int) -> list[DeadLetter]:
        return [d for d in await self._letters(tenant, connector) if d.redrive][: check_limit(limit)]

    async def remove_dead_letters(self, tenant: str, connector: str, event_ids: Sequence[str]) -> None:
        await asyncio.gather(
            *(
                self._run(
                    tenant,
                    "DELETE FROM {ks}.connector_dead_letters WHERE connector = %s AND event_id = %s",
                    (connector, eid),
                )
                for eid in event_ids
            )
        )
