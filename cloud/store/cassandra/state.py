"""Cassandra device state store: component ``state`` of each tenant's keyspace.

Tables (docs/operations/cassandra.md conventions: a listing partition per tenant keyspace):

* ``device_state`` — device → the state as JSON (:class:`~fieldgate.cloud.store.state.DeviceState`);
* ``device_presence`` — partition per presence value (``present``/``missing``), clustered by
  device token: the presence listing and its counts. A device moves between the partitions
  only when its presence changes (a delete and an insert), not on every event;
* ``state_rules`` — one partition of rule rows (id → JSON).

:meth:`CassandraStateStore.apply` (the rules in :class:`~fieldgate.cloud.store.state.StateStoreBase`)
reads, merges (:func:`fieldgate.cloud.store.state.merge`) and writes. That is not atomic across processes: it relies on one writer per device, which
the pipeline gives — a device's events are keyed by its token, so one replica of the ``state``
stage owns its partition (presence changes found by another replica's clock check are sent
through the pipeline to the owner, not written here). The merge keeps even a stale writer
from moving any field back in time.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Mapping, Sequence
from typing import Any

from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.store.cassandra.keyspace import PreparedKeyspaces
from fieldgate.cloud.store.cassandra.session import (
    KEYSPACE_PREFIX,
    CassandraSession,
    Migration,
)
from fieldgate.cloud.store.state import MISSING, PRESENT, Change, DeviceState, Presence, StateStoreBase
from fieldgate.cloud.store.validators import valid_tenant

COMPONENT = "state"
_BUCKET = 0
_TABLES = ("device_state", "device_presence", "state_rules")


def _migrations(ks: str) -> list[Migration]:
    """Schema versions of the state tables in a tenant keyspace. Append, never edit."""
    return [
        (
            1,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.device_state (device text PRIMARY KEY, data text)",
                f"CREATE TABLE IF NOT EXISTS {ks}.device_presence ("
                " presence text, device text, PRIMARY KEY ((presence), device))",
                f"CREATE TABLE IF NOT EXISTS {ks}.state_rules ("
                " bucket int, id text, data text, PRIMARY KEY ((bucket), id))",
            ],
        )
    ]


def _statements(ks: str) -> dict[str, str]:
    return {
        "get": f"SELECT data FROM {ks}.device_state WHERE device = ?",
        "put": f"INSERT INTO {ks}.device_state (device, data) VALUES (?, ?)",
        "del": f"DELETE FROM {ks}.device_state WHERE device = ?",
        "pres_add": f"INSERT INTO {ks}.device_presence (presence, device) VALUES (?, ?)",
        "pres_del": f"DELETE FROM {ks}.device_presence WHERE presence = ? AND device = ?",
        "pres_count": f"SELECT count(*) FROM {ks}.device_presence WHERE presence = ?",
        "pres_page": f"SELECT device FROM {ks}.device_presence WHERE presence = ? LIMIT ?",
        "rules": f"SELECT id, data FROM {ks}.state_rules WHERE bucket = ?",
        "rule_put": f"INSERT INTO {ks}.state_rules (bucket, id, data) VALUES (?, ?, ?)",
        "rule_get": f"SELECT id FROM {ks}.state_rules WHERE bucket = ? AND id = ?",
        "rule_del": f"DELETE FROM {ks}.state_rules WHERE bucket = ? AND id = ?",
    }


class CassandraStateStore(StateStoreBase):
    """Implements :class:`fieldgate.cloud.store.state.DeviceStateStore` (module docstring)."""

    def __init__(
        self,
        session: CassandraSession,
        *,
        keyspace_prefix: str = KEYSPACE_PREFIX,
        replication: int = 1,
        max_concurrency: int = 32,
    ) -> None:
        self._ks = PreparedKeyspaces(
            session,
            COMPONENT,
            what="cassandra state store",
            tenant=(_migrations, _statements),
            keyspace_prefix=keyspace_prefix,
            replication=replication,
            max_concurrency=max_concurrency,
        )

    async def start(self) -> None:
        if not self._ks.started:
            await self._ks.start()

    async def stop(self) -> None:
        await self._ks.stop()

    async def _open(self, tenant: str, *, create: bool) -> dict[str, Any] | None:
        if create and not valid_tenant(tenant):
            raise StoreError(f"invalid tenant token {tenant!r}")
        return await self._ks.tenant(tenant, create=create)

    async def _run(self, statement: Any, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        return await self._ks.run(statement, params)

    # ------------------------------------------------------------------ tenants

    async def ensure_tenant(self, tenant: str) -> None:
        """Create the state tables in the tenant's keyspace now."""
        await self._open(tenant, create=True)

    async def delete_tenant(self, tenant: str) -> bool:
        """Empty the state tables (device states, presence, rules and presence intervals) of
        the tenant's keyspace; False without a keyspace (the registry drops the keyspace)."""
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return False
        ks = self._ks.keyspace(tenant)
        for table in _TABLES:
            await self._run(f"TRUNCATE {ks}.{table}")
        return True

    def forget_tenant(self, tenant: str) -> None:
        """Forget the tenant's prepared statements (its keyspace was dropped)."""
        self._ks.forget(tenant)

    # ------------------------------------------------------------------ states

    async def _read(self, ctx: dict[str, Any], devices: Sequence[str]) -> dict[str, DeviceState]:
        rows = await asyncio.gather(*(self._run(ctx["get"], (d,)) for d in devices))
        return {d: DeviceState.from_json(r[0][0]) for d, r in zip(devices, rows, strict=True) if r}

    async def _read_states(self, tenant: str, devices: Sequence[str]) -> dict[str, DeviceState]:
        ctx = await self._open(tenant, create=False)
        return {} if ctx is None else await self._read(ctx, devices)

    async def _update_states(
        self, tenant: str, devices: Sequence[str], change: Change
    ) -> dict[str, DeviceState]:
        ctx = await self._open(tenant, create=True)
        assert ctx is not None
        stored = await self._read(ctx, devices)
        changed = change(stored)

        async def write(m: DeviceState) -> None:
            before = stored.get(m.device)
            await self._run(ctx["put"], (m.device, m.to_json()))
            if before is None or before.presence != m.presence:
                await self._run(ctx["pres_add"], (m.presence, m.device))
                other = MISSING if m.presence == PRESENT else PRESENT
                await self._run(ctx["pres_del"], (other, m.device))

        await asyncio.gather(*(write(m) for m in changed.values()))
        return changed

    async def _states_page(
        self, tenant: str, presence: Presence | None, limit: int, offset: int
    ) -> tuple[list[DeviceState], int] | None:
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return None
        wanted: tuple[Presence, ...] = (presence,) if presence else (PRESENT, MISSING)
        counts = await asyncio.gather(*(self._run(ctx["pres_count"], (p,)) for p in wanted))
        total = sum(int(c[0][0]) for c in counts)
        lists = await asyncio.gather(*(self._run(ctx["pres_page"], (p, offset + limit)) for p in wanted))
        tokens = list(heapq.merge(*([str(r[0]) for r in rows] for rows in lists)))[offset : offset + limit]
        found = await self._read(ctx, list(dict.fromkeys(tokens)))
        return [found[t] for t in tokens if t in found], total

    async def delete_state(self, tenant: str, device: str) -> bool:
        ctx = await self._open(tenant, create=False)
        if ctx is None or not await self._run(ctx["get"], (device,)):
            return False
        await self._run(ctx["del"], (device,))
        await asyncio.gather(*(self._run(ctx["pres_del"], (p, device)) for p in (PRESENT, MISSING)))
        return True

    # ------------------------------------------------------------------ rules

    async def get_rules(self, tenant: str) -> dict[str, str]:
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return {}
        return {str(i): str(d) for i, d in await self._run(ctx["rules"], (_BUCKET,))}

    async def put_rule(self, tenant: str, rule_id: str, document: str) -> None:
        ctx = await self._open(tenant, create=True)
        assert ctx is not None
        await self._run(ctx["rule_put"], (_BUCKET, rule_id, document))

    async def delete_rule(self, tenant: str, rule_id: str) -> bool:
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return False
        existed = bool(await self._run(ctx["rule_get"], (_BUCKET, rule_id)))
        if existed:
            await self._run(ctx["rule_del"], (_BUCKET, rule_id))
        return existed

    async def replace_rules(self, tenant: str, documents: Mapping[str, str]) -> None:
        ctx = await self._open(tenant, create=True)
        assert ctx is not None
        have = await self.get_rules(tenant)
        await asyncio.gather(
            *(self._run(ctx["rule_del"], (_BUCKET, i)) for i in have if i not in documents),
            *(self._run(ctx["rule_put"], (_BUCKET, i, d)) for i, d in documents.items() if have.get(i) != d),
        )
