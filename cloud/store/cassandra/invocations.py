"""Cassandra invocation store: the row primitives of
:class:`~fieldgate.cloud.store.invocations.InvocationStoreBase` in the registry component's
tables (:mod:`fieldgate.cloud.store.cassandra.registry` owns their schema):

* instance keyspace: ``invocation_tenants`` (the tenants that ever stored an invocation, for
  :meth:`~fieldgate.cloud.store.invocations.InvocationStoreBase.expire_due` over every tenant);
* each tenant's keyspace: ``invocations`` keyed by id (the serialized protobuf in ``data``
  beside status and expiry), and ``queued_invocations`` / ``queued_invocations_by_device``
  (what is still QUEUED, oldest first by a time-based ``seq``).

An invocation is created by ``INSERT ... IF NOT EXISTS`` (a second creator gets Conflict, and
re-writes the queue entries of the invocation if it is QUEUED: the first creator may have died
before writing them) and moved only by ``UPDATE ... IF status = <read>``; a move out of QUEUED then removes the queue
entries. The ``invocations`` row is the source of truth: an entry that outlived its move (a
process died in between) is skipped by the reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fieldgate.cloud.store.cassandra.registry import BUCKET, TimeSeq, keyspaces
from fieldgate.cloud.store.cassandra.session import KEYSPACE_PREFIX, CassandraSession
from fieldgate.cloud.store.invocations import QUEUED, InvocationStoreBase, Row
from fieldgate.cloud.store.validators import require_tenant, valid_tenant
from fieldgate.v1 import services_pb2 as svc

#: The invocation store's tables among the registry's (what its ``delete_tenant`` empties).
TABLES = ("invocations", "queued_invocations", "queued_invocations_by_device")


def _statements(ks: str) -> dict[str, str]:
    return {
        "ins": f"INSERT INTO {ks}.invocations (id, seq, device, status, expires_ms, data)"
        " VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
        "sel": f"SELECT seq, status, data FROM {ks}.invocations WHERE id = ?",
        "cas": f"UPDATE {ks}.invocations SET status = ?, data = ? WHERE id = ? IF status = ?",
        "ins_queued": f"INSERT INTO {ks}.queued_invocations (bucket, seq, id, expires_ms) VALUES (?, ?, ?, ?)",
        "ins_queued_device": f"INSERT INTO {ks}.queued_invocations_by_device (device, seq, id) VALUES (?, ?, ?)",
        "del_queued": f"DELETE FROM {ks}.queued_invocations WHERE bucket = ? AND seq = ?",
        "del_queued_device": f"DELETE FROM {ks}.queued_invocations_by_device WHERE device = ? AND seq = ?",
        "queued": f"SELECT id, expires_ms FROM {ks}.queued_invocations WHERE bucket = ?",
        "queued_device": f"SELECT id FROM {ks}.queued_invocations_by_device WHERE device = ?",
    }


def _instance_statements(ks: str) -> dict[str, str]:
    return {
        "ins_tenant": f"INSERT INTO {ks}.invocation_tenants (bucket, tenant) VALUES (?, ?)",
        "del_tenant": f"DELETE FROM {ks}.invocation_tenants WHERE bucket = ? AND tenant = ?",
        "all_tenants": f"SELECT tenant FROM {ks}.invocation_tenants WHERE bucket = ?",
    }


class CassandraInvocationStore(InvocationStoreBase):
    """Implements :class:`fieldgate.cloud.store.invocations.InvocationStore` on Cassandra
    (module docstring)."""

    def __init__(
        self,
        session: CassandraSession,
        *,
        keyspace_prefix: str = KEYSPACE_PREFIX,
        replication: int = 1,
        max_concurrency: int = 32,
    ) -> None:
        self._ks = keyspaces(
            session,
            "cassandra invocation store",
            statements=(_instance_statements, _statements),
            keyspace_prefix=keyspace_prefix,
            replication=replication,
            max_concurrency=max_concurrency,
        )
        self._seq = TimeSeq()
        self._listed: set[str] = set()  # tenants known to be in invocation_tenants

    async def start(self) -> None:
        await self._ks.start()

    async def stop(self) -> None:
        await self._ks.stop()

    # --- tenant lifecycle ----------------------------------------------------------------------

    async def ensure_tenant(self, tenant: str) -> None:
        """Create the tenant's keyspace with the invocation (registry) tables now."""
        require_tenant(tenant)
        await self._ks.tenant(tenant, create=True)

    async def delete_tenant(self, tenant: str) -> bool:
        """Forget the tenant in ``invocation_tenants`` and empty the invocation tables of its
        keyspace; False if they were empty. The keyspace is the registry's to drop."""
        self.forget_tenant(tenant)
        if not valid_tenant(tenant):
            return False
        await self._ks.run(self._ks.instance("del_tenant"), (BUCKET, tenant))
        return await self._ks.empty(tenant, TABLES)

    def forget_tenant(self, tenant: str) -> None:
        self._ks.forget(tenant)
        self._listed.discard(tenant)

    # --- primitives ----------------------------------------------------------------------------

    async def _ctx(self, tenant: str) -> dict[str, Any] | None:
        return await self._ks.tenant(tenant, create=False)

    async def _insert(self, inv: svc.InvocationState) -> bool:
        ctx = await self._ks.tenant(inv.tenant, create=True)
        assert ctx is not None
        if inv.tenant not in self._listed:
            await self._ks.run(self._ks.instance("ins_tenant"), (BUCKET, inv.tenant))
            self._listed.add(inv.tenant)
        seq = self._seq.next()
        params = (inv.id, seq, inv.device, int(inv.status), inv.expires_ms, inv.SerializeToString())
        applied, _ = await self._ks.applied(ctx["ins"], params)
        if not applied:
            await self._requeue_if_queued(ctx, inv.id)
        elif inv.status == QUEUED:
            await self._enqueue(ctx, seq, inv)
        return applied

    async def _enqueue(self, ctx: dict[str, Any], seq: Any, inv: svc.InvocationState) -> None:
        await self._ks.session.gather(
            [
                self._ks.run(ctx["ins_queued"], (BUCKET, seq, inv.id, inv.expires_ms)),
                self._ks.run(ctx["ins_queued_device"], (inv.device, seq, inv.id)),
            ]
        )

    async def _requeue_if_queued(self, ctx: dict[str, Any], invocation_id: str) -> None:
        """A create of an existing id: if that invocation is QUEUED, write its queue entries
        again (same seq, so idempotent). A process that died between storing an invocation and
        queueing it left it out of ``list_pending``; the retried create (a batch runner
        resuming, an alternate id sent again) repairs it."""
        row = await self._row(ctx, invocation_id)
        if row is not None and row.state.status == QUEUED:
            await self._enqueue(ctx, row.key, row.state)

    async def _read(self, tenant: str, invocation_id: str) -> Row | None:
        ctx = await self._ctx(tenant)
        return None if ctx is None else await self._row(ctx, invocation_id)

    async def _row(self, ctx: dict[str, Any], invocation_id: str) -> Row | None:
        rows = await self._ks.run(ctx["sel"], (invocation_id,))
        if not rows:
            return None
        inv = svc.InvocationState()
        inv.ParseFromString(rows[0][2])
        return Row(inv, rows[0][0])

    async def _set_if(self, tenant: str, moves: Sequence[tuple[Row, svc.InvocationState]]) -> list[bool]:
        ctx = await self._ctx(tenant)
        if ctx is None:
            return [False] * len(moves)
        return list(await asyncio.gather(*(self._move(ctx, row, new) for row, new in moves)))

    async def _move(self, ctx: dict[str, Any], row: Row, new: svc.InvocationState) -> bool:
        params = (int(new.status), new.SerializeToString(), new.id, int(row.state.status))
        applied, _ = await self._ks.applied(ctx["cas"], params)
        if applied and row.state.status == QUEUED:
            await self._ks.session.gather(
                [
                    self._ks.run(ctx["del_queued"], (BUCKET, row.key)),
                    self._ks.run(ctx["del_queued_device"], (new.device, row.key)),
                ]
            )
        return applied

    async def _queued(self, tenant: str, device: str | None) -> list[Row]:
        ctx = await self._ctx(tenant)
        if ctx is None:
            return []
        if device is None:
            ids = [str(r[0]) for r in await self._ks.run(ctx["queued"], (BUCKET,))]
        else:
            ids = [str(r[0]) for r in await self._ks.run(ctx["queued_device"], (device,))]
        return await self._still_queued(ctx, ids)

    async def _due(self, tenant: str, now: int) -> list[Row]:
        ctx = await self._ctx(tenant)
        if ctx is None:
            return []
        rows = await self._ks.run(ctx["queued"], (BUCKET,))
        return await self._still_queued(
            ctx, [str(i) for i, expires in rows if expires and 0 < expires <= now]
        )

    async def _still_queued(self, ctx: dict[str, Any], ids: list[str]) -> list[Row]:
        """The invocations of queue entries (oldest first) that are QUEUED in ``invocations``."""
        found = await asyncio.gather(*(self._row(ctx, i) for i in ids))
        return [r for r in found if r is not None and r.state.status == QUEUED]

    async def _tenants(self) -> list[str]:
        return [str(r[0]) for r in await self._ks.run(self._ks.instance("all_tenants"), (BUCKET,))]
