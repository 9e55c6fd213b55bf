"""Cassandra registry: the row primitives of :class:`~fieldgate.cloud.store.registry.RegistryBase`,
so that cloud services on different machines share no files. Layout (docs/operations/cassandra.md):

* instance keyspace ``<prefix>__instance``, component ``registry``: ``tenants`` (token →
  creation seq, data) and ``invocation_tenants`` (the invocation store's list of tenants);
* each tenant's keyspace (the event store's), component ``registry``: ``device_types``,
  ``devices``, ``assignments``, ``customer_types``, ``customers`` (and the invocation store's
  tables, :mod:`fieldgate.cloud.store.cassandra.invocations`) keyed by token, the serialized
  protobuf in ``data`` beside the queried columns; for each a listing table with one partition
  per tenant clustered by a time-based ``seq`` (creation order; assignments newest first, also
  per device; customers also per parent), ``active_assignments`` (device → its one ACTIVE
  assignment) and ``active_by_customer``.

Races between replicas are settled by lightweight transactions (Paxos), never by a read then a
write: ``INSERT ... IF NOT EXISTS`` for every token (a second creator gets Conflict), for a
device's active-assignment slot (at most one ACTIVE assignment per device) and for a tenant's
record; ``UPDATE ... IF status = ?`` for an assignment's release.

References are counted: a device type, a customer type and a customer carry ``refs``, the
number of rows naming them (devices; customers; child customers). A new reference is counted
(compare-and-set, ``IF seq = ? AND refs = ?``) *before* the row naming it is stored — a failed
store gives it back — and such a row is deleted only ``IF refs = 0``: a delete racing a create
on another replica either sees the count (InUse, and the create succeeds) or the create finds
the row gone (NotFound, and the delete succeeds). An update or delete of a row that names
others is conditional on the names it read (``IF device_type = ?``), so each reference is given
back once. Rows stored before the counts existed have ``refs`` null: the first change counts
their referrers (the index or listing tables) and stores the number. A device is deleted while
holding its own active-assignment slot (a mark no assignment token looks like): an assignment
made at that moment either holds the slot (InUse) or finds the device gone after claiming it
and backs out.

A write is several statements (the keyed row by LWT first, then the listing rows). A process
that dies between them leaves the entity stored but missing from its listing (its token stays
taken); releasing an assignment again repairs a release cut short (the slot and the listing).
Totals are ``count(*)`` of the listing partition; a page reads ``offset + page_size`` rows of
it (Cassandra has no OFFSET), like the event store's day partitions.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.store._registry_cache import DEVICE_CACHE_S
from fieldgate.cloud.store.cassandra.keyspace import PreparedKeyspaces
from fieldgate.cloud.store.cassandra.session import KEYSPACE_PREFIX, CassandraSession, Migration
from fieldgate.cloud.store.registry import (
    ACTIVE,
    MESSAGES,
    RELEASED,
    Assigned,
    Deleted,
    Entity,
    Kind,
    Ref,
    RegistryBase,
    Replaced,
    Stored,
    Walk,
    drive_async,
    kind_of,
    parse,
    references,
)
from fieldgate.v1 import model_pb2 as model

log = logging.getLogger(__name__)

COMPONENT = "registry"
BUCKET = 0  # the one partition of a listing table (per tenant keyspace)
# The active-assignment slot of a device being deleted (no assignment token looks like it).
_DELETING = "-deleting-"
_CAS_ROUNDS = 50


def instance_migrations(ks: str) -> list[Migration]:
    """Schema versions of the registry's tables in the instance keyspace. Append, never edit."""
    return [
        (
            1,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.tenants (tok text PRIMARY KEY, seq timeuuid, data blob)",
                f"CREATE TABLE IF NOT EXISTS {ks}.invocation_tenants ("
                " bucket int, tenant text, PRIMARY KEY ((bucket), tenant))",
            ],
        )
    ]


def tenant_migrations(ks: str) -> list[Migration]:
    """Schema versions of the registry's (and invocation store's) tables in a tenant keyspace.
    Append, never edit."""

    def by_seq(table: str, desc: bool = False, partition: str = "bucket int") -> str:
        key = partition.split()[0]
        order = " WITH CLUSTERING ORDER BY (seq DESC)" if desc else ""
        return (
            f"CREATE TABLE IF NOT EXISTS {ks}.{table} ("
            f" {partition}, seq timeuuid, tok text, data blob, PRIMARY KEY (({key}), seq)){order}"
        )

    return [
        (
            1,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.device_types (tok text PRIMARY KEY, seq timeuuid, data blob)",
                by_seq("device_types_by_seq"),
                f"CREATE TABLE IF NOT EXISTS {ks}.devices ("
                " tok text PRIMARY KEY, seq timeuuid, device_type text, data blob)",
                by_seq("devices_by_seq"),
                f"CREATE TABLE IF NOT EXISTS {ks}.assignments ("
                " tok text PRIMARY KEY, seq timeuuid, device text, status int, data blob)",
                by_seq("assignments_by_seq", desc=True),
                by_seq("assignments_by_device", desc=True, partition="device text"),
                f"CREATE TABLE IF NOT EXISTS {ks}.active_assignments ("
                " device text PRIMARY KEY, tok text, data blob)",
                f"CREATE TABLE IF NOT EXISTS {ks}.invocations ("
                " id text PRIMARY KEY, seq timeuuid, device text, status int, expires_ms bigint, data blob)",
                f"CREATE TABLE IF NOT EXISTS {ks}.queued_invocations ("
                " bucket int, seq timeuuid, id text, expires_ms bigint, PRIMARY KEY ((bucket), seq))",
                f"CREATE TABLE IF NOT EXISTS {ks}.queued_invocations_by_device ("
                " device text, seq timeuuid, id text, PRIMARY KEY ((device), seq))",
            ],
        ),
        (
            2,
            [
                f"CREATE TABLE IF NOT EXISTS {ks}.customer_types (tok text PRIMARY KEY, seq timeuuid, data blob)",
                by_seq("customer_types_by_seq"),
                f"CREATE TABLE IF NOT EXISTS {ks}.customers ("
                " tok text PRIMARY KEY, seq timeuuid, customer_type text, parent text, data blob)",
                by_seq("customers_by_seq"),
                by_seq("customers_by_parent", partition="parent text"),
                f"CREATE TABLE IF NOT EXISTS {ks}.customers_by_type ("
                " customer_type text, tok text, PRIMARY KEY ((customer_type), tok))",
                f"CREATE TABLE IF NOT EXISTS {ks}.active_by_customer ("
                " customer text, device text, tok text, PRIMARY KEY ((customer), device))",
            ],
        ),
        (
            3,
            [
                # Which device has a type (the referrer a refused delete names); built for the
                # devices stored before too.
                f"CREATE INDEX IF NOT EXISTS devices_by_device_type ON {ks}.devices (device_type)",
                # Unused since version 4 (device types being deleted, before the counts).
                f"CREATE TABLE IF NOT EXISTS {ks}.device_type_deletions (tok text PRIMARY KEY, at bigint)",
            ],
        ),
        (
            4,
            [  # reference counts (module docstring); null on rows stored before
                f"ALTER TABLE {ks}.device_types ADD IF NOT EXISTS refs int",
                f"ALTER TABLE {ks}.customer_types ADD IF NOT EXISTS refs int",
                f"ALTER TABLE {ks}.customers ADD IF NOT EXISTS refs int",
            ],
        ),
    ]


class TimeSeq:
    """Time-based uuids (``timeuuid``) that strictly increase within this process: the
    creation order of the listing tables. A random node id per instance keeps two processes'
    values apart; the standard library's pure-Python uuid1 path (taken when node and clock_seq
    are given) never repeats or goes back in time within a process."""

    def __init__(self) -> None:
        self._node = secrets.randbits(48) | (1 << 40)  # multicast bit: not a real MAC (RFC 4122)
        self._clock_seq = secrets.randbits(14)

    def next(self) -> uuid.UUID:
        return uuid.uuid1(node=self._node, clock_seq=self._clock_seq)


@dataclass(frozen=True, slots=True)
class _Table:
    """How a kind's rows are kept: the keyed table, its reference columns (beside ``data``) and,
    for a referenced kind, where its referrers are found (one of them; their number)."""

    name: str
    cols: tuple[str, ...] = ()
    referrer: tuple[Kind, str, str] | None = None


_TABLES: dict[Kind, _Table] = {
    "device_type": _Table(
        "device_types",
        referrer=(
            "device",
            "SELECT tok FROM {ks}.devices WHERE device_type = ? LIMIT 1",
            "SELECT count(*) FROM {ks}.devices WHERE device_type = ?",
        ),
    ),
    "device": _Table("devices", ("device_type",)),
    "customer_type": _Table(
        "customer_types",
        referrer=(
            "customer",
            "SELECT tok FROM {ks}.customers_by_type WHERE customer_type = ? LIMIT 1",
            "SELECT count(*) FROM {ks}.customers_by_type WHERE customer_type = ?",
        ),
    ),
    "customer": _Table(
        "customers",
        ("customer_type", "parent"),
        referrer=(
            "customer",
            "SELECT tok FROM {ks}.customers_by_parent WHERE parent = ? LIMIT 1",
            "SELECT count(*) FROM {ks}.customers_by_parent WHERE parent = ?",
        ),
    ),
}
#: Listing tables of a kind, with the column (or constant) that is their partition key.
_LISTINGS: dict[Kind, str] = {
    "device_type": "device_types_by_seq",
    "device": "devices_by_seq",
    "customer_type": "customer_types_by_seq",
    "customer": "customers_by_seq",
    "assignment": "assignments_by_seq",
}


def parent_key(parent: str | None) -> str:
    """The ``customers_by_parent`` partition of a customer: its parent, or ``-`` for top-level
    customers (a partition key cannot be empty; no token starts with ``-``)."""
    return parent or "-"


def _cols(entity: Entity) -> tuple[str, ...]:
    return tuple(str(getattr(entity, c)) for c in _TABLES[kind_of(entity)].cols)


def _listing_statements(ks: str, table: str, key: str = "bucket") -> dict[str, str]:
    return {
        f"ins_{table}": f"INSERT INTO {ks}.{table} ({key}, seq, tok, data) VALUES (?, ?, ?, ?)",
        f"del_{table}": f"DELETE FROM {ks}.{table} WHERE {key} = ? AND seq = ?",
        f"count_{table}": f"SELECT count(*) FROM {ks}.{table} WHERE {key} = ?",
        f"page_{table}": f"SELECT data FROM {ks}.{table} WHERE {key} = ? LIMIT ?",
    }


def _row_statements(ks: str, kind: Kind, t: _Table) -> dict[str, str]:
    cols = ", ".join(t.cols)
    sets = "".join(f"{c} = ?, " for c in t.cols)
    same = "".join(f" AND {c} = ?" for c in t.cols)
    counted = t.referrer is not None
    names = ", ".join(("tok", "seq", *t.cols, "data", *(("refs",) if counted else ())))
    marks = ", ".join(["?"] * (3 + len(t.cols)) + (["0"] if counted else []))
    out = {
        f"ins_{kind}": f"INSERT INTO {ks}.{t.name} ({names}) VALUES ({marks}) IF NOT EXISTS",
        f"sel_{kind}": f"SELECT seq, {cols + ', ' if cols else ''}data FROM {ks}.{t.name} WHERE tok = ?",
        f"upd_{kind}": f"UPDATE {ks}.{t.name} SET {sets}data = ? WHERE tok = ? IF seq = ?{same}",
        f"del_{kind}": f"DELETE FROM {ks}.{t.name} WHERE tok = ? IF seq = ?{same}{' AND refs = 0' if counted else ''}",
    }
    if t.referrer is not None:
        out |= {
            f"refs_{kind}": f"SELECT seq, refs FROM {ks}.{t.name} WHERE tok = ?",
            f"set_refs_{kind}": f"UPDATE {ks}.{t.name} SET refs = ? WHERE tok = ? IF seq = ? AND refs = ?",
            f"referrer_{kind}": t.referrer[1].format(ks=ks),
            f"referrers_{kind}": t.referrer[2].format(ks=ks),
        }
    return out


def _instance_statements(ks: str) -> dict[str, str]:
    return {
        "ins_tenant": f"INSERT INTO {ks}.tenants (tok, seq, data) VALUES (?, ?, ?) IF NOT EXISTS",
        "upd_tenant": f"UPDATE {ks}.tenants SET data = ? WHERE tok = ?",
        "upd_tenant_if": f"UPDATE {ks}.tenants SET data = ? WHERE tok = ? IF EXISTS",
        "sel_tenant": f"SELECT data FROM {ks}.tenants WHERE tok = ?",
        "all_tenants": f"SELECT seq, data FROM {ks}.tenants",
        "del_tenant": f"DELETE FROM {ks}.tenants WHERE tok = ?",
    }


def _tenant_statements(ks: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind, spec in _TABLES.items():
        out |= _row_statements(ks, kind, spec)
    for listing in _LISTINGS.values():
        out |= _listing_statements(ks, listing)
    return out | {
        **_listing_statements(ks, "customers_by_parent", "parent"),
        **_listing_statements(ks, "assignments_by_device", "device"),
        "ins_customers_by_type": f"INSERT INTO {ks}.customers_by_type (customer_type, tok) VALUES (?, ?)",
        "del_customers_by_type": f"DELETE FROM {ks}.customers_by_type WHERE customer_type = ? AND tok = ?",
        "ins_assignment": f"INSERT INTO {ks}.assignments (tok, seq, device, status, data)"
        " VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
        "sel_assignment": f"SELECT seq, data FROM {ks}.assignments WHERE tok = ?",
        "del_assignment": f"DELETE FROM {ks}.assignments WHERE tok = ?",
        "release_assignment": f"UPDATE {ks}.assignments SET status = ?, data = ? WHERE tok = ? IF status = ?",
        "claim_active": f"INSERT INTO {ks}.active_assignments (device, tok, data) VALUES (?, ?, ?) IF NOT EXISTS",
        "free_active": f"DELETE FROM {ks}.active_assignments WHERE device = ? IF tok = ?",
        "sel_active": f"SELECT tok, data FROM {ks}.active_assignments WHERE device = ?",
        "ins_active_customer": f"INSERT INTO {ks}.active_by_customer (customer, device, tok) VALUES (?, ?, ?)",
        "free_active_customer": f"DELETE FROM {ks}.active_by_customer WHERE customer = ? AND device = ? IF tok = ?",
        "any_active_customer": f"SELECT tok FROM {ks}.active_by_customer WHERE customer = ? LIMIT 1",
        "count_active_customer": f"SELECT count(*) FROM {ks}.active_by_customer WHERE customer = ?",
        "page_active_customer": f"SELECT device FROM {ks}.active_by_customer WHERE customer = ? LIMIT ?",
    }


def keyspaces(
    session: CassandraSession,
    what: str,
    *,
    statements: tuple[Callable[[str], dict[str, str]], Callable[[str], dict[str, str]]],
    keyspace_prefix: str,
    replication: int,
    max_concurrency: int,
) -> PreparedKeyspaces:
    """The registry component's keyspaces (its tables are the registry's and the invocation
    store's) with a store's ``statements`` (of the instance keyspace, of a tenant's)."""
    return PreparedKeyspaces(
        session,
        COMPONENT,
        what=what,
        instance=(instance_migrations, statements[0]),
        tenant=(tenant_migrations, statements[1]),
        keyspace_prefix=keyspace_prefix,
        replication=replication,
        max_concurrency=max_concurrency,
    )


class CassandraRegistry(RegistryBase):
    """Implements :class:`fieldgate.cloud.store.registry.Registry` on Cassandra (module docstring)."""

    def __init__(
        self,
        session: CassandraSession,
        *,
        keyspace_prefix: str = KEYSPACE_PREFIX,
        replication: int = 1,
        max_concurrency: int = 32,
        device_cache_size: int = 100_000,
        assignment_cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        device_cache_s: float = DEVICE_CACHE_S,
    ) -> None:
        super().__init__(
            device_cache_size=device_cache_size,
            assignment_cache_s=assignment_cache_s,
            clock=clock,
            device_cache_s=device_cache_s,
        )
        self._ks = keyspaces(
            session,
            "cassandra registry",
            statements=(_instance_statements, _tenant_statements),
            keyspace_prefix=keyspace_prefix,
            replication=replication,
            max_concurrency=max_concurrency,
        )
        self._seq = TimeSeq()

    async def start(self) -> None:
        await self._ks.start()

    async def stop(self) -> None:
        await self._ks.stop()

    # --- tenants -------------------------------------------------------------------------------

    async def _tenant_read(self, token: str) -> model.Tenant | None:
        rows = await self._ks.run(self._ks.instance("sel_tenant"), (token,))
        return parse(model.Tenant, rows[0][0]) if rows else None

    async def _tenant_all(self) -> list[model.Tenant]:
        rows = await self._ks.run(self._ks.instance("all_tenants"))  # small: one row per tenant
        rows.sort(key=lambda r: (r[0].time, r[0].bytes))
        return [parse(model.Tenant, data) for _, data in rows]

    async def _tenant_insert(self, tenant: model.Tenant) -> bool:
        params = (tenant.token, self._seq.next(), tenant.SerializeToString())
        applied, _ = await self._ks.applied(self._ks.instance("ins_tenant"), params)
        return applied

    async def _tenant_put(self, tenant: model.Tenant) -> None:
        if not await self._tenant_insert(tenant):  # the first creator's seq (list order) stays
            await self._ks.run(self._ks.instance("upd_tenant"), (tenant.SerializeToString(), tenant.token))

    async def _tenant_replace(self, tenant: model.Tenant) -> bool:
        params = (tenant.SerializeToString(), tenant.token)
        applied, _ = await self._ks.applied(self._ks.instance("upd_tenant_if"), params)
        return applied

    async def _tenant_delete(self, token: str) -> bool:
        existed = await self._tenant_read(token) is not None
        await self._ks.run(self._ks.instance("del_tenant"), (token,))
        return existed

    async def _storage_create(self, tenant: str, *, fresh: bool) -> None:
        if fresh and await self._ks.drop(tenant):
            log.warning("tenant %s: dropped the keyspace an earlier tenant of that token left", tenant)
        await self._ks.tenant(tenant, create=True)

    async def _storage_drop(self, tenant: str) -> bool:
        """``DROP KEYSPACE`` of the tenant: registry, invocations and events."""
        return await self._ks.drop(tenant)

    def _storage_forget(self, tenant: str) -> None:
        self._ks.forget(tenant)

    # --- reference counts ----------------------------------------------------------------------

    async def _count(self, ctx: dict[str, Any], ref: Ref, delta: int) -> bool:
        """Add ``delta`` to ``ref``'s count by compare-and-set (0: only make a null count, of a
        row stored before the counts, a number). False if the row does not exist."""
        for _ in range(_CAS_ROUNDS):
            rows = await self._ks.run(ctx[f"refs_{ref.kind}"], (ref.token,))
            if not rows:
                return False
            seq, current = rows[0]
            if current is None:  # count what names it now (a new referrer is stored after this)
                ((n,),) = await self._ks.run(ctx[f"referrers_{ref.kind}"], (ref.token,))
                new = int(n) + max(delta, 0)
            elif delta == 0:
                return True
            else:
                new = max(int(current) + delta, 0)
            applied, _ = await self._ks.applied(ctx[f"set_refs_{ref.kind}"], (new, ref.token, seq, current))
            if applied:
                return True
        raise StoreError(f"registry: reference count of {ref} contended, try again")

    async def _take(self, ctx: dict[str, Any], refs: Sequence[Ref]) -> Ref | None:
        """Count a reference on each of ``refs``; the first that does not exist (then none)."""
        taken: list[Ref] = []
        for ref in refs:
            if not await self._count(ctx, ref, 1):
                await self._give(ctx, taken)
                return ref
            taken.append(ref)
        return None

    async def _give(self, ctx: dict[str, Any], refs: Sequence[Ref]) -> None:
        for ref in refs:
            await self._count(ctx, ref, -1)

    async def _settle(self, ctx: dict[str, Any], refs: Sequence[Ref]) -> None:
        """Make the counts of ``refs`` numbers before a row naming them goes (see :meth:`_count`)."""
        for ref in refs:
            await self._count(ctx, ref, 0)

    # --- rows ----------------------------------------------------------------------------------

    async def _get(self, tenant: str, kind: Kind, token: str) -> bytes | None:
        ctx = await self._ks.tenant(tenant, create=False)
        if ctx is None:
            return None
        rows = await self._ks.run(ctx["sel_assignment" if kind == "assignment" else f"sel_{kind}"], (token,))
        return bytes(rows[0][-1]) if rows else None

    async def _page(
        self, tenant: str, kind: Kind, limit: int, offset: int, of: str | None = None
    ) -> tuple[list[bytes], int]:
        ctx = await self._ks.tenant(tenant, create=False)
        if ctx is None:
            return [], 0
        key: int | str = BUCKET
        table = _LISTINGS[kind]
        if of is not None:
            table, key = (
                ("customers_by_parent", parent_key(of))
                if kind == "customer"
                else ("assignments_by_device", of)
            )
        counted, rows = await self._ks.session.gather(
            [
                self._ks.run(ctx[f"count_{table}"], (key,)),
                self._ks.run(ctx[f"page_{table}"], (key, offset + limit)),
            ]
        )
        total = int(counted[0][0]) if counted else 0
        return [bytes(r[0]) for r in rows[offset:]], total

    async def _list_rows(self, ctx: dict[str, Any], entity: Entity, seq: Any, old: Entity | None) -> None:
        """Write the listing rows of ``entity`` (stored with ``seq``), moving a customer's from
        what ``old`` named."""
        kind, data, run = kind_of(entity), entity.SerializeToString(), self._ks.run
        writes = [run(ctx[f"ins_{_LISTINGS[kind]}"], (BUCKET, seq, entity.token, data))]
        if isinstance(entity, model.Customer):
            writes.append(
                run(ctx["ins_customers_by_parent"], (parent_key(entity.parent), seq, entity.token, data))
            )
            if not isinstance(old, model.Customer) or old.customer_type != entity.customer_type:
                writes.append(run(ctx["ins_customers_by_type"], (entity.customer_type, entity.token)))
            if isinstance(old, model.Customer) and old.parent != entity.parent:
                writes.append(run(ctx["del_customers_by_parent"], (parent_key(old.parent), seq)))
            if isinstance(old, model.Customer) and old.customer_type != entity.customer_type:
                writes.append(run(ctx["del_customers_by_type"], (old.customer_type, entity.token)))
        await self._ks.session.gather(writes)

    async def _unlist_rows(self, ctx: dict[str, Any], old: Entity, seq: Any) -> None:
        run = self._ks.run
        writes = [run(ctx[f"del_{_LISTINGS[kind_of(old)]}"], (BUCKET, seq))]
        if isinstance(old, model.Customer):
            writes.append(run(ctx["del_customers_by_parent"], (parent_key(old.parent), seq)))
            writes.append(run(ctx["del_customers_by_type"], (old.customer_type, old.token)))
        await self._ks.session.gather(writes)

    async def _read(self, ctx: dict[str, Any], kind: Kind, token: str) -> tuple[Any, Entity] | None:
        """The row's seq and entity."""
        rows = await self._ks.run(ctx[f"sel_{kind}"], (token,))
        if not rows:
            return None
        entity: Entity = MESSAGES[kind]()
        entity.ParseFromString(rows[0][-1])
        return rows[0][0], entity

    async def _insert(self, tenant: str, entity: Entity, refs: Sequence[Ref]) -> Stored:
        ctx = await self._ks.tenant(tenant, create=True)
        assert ctx is not None
        missing = await self._take(ctx, refs)
        if missing is not None:
            return missing
        kind, seq = kind_of(entity), self._seq.next()
        params = (entity.token, seq, *_cols(entity), entity.SerializeToString())
        applied, _ = await self._ks.applied(ctx[f"ins_{kind}"], params)
        if not applied:
            await self._give(ctx, refs)
            return "taken"
        await self._list_rows(ctx, entity, seq, None)
        return "stored"

    async def _replace(self, tenant: str, entity: Entity, refs: Sequence[Ref], walk: Walk | None) -> Replaced:
        ctx = await self._ks.tenant(tenant, create=False)
        kind = kind_of(entity)
        for _ in range(_CAS_ROUNDS):
            found = None if ctx is None else await self._read(ctx, kind, entity.token)
            if ctx is None or found is None:
                return "missing"
            seq, old = found
            old_refs = references(old)
            added = [r for r in refs if r not in old_refs]
            dropped = [r for r in old_refs if r not in refs]
            await self._settle(ctx, dropped)
            missing = await self._take(ctx, added)
            if missing is not None:
                return missing
            try:
                if walk is not None:
                    await drive_async(walk, lambda token: self._parent_of(ctx, token))
                    walk = None
            except BaseException:
                await self._give(ctx, added)
                raise
            params = (*_cols(entity), entity.SerializeToString(), entity.token, seq, *_cols(old))
            applied, _ = await self._ks.applied(ctx[f"upd_{kind}"], params)
            if applied:
                await self._give(ctx, dropped)
                await self._list_rows(ctx, entity, seq, old)
                return "stored"
            await self._give(ctx, added)  # changed (or deleted) meanwhile: read again
        raise StoreError(f"registry: {kind} {entity.token!r} contended, try again")

    async def _parent_of(self, ctx: dict[str, Any], token: str) -> str | None:
        found = await self._read(ctx, "customer", token)
        return found[1].parent if found is not None and isinstance(found[1], model.Customer) else None

    async def _delete(self, tenant: str, kind: Kind, token: str) -> Deleted:
        ctx = await self._ks.tenant(tenant, create=False)
        if ctx is None or await self._read(ctx, kind, token) is None:
            return "missing"
        if kind != "device":
            return await self._delete_row(ctx, kind, token)
        claimed, _ = await self._ks.applied(ctx["claim_active"], (token, _DELETING, b""))
        if not claimed:
            rows = await self._ks.run(ctx["sel_active"], (token,))
            holder = str(rows[0][0]) if rows else ""
            return Ref("assignment", holder) if holder and holder != _DELETING else "busy"
        try:
            return await self._delete_row(ctx, kind, token)
        finally:
            await self._ks.run(ctx["free_active"], (token, _DELETING))

    async def _delete_row(self, ctx: dict[str, Any], kind: Kind, token: str) -> Deleted:
        counted = _TABLES[kind].referrer is not None
        for _ in range(_CAS_ROUNDS):
            found = await self._read(ctx, kind, token)
            if found is None:
                return "missing"
            seq, old = found
            if kind == "customer":  # a child first (the count says it), then active assignments
                child = await self._ks.run(ctx["referrer_customer"], (token,))
                if child:
                    return Ref("customer", str(child[0][0]))
                active = await self._ks.run(ctx["any_active_customer"], (token,))
                if active:
                    return Ref("assignment", str(active[0][0]))
            if counted:
                await self._settle(ctx, [Ref(kind, token)])
            await self._settle(ctx, references(old))
            applied, _ = await self._ks.applied(ctx[f"del_{kind}"], (token, seq, *_cols(old)))
            if applied:
                await self._unlist_rows(ctx, old, seq)
                await self._give(ctx, references(old))
                return "deleted"
            if counted:
                refs = await self._ks.run(ctx[f"refs_{kind}"], (token,))
                if refs and refs[0][0] == seq and refs[0][1]:
                    referrer = _TABLES[kind].referrer
                    assert referrer is not None
                    one = await self._ks.run(ctx[f"referrer_{kind}"], (token,))
                    return Ref(referrer[0], str(one[0][0]) if one else "")
        raise StoreError(f"registry: {kind} {token!r} contended, try again")

    # --- assignments ---------------------------------------------------------------------------

    async def _assign(self, assignment: model.Assignment) -> Assigned:
        a, run = assignment, self._ks.run
        ctx = await self._ks.tenant(a.tenant, create=True)
        assert ctx is not None
        if not await run(ctx["sel_device"], (a.device,)):
            return Ref("device", a.device)
        data, seq = a.SerializeToString(), self._seq.next()
        applied, _ = await self._ks.applied(
            ctx["ins_assignment"], (a.token, seq, a.device, int(ACTIVE), data)
        )
        if not applied:
            return "taken"
        claimed, _ = await self._ks.applied(ctx["claim_active"], (a.device, a.token, data))
        if not claimed:  # the token is ours (we just won it): give it back, the device's slot is not
            await run(ctx["del_assignment"], (a.token,))
            return "busy"
        if not await run(ctx["sel_device"], (a.device,)):  # deleted meanwhile: back out
            await run(ctx["free_active"], (a.device, a.token))
            await run(ctx["del_assignment"], (a.token,))
            return Ref("device", a.device)
        writes = [
            run(ctx["ins_assignments_by_seq"], (BUCKET, seq, a.token, data)),
            run(ctx["ins_assignments_by_device"], (a.device, seq, a.token, data)),
        ]
        if a.customer:
            writes.append(run(ctx["ins_active_customer"], (a.customer, a.device, a.token)))
        await self._ks.session.gather(writes)
        return "stored"

    async def _active(self, tenant: str, device: str) -> bytes | None:
        ctx = await self._ks.tenant(tenant, create=False)
        rows = [] if ctx is None else await self._ks.run(ctx["sel_active"], (device,))
        return bytes(rows[0][1]) if rows and rows[0][1] else None  # b"": being deleted

    async def _release(self, tenant: str, released: model.Assignment) -> model.Assignment | None:
        """The status moves by compare-and-set (``IF status = ACTIVE``); then the device's slot
        is freed (``IF tok = ?``: a newer assignment's slot is never touched) and the listing
        rows are rewritten — also when it was released already (repairs a release cut short)."""
        ctx = await self._ks.tenant(tenant, create=False)
        rows = [] if ctx is None else await self._ks.run(ctx["sel_assignment"], (released.token,))
        if ctx is None or not rows:
            return None
        seq, data = rows[0]
        token, run = released.token, self._ks.run
        if parse(model.Assignment, data).status != RELEASED:
            params = (int(RELEASED), released.SerializeToString(), token, int(ACTIVE))
            won, _ = await self._ks.applied(ctx["release_assignment"], params)
            again = [] if won else await run(ctx["sel_assignment"], (token,))
            if not won and not again:
                return None
            data = released.SerializeToString() if won else again[0][1]
        a = parse(model.Assignment, data)
        await run(ctx["free_active"], (a.device, token))
        await self._ks.session.gather(
            [
                run(ctx["ins_assignments_by_seq"], (BUCKET, seq, token, data)),
                run(ctx["ins_assignments_by_device"], (a.device, seq, token, data)),
            ]
        )
        if a.customer:
            await run(ctx["free_active_customer"], (a.customer, a.device, token))
        return a

    async def _customer_devices(
        self, tenant: str, customer: str, limit: int, offset: int
    ) -> tuple[list[bytes], int]:
        ctx = await self._ks.tenant(tenant, create=False)
        if ctx is None:
            return [], 0
        counted, rows = await self._ks.session.gather(
            [
                self._ks.run(ctx["count_active_customer"], (customer,)),
                self._ks.run(ctx["page_active_customer"], (customer, offset + limit)),
            ]
        )
        found = await self._ks.session.gather(self._ks.run(ctx["sel_device"], (r[0],)) for r in rows[offset:])
        return [bytes(f[0][-1]) for f in found if f], int(counted[0][0]) if counted else 0
