"""Cassandra registry (tenants, device types, devices, assignments) and invocation store.

The distributed implementations of :class:`fieldgate.cloud.store.registry.Registry` and
:class:`fieldgate.cloud.store.invocations.InvocationStore`, with exactly the rules of the SQLite ones
(:mod:`fieldgate.cloud.store.sqlite.registry`), so that cloud services on different machines
share no files. Layout (docs/operations/cassandra.md):

* instance keyspace ``<prefix>__instance`` (:func:`~fieldgate.cloud.store.cassandra.session.instance_keyspace`),
  component ``registry``: ``tenants`` (token → creation seq, data) and ``invocation_tenants``
  (the tenants that ever stored an invocation, for :meth:`CassandraInvocationStore.expire_due`
  over every tenant);
* each tenant's keyspace (the event store's, :func:`keyspace_name`), component ``registry``:
  ``device_types``, ``devices``, ``assignments`` and ``invocations`` keyed by token/id (the
  serialized protobuf in ``data`` beside the queried columns), and for each a listing table
  with one partition per tenant clustered by a time-based ``seq`` (creation order; assignments
  newest first, also per device), ``active_assignments`` (device → its one ACTIVE assignment)
  and ``queued_invocations`` / ``queued_invocations_by_device`` (what is still QUEUED, oldest
  first).

Races between replicas are settled by lightweight transactions (Paxos), never by a read then a
write: ``INSERT ... IF NOT EXISTS`` for every token (a second creator gets Conflict), for a
device's active-assignment slot (at most one ACTIVE assignment per device), for a tenant's
record; ``UPDATE ... IF status = ?`` for an assignment's release and for every invocation status
move (the loser re-reads and applies :func:`next_status` to what won), so two replicas
moving, answering or expiring the same invocation change it once, and an answer racing the
edge's timeout ends answered or late, never lost.

Device types and devices can be changed and deleted. A device type is deleted only while no
device has it (``devices_by_device_type``, an index), a device only while it has no active
assignment; each delete first takes a mark by LWT (``device_type_deletions``; the device's
``active_assignments`` slot) that a concurrent create checks after writing, and backs out on.

A write is several statements (the keyed row by LWT first, then the listing rows). A process
that dies between them leaves the entity stored but missing from its listing (its token stays
taken); releasing an assignment again repairs a release cut short (the slot and the listing).
Totals are ``count(*)`` of the listing partition; a page reads ``offset + page_size`` rows of
it (Cassandra has no OFFSET), like the event store's day partitions.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message as ProtoMessage

from fieldgate.cloud.errors import Conflict, Cycle, InUse, InvalidRequest, NotFound, StoreError
from fieldgate.cloud.store import Page
from fieldgate.cloud.store._registry_cache import DEVICE_CACHE_S, RegistryCache
from fieldgate.cloud.store.cassandra.session import (
    KEYSPACE_PREFIX,
    CassandraSession,
    Migration,
    instance_keyspace,
    keyspace_name,
)
from fieldgate.cloud.store.sqlite.registry import apply_status, check_requested, next_status
from fieldgate.cloud.store.validators import check_page, require_tenant, valid_tenant
from fieldgate.timeutil import now_ms
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc

log = logging.getLogger(__name__)

__all__ = ["CassandraInvocationStore", "CassandraRegistry", "next_status"]

M = TypeVar("M", bound=ProtoMessage)

COMPONENT = "registry"
_BUCKET = 0  # the one partition of a listing table (per tenant keyspace)
_ACTIVE = model.ASSIGNMENT_STATUS_ACTIVE
_RELEASED = model.ASSIGNMENT_STATUS_RELEASED
_QUEUED = svc.COMMAND_STATUS_QUEUED
_EXPIRED = svc.COMMAND_STATUS_EXPIRED
_KNOWN = frozenset(
    {
        _QUEUED,
        svc.COMMAND_STATUS_DELIVERED,
        svc.COMMAND_STATUS_ANSWERED,
        svc.COMMAND_STATUS_FAILED,
        _EXPIRED,
        svc.COMMAND_STATUS_LATE,
    }
)
# The active-assignment slot of a device being deleted (no assignment token looks like it).
_DELETING = "-deleting-"
# Compare-and-set rounds of one status update before giving up (each lost round means another
# writer moved the invocation forward, and there are only four forward moves).
_CAS_ROUNDS = 8


def _instance_migrations(ks: str) -> list[Migration]:
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


def _tenant_migrations(ks: str) -> list[Migration]:
    """Schema versions of the registry's tables in a tenant keyspace. Append, never edit."""

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
                # Which device has a type (a device type in use is not deleted); built for the
                # devices stored before too.
                f"CREATE INDEX IF NOT EXISTS devices_by_device_type ON {ks}.devices (device_type)",
                # Device types being deleted: a device created with one meanwhile backs out.
                f"CREATE TABLE IF NOT EXISTS {ks}.device_type_deletions (tok text PRIMARY KEY, at bigint)",
            ],
        ),
    ]


SCHEMA_VERSION = 3
#: The invocation store's tables among the registry's (what its ``delete_tenant`` empties).
_INVOCATION_TABLES = ("invocations", "queued_invocations", "queued_invocations_by_device")


def _parse(cls: type[M], data: bytes) -> M:
    msg = cls()
    msg.ParseFromString(data)
    return msg


def _copy(msg: M) -> M:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


class _Sequence:
    """Time-based uuids (``timeuuid``) that strictly increase within this process: the
    creation order of the listing tables. A random node id per instance keeps two processes'
    values apart; the standard library's pure-Python uuid1 path (taken when node and clock_seq
    are given) never repeats or goes back in time within a process."""

    def __init__(self) -> None:
        self._node = secrets.randbits(48) | (1 << 40)  # multicast bit: not a real MAC (RFC 4122)
        self._clock_seq = secrets.randbits(14)

    def next(self) -> uuid.UUID:
        return uuid.uuid1(node=self._node, clock_seq=self._clock_seq)


def _parent_key(parent: str | None) -> str:
    """The ``customers_by_parent`` partition of a customer: its parent, or ``-`` for top-level
    customers (a partition key cannot be empty; no token starts with ``-``)."""
    return parent or "-"


def _applied(rows: Sequence[tuple[Any, ...]]) -> bool:
    """Whether a lightweight transaction took effect (its first column is ``[applied]``)."""
    return bool(rows and rows[0][0])


class _CassandraStore:
    """What the registry and the invocation store share: the session, the instance keyspace's
    ``registry`` tables, and per-tenant prepared statements (opened on first use)."""

    _what = "cassandra registry"

    def __init__(
        self,
        session: CassandraSession,
        *,
        keyspace_prefix: str = KEYSPACE_PREFIX,
        replication: int = 1,
        max_concurrency: int = 32,
    ) -> None:
        self._db = session
        self._prefix = keyspace_prefix
        self._instance = instance_keyspace(keyspace_prefix)
        self._replication = replication
        self._sem = asyncio.Semaphore(max_concurrency)
        self._started = False
        self._inst: dict[str, Any] = {}
        self._tenants: dict[str, dict[str, Any]] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        await self._db.start()
        self._started = True
        try:
            ks = self._instance
            await self._db.migrate(ks, COMPONENT, _instance_migrations(ks), replication=self._replication)
            self._inst = await self._db.prepare(self._instance_statements(ks), ks)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._tenants.clear()
        await self._db.stop()

    def _instance_statements(self, ks: str) -> dict[str, str]:
        return {}

    def forget_tenant(self, tenant: str) -> None:
        """Forget the tenant's prepared statements (its keyspace was dropped)."""
        self._tenants.pop(tenant, None)

    async def ensure_tenant_keyspace(self, tenant: str) -> None:
        """Create the tenant's keyspace with this component's tables now."""
        require_tenant(tenant)
        await self._open(tenant, create=True)

    async def _drop_keyspace(self, tenant: str) -> bool:
        """``DROP KEYSPACE`` of the tenant (events, registry, invocations); False if absent."""
        if not valid_tenant(tenant):
            return False
        ks = keyspace_name(tenant, self._prefix)
        existed = await self._db.keyspace_exists(ks)
        if existed:
            await self._run(f"DROP KEYSPACE IF EXISTS {ks}")
        self.forget_tenant(tenant)
        return existed

    def _instance_stmt(self, name: str) -> Any:
        if not self._started:
            raise StoreError(f"{self._what} is not started")
        return self._inst[name]

    def _tenant_statements(self, ks: str) -> dict[str, str]:
        raise NotImplementedError

    async def _run(self, statement: Any, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        if not self._started:
            raise StoreError(f"{self._what} is not started")
        return await self._db.execute(statement, params, limit=self._sem)

    async def _open(self, tenant: str, *, create: bool) -> dict[str, Any] | None:
        """The tenant keyspace's prepared statements; None when it does not exist and ``create``
        is false (reads create nothing). Migrates the registry tables on first use."""
        ctx = self._tenants.get(tenant)
        if ctx is not None:
            return ctx
        if not valid_tenant(tenant):
            return None
        ks = keyspace_name(tenant, self._prefix)
        async with self._opening.setdefault(tenant, asyncio.Lock()):
            ctx = self._tenants.get(tenant)
            if ctx is not None:
                return ctx
            if not self._started:
                raise StoreError(f"{self._what} is not started")
            if not create and not await self._db.keyspace_exists(ks):
                return None
            await self._db.migrate(ks, COMPONENT, _tenant_migrations(ks), replication=self._replication)
            ctx = await self._db.prepare(self._tenant_statements(ks), ks)
            self._tenants[tenant] = ctx
            return ctx


def _by_seq_statements(ks: str, table: str, key: str = "bucket") -> dict[str, str]:
    return {
        f"ins_{table}": f"INSERT INTO {ks}.{table} ({key}, seq, tok, data) VALUES (?, ?, ?, ?)",
        f"count_{table}": f"SELECT count(*) FROM {ks}.{table} WHERE {key} = ?",
        f"page_{table}": f"SELECT data FROM {ks}.{table} WHERE {key} = ? LIMIT ?",
    }


class CassandraRegistry(_CassandraStore):
    """Implements :class:`fieldgate.cloud.store.registry.Registry` on Cassandra (see the module docstring).

    :meth:`get_device` is on the hot path of inbound processing: as in the SQLite registry,
    found devices are kept in a bounded in-memory cache for ``device_cache_s`` (another
    replica's change or deletion is seen within that time), misses always ask Cassandra
    (another replica may have created the device), and active assignments are cached for
    ``assignment_cache_s``; this instance's own writes drop both at once.
    """

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
            session, keyspace_prefix=keyspace_prefix, replication=replication, max_concurrency=max_concurrency
        )
        self._seq = _Sequence()
        self._known_tenants: set[str] = set()
        self._cache = RegistryCache(device_cache_size, assignment_cache_s, clock, device_cache_s)

    def _instance_statements(self, ks: str) -> dict[str, str]:
        return {
            "ins_tenant": f"INSERT INTO {ks}.tenants (tok, seq, data) VALUES (?, ?, ?) IF NOT EXISTS",
            "upd_tenant": f"UPDATE {ks}.tenants SET data = ? WHERE tok = ?",
            "sel_tenant": f"SELECT data FROM {ks}.tenants WHERE tok = ?",
            "all_tenants": f"SELECT seq, data FROM {ks}.tenants",
            "upd_tenant_if": f"UPDATE {ks}.tenants SET data = ? WHERE tok = ? IF EXISTS",
            "del_tenant": f"DELETE FROM {ks}.tenants WHERE tok = ?",
        }

    def _tenant_statements(self, ks: str) -> dict[str, str]:
        return {
            "ins_device_types": f"INSERT INTO {ks}.device_types (tok, seq, data) VALUES (?, ?, ?) IF NOT EXISTS",
            "sel_device_types": f"SELECT data FROM {ks}.device_types WHERE tok = ?",
            **_by_seq_statements(ks, "device_types_by_seq"),
            "ins_devices": f"INSERT INTO {ks}.devices (tok, seq, device_type, data) VALUES (?, ?, ?, ?)"
            " IF NOT EXISTS",
            "sel_devices": f"SELECT data FROM {ks}.devices WHERE tok = ?",
            **_by_seq_statements(ks, "devices_by_seq"),
            "sel_device_types_seq": f"SELECT seq, data FROM {ks}.device_types WHERE tok = ?",
            "upd_device_types": f"UPDATE {ks}.device_types SET data = ? WHERE tok = ? IF EXISTS",
            "del_device_types": f"DELETE FROM {ks}.device_types WHERE tok = ?",
            "del_device_types_by_seq": f"DELETE FROM {ks}.device_types_by_seq WHERE bucket = ? AND seq = ?",
            "mark_type_deletion": f"INSERT INTO {ks}.device_type_deletions (tok, at) VALUES (?, ?) IF NOT EXISTS",
            "unmark_type_deletion": f"DELETE FROM {ks}.device_type_deletions WHERE tok = ?",
            "sel_type_deletion": f"SELECT at FROM {ks}.device_type_deletions WHERE tok = ?",
            "any_device_of_type": f"SELECT tok FROM {ks}.devices WHERE device_type = ? LIMIT 1",
            "sel_devices_seq": f"SELECT seq, data FROM {ks}.devices WHERE tok = ?",
            "upd_devices": f"UPDATE {ks}.devices SET device_type = ?, data = ? WHERE tok = ? IF EXISTS",
            "del_devices": f"DELETE FROM {ks}.devices WHERE tok = ? IF EXISTS",
            "del_devices_by_seq": f"DELETE FROM {ks}.devices_by_seq WHERE bucket = ? AND seq = ?",
            "ins_assignment": f"INSERT INTO {ks}.assignments (tok, seq, device, status, data)"
            " VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
            "del_assignment": f"DELETE FROM {ks}.assignments WHERE tok = ?",
            "sel_assignment": f"SELECT seq, data FROM {ks}.assignments WHERE tok = ?",
            "release_assignment": f"UPDATE {ks}.assignments SET status = ?, data = ? WHERE tok = ?"
            " IF status = ?",
            **_by_seq_statements(ks, "assignments_by_seq"),
            **_by_seq_statements(ks, "assignments_by_device", "device"),
            "claim_active": f"INSERT INTO {ks}.active_assignments (device, tok, data) VALUES (?, ?, ?)"
            " IF NOT EXISTS",
            "free_active": f"DELETE FROM {ks}.active_assignments WHERE device = ? IF tok = ?",
            "sel_active": f"SELECT data FROM {ks}.active_assignments WHERE device = ?",
            "ins_active_customer": f"INSERT INTO {ks}.active_by_customer (customer, device, tok) VALUES (?, ?, ?)",
            "free_active_customer": f"DELETE FROM {ks}.active_by_customer WHERE customer = ? AND device = ?"
            " IF tok = ?",
            "any_active_customer": f"SELECT tok, device FROM {ks}.active_by_customer WHERE customer = ? LIMIT 1",
            "count_active_customer": f"SELECT count(*) FROM {ks}.active_by_customer WHERE customer = ?",
            "page_active_customer": f"SELECT device FROM {ks}.active_by_customer WHERE customer = ? LIMIT ?",
            # customer types
            "ins_customer_types": f"INSERT INTO {ks}.customer_types (tok, seq, data) VALUES (?, ?, ?)"
            " IF NOT EXISTS",
            "sel_customer_types": f"SELECT seq, data FROM {ks}.customer_types WHERE tok = ?",
            "upd_customer_types": f"UPDATE {ks}.customer_types SET data = ? WHERE tok = ? IF EXISTS",
            "del_customer_types": f"DELETE FROM {ks}.customer_types WHERE tok = ?",
            **_by_seq_statements(ks, "customer_types_by_seq"),
            "del_customer_types_by_seq": f"DELETE FROM {ks}.customer_types_by_seq WHERE bucket = ? AND seq = ?",
            # customers
            "ins_customers": f"INSERT INTO {ks}.customers (tok, seq, customer_type, parent, data)"
            " VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
            "sel_customers": f"SELECT seq, customer_type, parent, data FROM {ks}.customers WHERE tok = ?",
            "upd_customers": f"UPDATE {ks}.customers SET customer_type = ?, parent = ?, data = ? WHERE tok = ?"
            " IF EXISTS",
            "del_customers": f"DELETE FROM {ks}.customers WHERE tok = ?",
            **_by_seq_statements(ks, "customers_by_seq"),
            "del_customers_by_seq": f"DELETE FROM {ks}.customers_by_seq WHERE bucket = ? AND seq = ?",
            **_by_seq_statements(ks, "customers_by_parent", "parent"),
            "del_customers_by_parent": f"DELETE FROM {ks}.customers_by_parent WHERE parent = ? AND seq = ?",
            "any_child": f"SELECT tok FROM {ks}.customers_by_parent WHERE parent = ? LIMIT 1",
            "ins_customers_by_type": f"INSERT INTO {ks}.customers_by_type (customer_type, tok) VALUES (?, ?)",
            "del_customers_by_type": f"DELETE FROM {ks}.customers_by_type WHERE customer_type = ? AND tok = ?",
            "any_of_type": f"SELECT tok FROM {ks}.customers_by_type WHERE customer_type = ? LIMIT 1",
        }

    # ------------------------------------------------------------------ tenants

    async def _tenant_exists(self, tenant: str) -> bool:
        if tenant in self._known_tenants:
            return True
        rows = await self._run(self._instance_stmt("sel_tenant"), (tenant,))
        if rows:
            self._known_tenants.add(tenant)
        return bool(rows)

    async def _writable(self, tenant: str) -> dict[str, Any]:
        """The tenant's statements for a write; NotFound for an unknown tenant."""
        if not valid_tenant(tenant) or not await self._tenant_exists(tenant):
            raise NotFound(f"tenant {tenant!r} does not exist")
        ctx = await self._open(tenant, create=True)
        assert ctx is not None
        return ctx

    async def ensure_tenant(self, tenant: model.Tenant) -> model.Tenant:
        """Create ``tenant`` or update its settings to the given ones (configuration is the
        source of truth); returns what is stored. The first creator's ``seq`` (list order) wins."""
        require_tenant(tenant.token)
        stored = _copy(tenant)
        if not stored.created_ms:
            current = await self.get_tenant(stored.token)
            stored.created_ms = current.created_ms if current is not None and current.created_ms else now_ms()
        data = stored.SerializeToString()
        rows = await self._run(self._instance_stmt("ins_tenant"), (stored.token, self._seq.next(), data))
        if not _applied(rows):
            await self._run(self._instance_stmt("upd_tenant"), (data, stored.token))
        await self._open(stored.token, create=True)
        self._known_tenants.add(stored.token)
        return stored

    async def create_tenant(self, tenant: model.Tenant) -> model.Tenant:
        """Create ``tenant`` (``INSERT ... IF NOT EXISTS``: of two creators one wins, the other
        gets Conflict) and its keyspace with the registry tables."""
        require_tenant(tenant.token)
        stored = _copy(tenant)
        if not stored.created_ms:
            stored.created_ms = now_ms()
        data = stored.SerializeToString()
        rows = await self._run(self._instance_stmt("ins_tenant"), (stored.token, self._seq.next(), data))
        if not _applied(rows):
            raise Conflict(f"tenant {stored.token!r} already exists")
        # The token was free: a keyspace of that name is what an earlier tenant of the token
        # left (a write in flight during its deletion). The new tenant starts empty.
        if await self._drop_keyspace(stored.token):
            log.warning("tenant %s: dropped the keyspace an earlier tenant of that token left", stored.token)
        await self._open(stored.token, create=True)
        self._known_tenants.add(stored.token)
        return stored

    async def update_tenant(self, tenant: model.Tenant) -> model.Tenant:
        """Replace an existing tenant's record (``UPDATE ... IF EXISTS``; ``created_ms`` kept)."""
        current = await self.get_tenant(tenant.token)
        if current is None:
            raise NotFound(f"tenant {tenant.token[:70]!r} does not exist")
        stored = _copy(tenant)
        stored.created_ms = current.created_ms
        rows = await self._run(
            self._instance_stmt("upd_tenant_if"), (stored.SerializeToString(), stored.token)
        )
        if not _applied(rows):
            raise NotFound(f"tenant {tenant.token!r} does not exist")
        return stored

    async def delete_tenant(self, token: str) -> bool:
        """Delete the tenant's record, then ``DROP KEYSPACE`` of its keyspace (registry,
        invocations and events). False if neither existed."""
        if not valid_tenant(token):
            return False
        existed = await self.get_tenant(token) is not None
        await self._run(self._instance_stmt("del_tenant"), (token,))
        self.forget_tenant(token)
        dropped = await self._drop_keyspace(token)
        return existed or dropped

    def forget_tenant(self, tenant: str) -> None:
        """Forget what this instance caches of ``tenant`` (statements, found devices, active
        assignments): another process (or this one) deleted it."""
        super().forget_tenant(tenant)
        self._known_tenants.discard(tenant)
        self._cache.forget_tenant(tenant)

    async def get_tenant(self, token: str) -> model.Tenant | None:
        if not valid_tenant(token):
            return None
        rows = await self._run(self._instance_stmt("sel_tenant"), (token,))
        return _parse(model.Tenant, rows[0][0]) if rows else None

    async def list_tenants(self) -> list[model.Tenant]:
        """Every tenant in creation order (the table is small: one row per tenant)."""
        rows = await self._run(self._instance_stmt("all_tenants"))
        rows.sort(key=lambda r: (r[0].time, r[0].bytes))
        return [_parse(model.Tenant, data) for _, data in rows]

    # ------------------------------------------------------------------ shared

    async def _get_data(self, tenant: str, stmt: str, key: str) -> bytes | None:
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return None
        rows = await self._run(ctx[stmt], (key,))
        return bytes(rows[0][-1]) if rows else None

    async def _create(self, ctx: dict[str, Any], table: str, params: tuple[Any, ...]) -> bool:
        """The keyed row by LWT, then (when it won) the listing row. False: the token is taken."""
        token, data = params[0], params[-1]
        seq = self._seq.next()
        if not _applied(await self._run(ctx[f"ins_{table}"], (token, seq, *params[1:]))):
            return False
        await self._run(ctx[f"ins_{table}_by_seq"], (_BUCKET, seq, token, data))
        return True

    async def _page(
        self, ctx: dict[str, Any] | None, table: str, key: Any, cls: type[M], page: int, page_size: int
    ) -> Page[M]:
        limit, offset = check_page(page, page_size)
        if ctx is None:
            return Page([], 0, page, page_size)
        counted, rows = await self._db.gather(
            [self._run(ctx[f"count_{table}"], (key,)), self._run(ctx[f"page_{table}"], (key, offset + limit))]
        )
        total = int(counted[0][0]) if counted else 0
        return Page([_parse(cls, r[0]) for r in rows[offset:]], total, page, page_size)

    # ------------------------------------------------------------------ device types

    async def create_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType:
        if not dt.token:
            raise InvalidRequest("device type token must not be empty")
        stored = _copy(dt)
        ctx = await self._writable(tenant)
        if not await self._create(ctx, "device_types", (stored.token, stored.SerializeToString())):
            raise Conflict(f"device type {stored.token!r} already exists in tenant {tenant!r}")
        return stored

    async def get_device_type(self, tenant: str, token: str) -> model.DeviceType | None:
        data = await self._get_data(tenant, "sel_device_types", token)
        return None if data is None else _parse(model.DeviceType, data)

    async def list_device_types(self, tenant: str, page: int, page_size: int) -> Page[model.DeviceType]:
        check_page(page, page_size)
        ctx = await self._open(tenant, create=False)
        return await self._page(ctx, "device_types_by_seq", _BUCKET, model.DeviceType, page, page_size)

    async def update_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType:
        ctx = await self._open(tenant, create=False)
        rows = [] if ctx is None else await self._run(ctx["sel_device_types_seq"], (dt.token,))
        if ctx is None or not rows:
            raise NotFound(f"device type {dt.token!r} does not exist in tenant {tenant!r}")
        stored = _copy(dt)
        data = stored.SerializeToString()
        if not _applied(await self._run(ctx["upd_device_types"], (data, stored.token))):
            raise NotFound(f"device type {dt.token!r} does not exist in tenant {tenant!r}")
        await self._run(ctx["ins_device_types_by_seq"], (_BUCKET, rows[0][0], stored.token, data))
        return stored

    async def delete_device_type(self, tenant: str, token: str) -> None:
        """NotFound if absent; InUse while a device has the type.

        The type is first marked as being deleted (``device_type_deletions``, by LWT), then the
        devices are looked up: a device created (or moved to the type) concurrently either is
        found here, or finds the mark after storing itself and backs out (:meth:`_type_gone`),
        so a device never keeps a deleted type."""
        ctx = await self._open(tenant, create=False)
        rows = [] if ctx is None else await self._run(ctx["sel_device_types_seq"], (token,))
        if ctx is None or not rows:
            raise NotFound(f"device type {token!r} does not exist in tenant {tenant!r}")
        if not _applied(await self._run(ctx["mark_type_deletion"], (token, now_ms()))):
            raise Conflict(f"device type {token!r} is being deleted by another request")
        try:
            user = await self._run(ctx["any_device_of_type"], (token,))
            if user:
                raise InUse(
                    f"device type {token!r} is the type of device {user[0][0]!r}; delete the device or "
                    "change its type first"
                )
            await self._run(ctx["del_device_types"], (token,))
            await self._run(ctx["del_device_types_by_seq"], (_BUCKET, rows[0][0]))
        finally:
            await self._run(ctx["unmark_type_deletion"], (token,))

    async def _type_gone(self, ctx: dict[str, Any], device_type: str) -> bool:
        """Whether ``device_type`` no longer exists or is being deleted (checked after a device
        naming it was written)."""
        if await self._run(ctx["sel_type_deletion"], (device_type,)):
            return True
        return not await self._run(ctx["sel_device_types"], (device_type,))

    # ------------------------------------------------------------------ devices

    async def create_device(self, device: model.Device) -> model.Device:
        """Store ``device`` (``created_ms`` defaults to now). NotFound for an unknown tenant or
        device type, Conflict for a duplicate token."""
        if not device.token:
            raise InvalidRequest("device token must not be empty")
        if not device.device_type:
            raise InvalidRequest("device must name a device type")
        stored = _copy(device)
        if not stored.created_ms:
            stored.created_ms = now_ms()
        ctx = await self._writable(stored.tenant)
        if not await self._run(ctx["sel_device_types"], (stored.device_type,)):
            raise NotFound(f"device type {stored.device_type!r} does not exist in tenant {stored.tenant!r}")
        data = stored.SerializeToString()
        if not await self._create(ctx, "devices", (stored.token, stored.device_type, data)):
            raise Conflict(f"device {stored.token!r} already exists in tenant {stored.tenant!r}")
        if await self._type_gone(ctx, stored.device_type):  # deleted meanwhile: back out
            await self._remove_device(ctx, stored.token)
            raise NotFound(f"device type {stored.device_type!r} does not exist in tenant {stored.tenant!r}")
        self._cache.put_device(stored.tenant, stored.token, data)
        return _copy(stored)

    async def _remove_device(self, ctx: dict[str, Any], token: str) -> bool:
        """Delete the device's rows; False if it was not there."""
        rows = await self._run(ctx["sel_devices_seq"], (token,))
        if not rows or not _applied(await self._run(ctx["del_devices"], (token,))):
            return False
        await self._run(ctx["del_devices_by_seq"], (_BUCKET, rows[0][0]))
        return True

    async def get_device(self, tenant: str, token: str) -> model.Device | None:
        """The device, or None. Found devices are served from memory after the first lookup."""
        cached = self._cache.device(tenant, token)
        if cached is not None:
            return _parse(model.Device, cached)
        data = await self._get_data(tenant, "sel_devices", token)
        if data is None:
            return None
        self._cache.put_device(tenant, token, data)
        return _parse(model.Device, data)

    async def list_devices(self, tenant: str, page: int, page_size: int) -> Page[model.Device]:
        check_page(page, page_size)
        ctx = await self._open(tenant, create=False)
        return await self._page(ctx, "devices_by_seq", _BUCKET, model.Device, page, page_size)

    async def update_device(self, device: model.Device) -> model.Device:
        """Replace type, comments and metadata. A new type must exist; if it is deleted at the
        same moment the device's old record is put back (NotFound)."""
        if not device.device_type:
            raise InvalidRequest("device must name a device type")
        tenant = device.tenant
        try:
            ctx = await self._open(tenant, create=False)
            rows = [] if ctx is None else await self._run(ctx["sel_devices_seq"], (device.token,))
            if ctx is None or not rows:
                raise NotFound(f"device {device.token!r} does not exist in tenant {tenant!r}")
            seq, old_data = rows[0]
            old = _parse(model.Device, old_data)
            if not await self._run(ctx["sel_device_types"], (device.device_type,)):
                raise NotFound(f"device type {device.device_type!r} does not exist in tenant {tenant!r}")
            stored = _copy(device)
            stored.created_ms = old.created_ms
            data = stored.SerializeToString()
            if not _applied(await self._run(ctx["upd_devices"], (stored.device_type, data, stored.token))):
                raise NotFound(f"device {device.token!r} does not exist in tenant {tenant!r}")
            if stored.device_type != old.device_type and await self._type_gone(ctx, stored.device_type):
                await self._run(ctx["upd_devices"], (old.device_type, old_data, stored.token))
                raise NotFound(f"device type {device.device_type!r} does not exist in tenant {tenant!r}")
            await self._run(ctx["ins_devices_by_seq"], (_BUCKET, seq, stored.token, data))
            return stored
        finally:
            self._cache.drop_device(tenant, device.token)

    async def delete_device(self, tenant: str, token: str) -> None:
        """NotFound if absent; InUse while it has an ACTIVE assignment.

        The device's active-assignment slot is taken first (by LWT, with an empty record), so
        no assignment can be made while the device goes; one made at that moment either holds
        the slot (InUse here) or finds the device gone after claiming it and backs out."""
        try:
            ctx = await self._open(tenant, create=False)
            if ctx is None or not await self._run(ctx["sel_devices"], (token,)):
                raise NotFound(f"device {token!r} does not exist in tenant {tenant!r}")
            if not _applied(await self._run(ctx["claim_active"], (token, _DELETING, b""))):
                active = await self._run(ctx["sel_active"], (token,))
                holder = bytes(active[0][0] or b"") if active else b""
                if holder:
                    which = _parse(model.Assignment, holder).token
                    raise InUse(f"device {token!r} has active assignment {which!r}; release it first")
                raise Conflict(f"device {token!r} is being deleted by another request")
            try:
                if not await self._remove_device(ctx, token):
                    raise NotFound(f"device {token!r} does not exist in tenant {tenant!r}")
            finally:
                await self._run(ctx["free_active"], (token, _DELETING))
        finally:
            self._cache.drop_device(tenant, token)
            self._cache.drop_assignment(tenant, token)

    # ------------------------------------------------------------------ assignments

    async def create_assignment(self, assignment: model.Assignment) -> model.Assignment:
        """Store an ACTIVE assignment (token defaults to a uuid4, ``active_ms`` to now).
        NotFound for an unknown tenant or device; Conflict for a duplicate token or when the
        device already has an active assignment (its ``active_assignments`` slot is taken)."""
        if not assignment.device:
            raise InvalidRequest("assignment must name a device")
        a = _copy(assignment)
        if not a.token:
            a.token = uuid.uuid4().hex
        a.status = _ACTIVE
        a.released_ms = 0
        if not a.active_ms:
            a.active_ms = now_ms()
        try:
            ctx = await self._writable(a.tenant)
            if not await self._run(ctx["sel_devices"], (a.device,)):
                raise NotFound(f"device {a.device!r} does not exist in tenant {a.tenant!r}")
            data = a.SerializeToString()
            seq = self._seq.next()
            if not _applied(
                await self._run(ctx["ins_assignment"], (a.token, seq, a.device, int(_ACTIVE), data))
            ):
                raise Conflict(f"assignment {a.token!r} already exists in tenant {a.tenant!r}")
            if not _applied(await self._run(ctx["claim_active"], (a.device, a.token, data))):
                # The token is ours (we just won it): give it back, the device's slot is not.
                await self._run(ctx["del_assignment"], (a.token,))
                raise Conflict(f"device {a.device!r} already has an active assignment")
            if not await self._run(ctx["sel_devices"], (a.device,)):  # deleted meanwhile: back out
                await self._run(ctx["free_active"], (a.device, a.token))
                await self._run(ctx["del_assignment"], (a.token,))
                raise NotFound(f"device {a.device!r} does not exist in tenant {a.tenant!r}")
            writes = [
                self._run(ctx["ins_assignments_by_seq"], (_BUCKET, seq, a.token, data)),
                self._run(ctx["ins_assignments_by_device"], (a.device, seq, a.token, data)),
            ]
            if a.customer:
                writes.append(self._run(ctx["ins_active_customer"], (a.customer, a.device, a.token)))
            await self._db.gather(writes)
            return a
        finally:
            self._cache.drop_assignment(a.tenant, a.device)

    async def get_assignment(self, tenant: str, token: str) -> model.Assignment | None:
        data = await self._get_data(tenant, "sel_assignment", token)
        return None if data is None else _parse(model.Assignment, data)

    async def active_assignment(self, tenant: str, device: str) -> model.Assignment | None:
        hit, cached = self._cache.assignment(tenant, device)
        if hit:
            return None if cached is None else _parse(model.Assignment, cached)
        data = await self._get_data(tenant, "sel_active", device) or None  # b"": being deleted
        self._cache.put_assignment(tenant, device, data)
        return None if data is None else _parse(model.Assignment, data)

    async def list_assignments(
        self, tenant: str, device: str | None, page: int, page_size: int
    ) -> Page[model.Assignment]:
        """A tenant's (or one device's) assignments, newest first."""
        check_page(page, page_size)
        ctx = await self._open(tenant, create=False)
        if device is None:
            return await self._page(ctx, "assignments_by_seq", _BUCKET, model.Assignment, page, page_size)
        return await self._page(ctx, "assignments_by_device", device, model.Assignment, page, page_size)

    async def release_assignment(self, tenant: str, token: str) -> model.Assignment:
        """Mark the assignment RELEASED (idempotent). NotFound if there is no such assignment.

        The status moves by compare-and-set (``IF status = ACTIVE``): of two replicas releasing
        at once one writes, the other returns what it wrote. Then the device's slot is freed
        (``IF tok = ?``: a newer assignment's slot is never touched) and the listing rows are
        rewritten — also when the assignment was released already, which repairs a release that
        a crash cut short."""
        ctx = await self._open(tenant, create=False)
        rows = [] if ctx is None else await self._run(ctx["sel_assignment"], (token,))
        if ctx is None or not rows:
            raise NotFound(f"assignment {token!r} does not exist in tenant {tenant!r}")
        seq, data = rows[0]
        a = _parse(model.Assignment, data)
        if a.status != _RELEASED:
            a.status = _RELEASED
            a.released_ms = now_ms()
            data = a.SerializeToString()
            won = await self._run(ctx["release_assignment"], (int(_RELEASED), data, token, int(_ACTIVE)))
            if not _applied(won):
                again = await self._run(ctx["sel_assignment"], (token,))
                if not again:
                    raise NotFound(f"assignment {token!r} does not exist in tenant {tenant!r}")
                seq, data = again[0]
                a = _parse(model.Assignment, data)
        await self._run(ctx["free_active"], (a.device, token))
        await self._db.gather(
            [
                self._run(ctx["ins_assignments_by_seq"], (_BUCKET, seq, token, data)),
                self._run(ctx["ins_assignments_by_device"], (a.device, seq, token, data)),
            ]
        )
        if a.customer:
            await self._run(ctx["free_active_customer"], (a.customer, a.device, token))
        self._cache.drop_assignment(tenant, a.device)
        return a

    # ------------------------------------------------------------------ customer types

    async def create_customer_type(self, tenant: str, ct: model.CustomerType) -> model.CustomerType:
        if not ct.token:
            raise InvalidRequest("customer type token must not be empty")
        stored = _copy(ct)
        if not stored.created_ms:
            stored.created_ms = now_ms()
        ctx = await self._writable(tenant)
        if not await self._create(ctx, "customer_types", (stored.token, stored.SerializeToString())):
            raise Conflict(f"customer type {stored.token!r} already exists in tenant {tenant!r}")
        return stored

    async def get_customer_type(self, tenant: str, token: str) -> model.CustomerType | None:
        data = await self._get_data(tenant, "sel_customer_types", token)
        return None if data is None else _parse(model.CustomerType, data)

    async def list_customer_types(self, tenant: str, page: int, page_size: int) -> Page[model.CustomerType]:
        check_page(page, page_size)
        ctx = await self._open(tenant, create=False)
        return await self._page(ctx, "customer_types_by_seq", _BUCKET, model.CustomerType, page, page_size)

    async def update_customer_type(self, tenant: str, ct: model.CustomerType) -> model.CustomerType:
        ctx = await self._open(tenant, create=False)
        rows = [] if ctx is None else await self._run(ctx["sel_customer_types"], (ct.token,))
        if ctx is None or not rows:
            raise NotFound(f"customer type {ct.token!r} does not exist in tenant {tenant!r}")
        seq, data = rows[0]
        stored = _copy(ct)
        stored.created_ms = _parse(model.CustomerType, data).created_ms
        data = stored.SerializeToString()
        if not _applied(await self._run(ctx["upd_customer_types"], (data, stored.token))):
            raise NotFound(f"customer type {ct.token!r} does not exist in tenant {tenant!r}")
        await self._run(ctx["ins_customer_types_by_seq"], (_BUCKET, seq, stored.token, data))
        return stored

    async def delete_customer_type(self, tenant: str, token: str) -> None:
        ctx = await self._open(tenant, create=False)
        rows = [] if ctx is None else await self._run(ctx["sel_customer_types"], (token,))
        if ctx is None or not rows:
            raise NotFound(f"customer type {token!r} does not exist in tenant {tenant!r}")
        user = await self._run(ctx["any_of_type"], (token,))
        if user:
            raise InUse(
                f"customer type {token!r} is the type of customer {user[0][0]!r}; delete or change it first"
            )
        await self._run(ctx["del_customer_types"], (token,))
        await self._run(ctx["del_customer_types_by_seq"], (_BUCKET, rows[0][0]))

    # ------------------------------------------------------------------ customers

    async def _check_customer_refs(self, ctx: dict[str, Any], tenant: str, c: model.Customer) -> None:
        if not await self._run(ctx["sel_customer_types"], (c.customer_type,)):
            raise NotFound(f"customer type {c.customer_type!r} does not exist in tenant {tenant!r}")
        if not c.parent:
            return
        if c.parent == c.token:
            raise Cycle(f"customer {c.token!r} cannot be its own parent")
        seen: set[str] = set()
        current = c.parent
        while current:
            if current == c.token:
                raise Cycle(
                    f"parent {c.parent!r} is below customer {c.token!r}: the customer tree would have a cycle"
                )
            if current in seen:
                break
            seen.add(current)
            rows = await self._run(ctx["sel_customers"], (current,))
            if not rows:
                if current == c.parent:
                    raise NotFound(f"parent customer {c.parent!r} does not exist in tenant {tenant!r}")
                break
            current = str(rows[0][2] or "")

    async def create_customer(self, tenant: str, customer: model.Customer) -> model.Customer:
        if not customer.token:
            raise InvalidRequest("customer token must not be empty")
        if not customer.customer_type:
            raise InvalidRequest("customer must name a customer type")
        c = _copy(customer)
        if not c.created_ms:
            c.created_ms = now_ms()
        ctx = await self._writable(tenant)
        await self._check_customer_refs(ctx, tenant, c)
        data = c.SerializeToString()
        seq = self._seq.next()
        if not _applied(
            await self._run(ctx["ins_customers"], (c.token, seq, c.customer_type, c.parent, data))
        ):
            raise Conflict(f"customer {c.token!r} already exists in tenant {tenant!r}")
        await self._db.gather(
            [
                self._run(ctx["ins_customers_by_seq"], (_BUCKET, seq, c.token, data)),
                self._run(ctx["ins_customers_by_parent"], (_parent_key(c.parent), seq, c.token, data)),
                self._run(ctx["ins_customers_by_type"], (c.customer_type, c.token)),
            ]
        )
        return c

    async def get_customer(self, tenant: str, token: str) -> model.Customer | None:
        data = await self._get_data(tenant, "sel_customers", token)
        return None if data is None else _parse(model.Customer, data)

    async def list_customers(
        self, tenant: str, parent: str | None, page: int, page_size: int
    ) -> Page[model.Customer]:
        check_page(page, page_size)
        ctx = await self._open(tenant, create=False)
        if parent is None:
            return await self._page(ctx, "customers_by_seq", _BUCKET, model.Customer, page, page_size)
        return await self._page(ctx, "customers_by_parent", parent, model.Customer, page, page_size)

    async def update_customer(self, tenant: str, customer: model.Customer) -> model.Customer:
        if not customer.customer_type:
            raise InvalidRequest("customer must name a customer type")
        ctx = await self._open(tenant, create=False)
        rows = [] if ctx is None else await self._run(ctx["sel_customers"], (customer.token,))
        if ctx is None or not rows:
            raise NotFound(f"customer {customer.token!r} does not exist in tenant {tenant!r}")
        seq, old_type, old_parent, old_data = rows[0]
        c = _copy(customer)
        c.created_ms = _parse(model.Customer, old_data).created_ms
        await self._check_customer_refs(ctx, tenant, c)
        data = c.SerializeToString()
        if not _applied(await self._run(ctx["upd_customers"], (c.customer_type, c.parent, data, c.token))):
            raise NotFound(f"customer {customer.token!r} does not exist in tenant {tenant!r}")
        writes = [
            self._run(ctx["ins_customers_by_seq"], (_BUCKET, seq, c.token, data)),
            self._run(ctx["ins_customers_by_parent"], (_parent_key(c.parent), seq, c.token, data)),
        ]
        if (old_parent or "") != c.parent:
            writes.append(self._run(ctx["del_customers_by_parent"], (_parent_key(old_parent), seq)))
        if old_type != c.customer_type:
            writes.append(self._run(ctx["del_customers_by_type"], (old_type, c.token)))
            writes.append(self._run(ctx["ins_customers_by_type"], (c.customer_type, c.token)))
        await self._db.gather(writes)
        return c

    async def delete_customer(self, tenant: str, token: str) -> None:
        ctx = await self._open(tenant, create=False)
        rows = [] if ctx is None else await self._run(ctx["sel_customers"], (token,))
        if ctx is None or not rows:
            raise NotFound(f"customer {token!r} does not exist in tenant {tenant!r}")
        seq, ctype, parent, _ = rows[0]
        child = await self._run(ctx["any_child"], (token,))
        if child:
            raise InUse(f"customer {token!r} has child customer {child[0][0]!r}; delete or move it first")
        active = await self._run(ctx["any_active_customer"], (token,))
        if active:
            raise InUse(
                f"customer {token!r} is named by active assignment {active[0][0]!r} of device "
                f"{active[0][1]!r}; release it first"
            )
        await self._run(ctx["del_customers"], (token,))
        await self._db.gather(
            [
                self._run(ctx["del_customers_by_seq"], (_BUCKET, seq)),
                self._run(ctx["del_customers_by_parent"], (_parent_key(parent), seq)),
                self._run(ctx["del_customers_by_type"], (ctype, token)),
            ]
        )

    async def customer_devices(
        self, tenant: str, customer: str, page: int, page_size: int
    ) -> Page[model.Device]:
        limit, offset = check_page(page, page_size)
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return Page([], 0, page, page_size)
        counted, rows = await self._db.gather(
            [
                self._run(ctx["count_active_customer"], (customer,)),
                self._run(ctx["page_active_customer"], (customer, offset + limit)),
            ]
        )
        found = await self._db.gather(self._run(ctx["sel_devices"], (r[0],)) for r in rows[offset:])
        devices = [_parse(model.Device, f[0][-1]) for f in found if f]
        return Page(devices, int(counted[0][0]) if counted else 0, page, page_size)


# ---------------------------------------------------------------------- invocations


class CassandraInvocationStore(_CassandraStore):
    """Implements :class:`fieldgate.cloud.store.invocations.InvocationStore` on Cassandra: ``invocations``
    in the tenant's keyspace, moved only by compare-and-set on ``status``."""

    _what = "cassandra invocation store"

    def __init__(
        self,
        session: CassandraSession,
        *,
        keyspace_prefix: str = KEYSPACE_PREFIX,
        replication: int = 1,
        max_concurrency: int = 32,
    ) -> None:
        super().__init__(
            session, keyspace_prefix=keyspace_prefix, replication=replication, max_concurrency=max_concurrency
        )
        self._seq = _Sequence()
        self._listed: set[str] = set()  # tenants known to be in invocation_tenants

    def _instance_statements(self, ks: str) -> dict[str, str]:
        return {
            "ins_tenant": f"INSERT INTO {ks}.invocation_tenants (bucket, tenant) VALUES (?, ?)",
            "del_tenant": f"DELETE FROM {ks}.invocation_tenants WHERE bucket = ? AND tenant = ?",
            "all_tenants": f"SELECT tenant FROM {ks}.invocation_tenants WHERE bucket = ?",
        }

    async def ensure_tenant(self, tenant: str) -> None:
        """Create the tenant's keyspace with the invocation (registry) tables now."""
        await self.ensure_tenant_keyspace(tenant)

    async def delete_tenant(self, tenant: str) -> bool:
        """Forget the tenant in ``invocation_tenants`` and empty the invocation tables of its
        keyspace; False if they were empty. The keyspace is the registry's to drop."""
        self.forget_tenant(tenant)
        if not valid_tenant(tenant):
            return False
        await self._run(self._instance_stmt("del_tenant"), (_BUCKET, tenant))
        ks = keyspace_name(tenant, self._prefix)
        if await self._open(tenant, create=False) is None:  # no keyspace (dropped already)
            return False
        return await self._db.empty_tables(ks, _INVOCATION_TABLES, limit=self._sem)

    def forget_tenant(self, tenant: str) -> None:
        super().forget_tenant(tenant)
        self._listed.discard(tenant)

    def _tenant_statements(self, ks: str) -> dict[str, str]:
        return {
            "ins": f"INSERT INTO {ks}.invocations (id, seq, device, status, expires_ms, data)"
            " VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS",
            "sel": f"SELECT seq, status, data FROM {ks}.invocations WHERE id = ?",
            "cas": f"UPDATE {ks}.invocations SET status = ?, data = ? WHERE id = ? IF status = ?",
            "ins_queued": f"INSERT INTO {ks}.queued_invocations (bucket, seq, id, expires_ms) VALUES (?, ?, ?, ?)",
            "ins_queued_device": f"INSERT INTO {ks}.queued_invocations_by_device (device, seq, id)"
            " VALUES (?, ?, ?)",
            "del_queued": f"DELETE FROM {ks}.queued_invocations WHERE bucket = ? AND seq = ?",
            "del_queued_device": f"DELETE FROM {ks}.queued_invocations_by_device WHERE device = ? AND seq = ?",
            "queued": f"SELECT seq, id, expires_ms FROM {ks}.queued_invocations WHERE bucket = ?",
            "queued_device": f"SELECT seq, id FROM {ks}.queued_invocations_by_device WHERE device = ?",
        }

    async def create(self, inv: svc.InvocationState) -> svc.InvocationState:
        """Store a new invocation (status defaults to QUEUED, times to now). Conflict if the
        id exists; InvalidRequest without id, tenant or device."""
        require_tenant(inv.tenant)
        if not inv.id or not inv.device:
            raise InvalidRequest("an invocation needs an id and a device")
        stored = _copy(inv)
        if stored.status == svc.COMMAND_STATUS_UNSPECIFIED:
            stored.status = _QUEUED
        if stored.status not in _KNOWN:
            raise InvalidRequest(f"unknown command status {stored.status}")
        if not stored.created_ms:
            stored.created_ms = now_ms()
        if not stored.updated_ms:
            stored.updated_ms = stored.created_ms
        ctx = await self._open(stored.tenant, create=True)
        assert ctx is not None
        if stored.tenant not in self._listed:
            await self._run(self._instance_stmt("ins_tenant"), (_BUCKET, stored.tenant))
            self._listed.add(stored.tenant)
        seq = self._seq.next()
        params = (
            stored.id,
            seq,
            stored.device,
            int(stored.status),
            stored.expires_ms,
            stored.SerializeToString(),
        )
        if not _applied(await self._run(ctx["ins"], params)):
            await self._requeue_if_queued(ctx, stored.id)
            raise Conflict(f"invocation {stored.id!r} already exists")
        if stored.status == _QUEUED:
            await self._enqueue(ctx, seq, stored.id, stored.device, stored.expires_ms)
        return stored

    async def _enqueue(
        self, ctx: dict[str, Any], seq: Any, inv_id: str, device: str, expires_ms: int
    ) -> None:
        await self._db.gather(
            [
                self._run(ctx["ins_queued"], (_BUCKET, seq, inv_id, expires_ms)),
                self._run(ctx["ins_queued_device"], (device, seq, inv_id)),
            ]
        )

    async def _requeue_if_queued(self, ctx: dict[str, Any], inv_id: str) -> None:
        """A create of an existing id: if that invocation is QUEUED, write its queue entries
        again (same seq, so idempotent). A process that died between storing an invocation and
        queueing it left it out of :meth:`list_pending`; the retried create (a batch runner
        resuming, an alternate id sent again) repairs it."""
        rows = await self._run(ctx["sel"], (inv_id,))
        if rows and rows[0][1] == _QUEUED:
            existing = _parse(svc.InvocationState, rows[0][2])
            await self._enqueue(ctx, rows[0][0], existing.id, existing.device, existing.expires_ms)

    async def get(self, tenant: str, invocation_id: str) -> svc.InvocationState | None:
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return None
        rows = await self._run(ctx["sel"], (invocation_id,))
        return _parse(svc.InvocationState, rows[0][2]) if rows else None

    async def update_status(
        self,
        tenant: str,
        invocation_id: str,
        status: svc.CommandStatus.ValueType,
        *,
        reason: str = "",
        response_json: str | None = None,
    ) -> svc.InvocationState | None:
        """Move an invocation forward; None if it does not exist. Terminal states are final
        (except failed → late on an answer); backwards or repeated updates are ignored and the
        current state returned."""
        check_requested(status)
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return None

        def moved(inv: svc.InvocationState) -> svc.InvocationState:
            new = apply_status(inv, status, reason, response_json, now_ms())
            assert new is not None  # _move asked next_status first, on the same status
            return new

        state, _ = await self._move(
            ctx, invocation_id, lambda current: next_status(current, status) is not None, moved
        )
        return state

    async def _move(
        self,
        ctx: dict[str, Any],
        invocation_id: str,
        allowed: Callable[[svc.CommandStatus.ValueType], bool],
        change: Callable[[svc.InvocationState], svc.InvocationState],
    ) -> tuple[svc.InvocationState | None, bool]:
        """Read; if ``allowed(current status)``, compare-and-set the ``change``d state on the
        status read. A lost round re-reads what the other writer stored and decides again.
        Returns the state now stored (None: no such invocation) and whether this call moved it."""
        for _ in range(_CAS_ROUNDS):
            rows = await self._run(ctx["sel"], (invocation_id,))
            if not rows:
                return None, False
            seq, current, data = rows[0]
            inv = _parse(svc.InvocationState, data)
            if not allowed(current):
                return inv, False
            new = change(inv)
            cas = (int(new.status), new.SerializeToString(), invocation_id, current)
            if _applied(await self._run(ctx["cas"], cas)):
                if current == _QUEUED:
                    await self._db.gather(
                        [
                            self._run(ctx["del_queued"], (_BUCKET, seq)),
                            self._run(ctx["del_queued_device"], (new.device, seq)),
                        ]
                    )
                return new, True
        raise StoreError(f"invocation {invocation_id!r}: status still contended after {_CAS_ROUNDS} rounds")

    async def pending_for_device(self, tenant: str, device: str) -> list[svc.InvocationState]:
        """Invocations still QUEUED for ``device``, oldest first."""
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return []
        rows = await self._run(ctx["queued_device"], (device,))
        return await self._still_queued(ctx, [(seq, inv_id) for seq, inv_id in rows])

    async def list_pending(self, tenant: str) -> list[svc.InvocationState]:
        """Every QUEUED invocation of ``tenant``, oldest first (e.g. to re-send after a restart)."""
        ctx = await self._open(tenant, create=False)
        if ctx is None:
            return []
        rows = await self._run(ctx["queued"], (_BUCKET,))
        return await self._still_queued(ctx, [(seq, inv_id) for seq, inv_id, _ in rows])

    async def _still_queued(
        self, ctx: dict[str, Any], entries: list[tuple[Any, str]]
    ) -> list[svc.InvocationState]:
        """The invocations of queue entries (oldest first) that are QUEUED in ``invocations``,
        the source of truth (an entry outlives its move when a process dies in between)."""
        found = await self._db.gather(self._run(ctx["sel"], (inv_id,)) for _, inv_id in entries)
        return [_parse(svc.InvocationState, rows[0][2]) for rows in found if rows and rows[0][1] == _QUEUED]

    async def expire_due(self, now_ms: int, tenant: str | None = None) -> list[svc.InvocationState]:
        """Mark QUEUED invocations whose ``expires_ms`` (non-zero) has passed as EXPIRED
        (reason "ttl expired"), in every tenant or one; returns them. DELIVERED ones are left to
        the edge's response timeout. Each move is a compare-and-set: two replicas sweeping at
        once expire every invocation once between them."""
        if tenant is not None:
            tenants = [tenant]
        else:
            tenants = [str(r[0]) for r in await self._run(self._instance_stmt("all_tenants"), (_BUCKET,))]
        now = now_ms

        def expired(inv: svc.InvocationState) -> svc.InvocationState:
            inv.status = _EXPIRED
            inv.reason = "ttl expired"
            inv.updated_ms = max(now, inv.updated_ms)
            return inv

        out: list[svc.InvocationState] = []
        for t in tenants:
            ctx = await self._open(t, create=False)
            if ctx is None:
                continue
            rows = await self._run(ctx["queued"], (_BUCKET,))
            due = [inv_id for _, inv_id, expires in rows if expires and 0 < expires <= now]
            for inv_id in due:
                state, moved = await self._move(ctx, inv_id, lambda current: current == _QUEUED, expired)
                if moved and state is not None:
                    out.append(state)
        return out
