"""SQLite registry: the row primitives of :class:`~fieldgate.cloud.store.registry.RegistryBase`
in files under ``data_dir``:

* ``tenants.db`` — the tenant list;
* ``registry-<tenant>.db`` — one tenant's customer types, customers, device types, devices and
  assignments.

A database per tenant keeps tenants apart by construction: no statement can reach another
tenant's rows. Entities are stored as their serialized protobuf (so commands with typed
parameters, metadata maps etc. round-trip unchanged) beside the few columns that are queried.

Every primitive is one transaction on the backend's single worker thread: a write checks the
rows it references, a delete what references its row, and an update of a customer walks the
customer tree, each in the transaction of its write — so a reference and a delete, or two
moves in the tree, never cross. A partial unique index keeps one ACTIVE assignment per device.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fieldgate.cloud.errors import StoreError
from fieldgate.cloud.sqlite_worker import SqliteWorker, Synchronous, transaction
from fieldgate.cloud.store._registry_cache import DEVICE_CACHE_S
from fieldgate.cloud.store.registry import (
    ACTIVE,
    Assigned,
    Deleted,
    Entity,
    Kind,
    Ref,
    RegistryBase,
    Replaced,
    Stored,
    Walk,
    drive,
    kind_of,
    no_tenant,
    parse,
)
from fieldgate.v1 import model_pb2 as model

_TENANTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    seq INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL
);
"""

_REGISTRY_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_types (
    seq INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    seq INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    device_type TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    seq INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    device TEXT NOT NULL,
    status INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_assignment_per_device
    ON assignments (device) WHERE status = 1;
CREATE INDEX IF NOT EXISTS assignments_by_device ON assignments (device, seq);
CREATE TABLE IF NOT EXISTS customer_types (
    seq INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS customers (
    seq INTEGER PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    customer_type TEXT NOT NULL,
    parent TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS customers_by_parent ON customers (parent, seq);
CREATE INDEX IF NOT EXISTS customers_by_type ON customers (customer_type);
"""

_TABLES: dict[Kind, str] = {
    "device_type": "device_types",
    "device": "devices",
    "assignment": "assignments",
    "customer_type": "customer_types",
    "customer": "customers",
}
#: The queried columns of a kind's rows beside token and data.
_COLUMNS: dict[Kind, tuple[str, ...]] = {
    "device": ("device_type",),
    "customer": ("customer_type", "parent"),
    "assignment": ("device", "status"),
}
#: What keeps a row from deletion: (referrer kind, the query of one referrer's token).
_REFERRERS: dict[Kind, list[tuple[Kind, str]]] = {
    "device_type": [("device", "SELECT token FROM devices WHERE device_type = ? LIMIT 1")],
    "customer_type": [("customer", "SELECT token FROM customers WHERE customer_type = ? LIMIT 1")],
    "customer": [("customer", "SELECT token FROM customers WHERE parent = ? LIMIT 1")],
    "device": [("assignment", f"SELECT token FROM assignments WHERE device = ? AND status = {int(ACTIVE)}")],
}


def _columns(entity: Entity) -> tuple[str | int, ...]:
    if isinstance(entity, model.Device):
        return (entity.device_type,)
    if isinstance(entity, model.Customer):
        return (entity.customer_type, entity.parent)
    if isinstance(entity, model.Assignment):
        return (entity.device, int(entity.status))
    return ()


def _active_of_customer(conn: sqlite3.Connection, customer: str) -> list[model.Assignment]:
    """The ACTIVE assignments naming ``customer``, by device (a scan of the active ones: the
    customer is inside the serialized assignment)."""
    rows = conn.execute("SELECT data FROM assignments WHERE status = ? ORDER BY device", (int(ACTIVE),))
    return [a for (data,) in rows if (a := parse(model.Assignment, data)).customer == customer]


class SqliteRegistry(RegistryBase):
    """Implements :class:`fieldgate.cloud.store.registry.Registry` on SQLite files."""

    def __init__(
        self,
        data_dir: Path,
        *,
        synchronous: Synchronous = "FULL",
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
        self._data_dir = data_dir
        self._worker = SqliteWorker("registry", error=StoreError, synchronous=synchronous)

    async def start(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    # --- connections (worker thread) -----------------------------------------------------------

    def _tenants(self) -> sqlite3.Connection:
        conn = self._worker.connect(self._data_dir / "tenants.db", _TENANTS_SCHEMA)
        assert conn is not None
        return conn

    def _path(self, tenant: str) -> Path:
        return self._data_dir / f"registry-{tenant}.db"

    def _db(self, tenant: str, *, create: bool = False) -> sqlite3.Connection | None:
        return self._worker.connect(self._path(tenant), _REGISTRY_SCHEMA, create=create)

    def _write_db(self, tenant: str) -> sqlite3.Connection:
        """The tenant's database for a write that may create it: NotFound unless the tenant's
        record exists, checked in the write's worker job — a tenant deleted since the caller's
        check is not brought back as an empty file (the worker runs one job at a time)."""
        if self._tenants().execute("SELECT 1 FROM tenants WHERE token = ?", (tenant,)).fetchone() is None:
            raise no_tenant(tenant)
        conn = self._db(tenant, create=True)
        assert conn is not None
        return conn

    # --- tenants -------------------------------------------------------------------------------

    async def _tenant_read(self, token: str) -> model.Tenant | None:
        def run() -> model.Tenant | None:
            row = self._tenants().execute("SELECT data FROM tenants WHERE token = ?", (token,)).fetchone()
            return None if row is None else parse(model.Tenant, row[0])

        return await self._worker.run(run)

    async def _tenant_all(self) -> list[model.Tenant]:
        def run() -> list[model.Tenant]:
            rows = self._tenants().execute("SELECT data FROM tenants ORDER BY seq").fetchall()
            return [parse(model.Tenant, data) for (data,) in rows]

        return await self._worker.run(run)

    async def _tenant_insert(self, tenant: model.Tenant) -> bool:
        sql = "INSERT OR IGNORE INTO tenants (token, data) VALUES (?, ?)"
        return await self._worker.run(self._tenant_write, sql, tenant.token, tenant.SerializeToString())

    async def _tenant_put(self, tenant: model.Tenant) -> None:
        sql = "INSERT INTO tenants (token, data) VALUES (?, ?) ON CONFLICT (token) DO UPDATE SET data = excluded.data"
        await self._worker.run(self._tenant_write, sql, tenant.token, tenant.SerializeToString())

    async def _tenant_replace(self, tenant: model.Tenant) -> bool:
        sql = "UPDATE tenants SET data = ?2 WHERE token = ?1"
        return await self._worker.run(self._tenant_write, sql, tenant.token, tenant.SerializeToString())

    async def _tenant_delete(self, token: str) -> bool:
        return await self._worker.run(self._tenant_write, "DELETE FROM tenants WHERE token = ?", token)

    def _tenant_write(self, sql: str, *params: str | bytes) -> bool:
        with transaction(self._tenants()) as conn:
            return conn.execute(sql, params).rowcount > 0

    async def _storage_create(self, tenant: str, *, fresh: bool) -> None:
        def run() -> None:
            if fresh:
                self._worker.remove(self._path(tenant))
            self._db(tenant, create=True)

        await self._worker.run(run)

    async def _storage_drop(self, tenant: str) -> bool:
        return await self._worker.run(self._worker.remove, self._path(tenant))

    def _storage_forget(self, tenant: str) -> None:
        self._worker.close_soon(self._path(tenant))

    # --- rows ----------------------------------------------------------------------------------

    async def _get(self, tenant: str, kind: Kind, token: str) -> bytes | None:
        def run() -> bytes | None:
            conn = self._db(tenant)
            if conn is None:
                return None
            row = conn.execute(f"SELECT data FROM {_TABLES[kind]} WHERE token = ?", (token,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._worker.run(run)

    async def _page(
        self, tenant: str, kind: Kind, limit: int, offset: int, of: str | None = None
    ) -> tuple[list[bytes], int]:
        where, args = "", []
        if of is not None:
            where, args = ("WHERE parent = ?" if kind == "customer" else "WHERE device = ?"), [of]
        order = "DESC" if kind == "assignment" else ""

        def run() -> tuple[list[bytes], int]:
            conn = self._db(tenant)
            if conn is None:
                return [], 0
            table = _TABLES[kind]
            (total,) = conn.execute(f"SELECT count(*) FROM {table} {where}", args).fetchone()
            rows = conn.execute(
                f"SELECT data FROM {table} {where} ORDER BY seq {order} LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
            return [bytes(data) for (data,) in rows], int(total)

        return await self._worker.run(run)

    @staticmethod
    def _missing(conn: sqlite3.Connection, refs: Sequence[Ref]) -> Ref | None:
        for ref in refs:
            if (
                conn.execute(f"SELECT 1 FROM {_TABLES[ref.kind]} WHERE token = ?", (ref.token,)).fetchone()
                is None
            ):
                return ref
        return None

    async def _insert(self, tenant: str, entity: Entity, refs: Sequence[Ref]) -> Stored:
        kind = kind_of(entity)
        names = ", ".join(("token", *_COLUMNS.get(kind, ()), "data"))
        marks = ", ".join("?" * (len(_COLUMNS.get(kind, ())) + 2))
        params = (entity.token, *_columns(entity), entity.SerializeToString())

        def run() -> Stored:
            conn = self._write_db(tenant)
            with transaction(conn):
                missing = self._missing(conn, refs)
                if missing is not None:
                    return missing
                sql = f"INSERT OR IGNORE INTO {_TABLES[kind]} ({names}) VALUES ({marks})"
                return "stored" if conn.execute(sql, params).rowcount else "taken"

        return await self._worker.run(run)

    async def _replace(self, tenant: str, entity: Entity, refs: Sequence[Ref], walk: Walk | None) -> Replaced:
        kind = kind_of(entity)
        sets = ", ".join(f"{c} = ?" for c in (*_COLUMNS.get(kind, ()), "data"))
        params = (*_columns(entity), entity.SerializeToString(), entity.token)

        def parent_of(conn: sqlite3.Connection, token: str) -> str | None:
            row = conn.execute("SELECT parent FROM customers WHERE token = ?", (token,)).fetchone()
            return None if row is None else str(row[0])

        def run() -> Replaced:
            conn = self._db(tenant)
            if conn is None:
                return "missing"
            with transaction(conn):
                table = _TABLES[kind]
                if conn.execute(f"SELECT 1 FROM {table} WHERE token = ?", (entity.token,)).fetchone() is None:
                    return "missing"
                missing = self._missing(conn, refs)
                if missing is not None:
                    return missing
                if walk is not None:
                    drive(walk, lambda token: parent_of(conn, token))
                conn.execute(f"UPDATE {table} SET {sets} WHERE token = ?", params)
            return "stored"

        return await self._worker.run(run)

    async def _delete(self, tenant: str, kind: Kind, token: str) -> Deleted:
        def run() -> Deleted:
            conn = self._db(tenant)
            if conn is None:
                return "missing"
            with transaction(conn):
                table = _TABLES[kind]
                if conn.execute(f"SELECT 1 FROM {table} WHERE token = ?", (token,)).fetchone() is None:
                    return "missing"
                for by, sql in _REFERRERS.get(kind, []):
                    row = conn.execute(sql, (token,)).fetchone()
                    if row is not None:
                        return Ref(by, str(row[0]))
                if kind == "customer":
                    for a in _active_of_customer(conn, token):
                        return Ref("assignment", a.token)
                conn.execute(f"DELETE FROM {table} WHERE token = ?", (token,))
            return "deleted"

        return await self._worker.run(run)

    # --- assignments ---------------------------------------------------------------------------

    async def _assign(self, assignment: model.Assignment) -> Assigned:
        a = assignment

        def run() -> Assigned:
            conn = self._write_db(a.tenant)
            with transaction(conn):
                missing = self._missing(conn, [Ref("device", a.device)])
                if missing is not None:
                    return missing
                if (
                    conn.execute("SELECT 1 FROM assignments WHERE token = ?", (a.token,)).fetchone()
                    is not None
                ):
                    return "taken"
                try:
                    conn.execute(
                        "INSERT INTO assignments (token, device, status, data) VALUES (?, ?, ?, ?)",
                        (a.token, a.device, int(a.status), a.SerializeToString()),
                    )
                except sqlite3.IntegrityError:  # the partial unique index: one ACTIVE per device
                    return "busy"
            return "stored"

        return await self._worker.run(run)

    async def _active(self, tenant: str, device: str) -> bytes | None:
        def run() -> bytes | None:
            conn = self._db(tenant)
            if conn is None:
                return None
            row = conn.execute(
                "SELECT data FROM assignments WHERE device = ? AND status = ?", (device, int(ACTIVE))
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._worker.run(run)

    async def _release(self, tenant: str, released: model.Assignment) -> model.Assignment | None:
        def run() -> model.Assignment | None:
            conn = self._db(tenant)
            if conn is None:
                return None
            with transaction(conn):
                conn.execute(
                    "UPDATE assignments SET status = ?, data = ? WHERE token = ? AND status = ?",
                    (int(released.status), released.SerializeToString(), released.token, int(ACTIVE)),
                )
                row = conn.execute(
                    "SELECT data FROM assignments WHERE token = ?", (released.token,)
                ).fetchone()
            return None if row is None else parse(model.Assignment, row[0])

        return await self._worker.run(run)

    async def _customer_devices(
        self, tenant: str, customer: str, limit: int, offset: int
    ) -> tuple[list[bytes], int]:
        def run() -> tuple[list[bytes], int]:
            conn = self._db(tenant)
            if conn is None:
                return [], 0
            active = _active_of_customer(conn, customer)
            devices: list[bytes] = []
            for a in active[offset : offset + limit]:
                row = conn.execute("SELECT data FROM devices WHERE token = ?", (a.device,)).fetchone()
                if row is not None:
                    devices.append(bytes(row[0]))
            return devices, len(active)

        return await self._worker.run(run)
