"""SQLite registry (tenants, device types, devices, assignments) and invocation store.

The embedded implementations of :class:`fieldgate.cloud.store.registry.Registry` and
:class:`fieldgate.cloud.store.invocations.InvocationStore`. Files under ``data_dir``:

* ``tenants.db`` — the tenant list;
* ``registry-<tenant>.db`` — one tenant's device types, devices and assignments;
* ``invocations-<tenant>.db`` — one tenant's command invocations.

A database per tenant keeps tenants apart by construction: no statement can reach another
tenant's rows. Entities are stored as their serialized protobuf (so commands with typed
parameters, metadata maps etc. round-trip unchanged) beside the few columns that are queried.

Rules a caller will notice:

* Writes for a tenant that was never created (:meth:`SqliteRegistry.ensure_tenant`,
  :meth:`~SqliteRegistry.create_tenant`) raise NotFound; reads for it return None / empty
  pages. Duplicate tokens raise Conflict. :meth:`~SqliteRegistry.delete_tenant` removes the
  record and ``registry-<tenant>.db``.
* Customers name an existing customer type and (optionally) an existing parent customer; a
  parent that would make a cycle is Cycle (a Conflict); a customer with children or named by an
  ACTIVE assignment, and a customer type with customers, cannot be deleted (InUse).
* A device must name an existing device type (NotFound otherwise). A device type a device has,
  and a device with an ACTIVE assignment, cannot be deleted (InUse); each check runs in the
  transaction of the delete (and creating a device or an assignment checks what it names in
  its own), so the two cannot cross.
* A device has at most one ACTIVE assignment (a partial unique index enforces it); creating a
  second raises Conflict. Releasing sets RELEASED and ``released_ms``; releasing again is a
  no-op that returns the released assignment. An assignment without a token gets a uuid4.
* Lists are in creation order, except assignments: newest first.
* :meth:`SqliteRegistry.get_device` is on the hot path of inbound processing: found devices
  are kept in a bounded in-memory cache for ``device_cache_s`` seconds (a change or deletion
  made by another process is seen within that time; this instance's own writes drop the entry
  at once); misses always ask the database (another process may have created the device).
  Active assignments are cached too, for a few seconds (``assignment_cache_s``), and
  invalidated at once by this instance's own writes.

Invocation status rules (:meth:`SqliteInvocationStore.update_status`, :func:`next_status`):
QUEUED → DELIVERED → ANSWERED, and FAILED / EXPIRED from QUEUED or DELIVERED. ANSWERED may skip
DELIVERED (a device's answer can overtake the edge's status report). ANSWERED, FAILED, EXPIRED
and LATE are final, with one exception: an answer (ANSWERED) to a FAILED or EXPIRED invocation
makes it LATE — the device did answer, after the edge's response timeout or the time-to-live;
the response is kept and ``reason`` still says why it had failed. LATE is never requested, only
derived. An update that would move backwards, repeat the current state or leave a final state
is ignored and the current state returned.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeAlias, TypeVar

from google.protobuf.message import Message as ProtoMessage

from fieldgate.cloud.errors import Conflict, Cycle, InUse, InvalidRequest, NotFound, StoreError
from fieldgate.cloud.sqlite_worker import SqliteWorker, Synchronous, transaction
from fieldgate.cloud.store import Page
from fieldgate.cloud.store._registry_cache import DEVICE_CACHE_S, RegistryCache
from fieldgate.cloud.store.validators import check_page, require_tenant, valid_tenant
from fieldgate.timeutil import now_ms
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc

M = TypeVar("M", bound=ProtoMessage)

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

_INVOCATIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS invocations (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    device TEXT NOT NULL,
    status INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS invocations_by_device_status ON invocations (device, status, seq);
CREATE INDEX IF NOT EXISTS invocations_by_status_expiry ON invocations (status, expires_ms);
"""

_ACTIVE = model.ASSIGNMENT_STATUS_ACTIVE
_RELEASED = model.ASSIGNMENT_STATUS_RELEASED


def _parse(cls: type[M], data: bytes) -> M:
    msg = cls()
    msg.ParseFromString(data)
    return msg


def _copy(msg: M) -> M:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


@contextmanager
def _maybe_transaction(conn: sqlite3.Connection | None) -> Iterator[None]:
    """A write transaction on ``conn``, or nothing when there is no database (the body then
    raises NotFound)."""
    if conn is None:
        yield
        return
    with transaction(conn):
        yield


class SqliteRegistry:
    """Implements :class:`fieldgate.cloud.store.registry.Registry` (see the module docstring)."""

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
        self._data_dir = data_dir
        self._worker = SqliteWorker("registry", error=StoreError, synchronous=synchronous)
        self._known_tenants: set[str] = set()
        self._cache = RegistryCache(device_cache_size, assignment_cache_s, clock, device_cache_s)

    async def start(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    # ------------------------------------------------------------------ connections (worker)

    def _tenants_db(self) -> sqlite3.Connection:
        conn = self._worker.connect(self._data_dir / "tenants.db", _TENANTS_SCHEMA)
        assert conn is not None
        return conn

    def _tenant_db(self, tenant: str, *, create: bool) -> sqlite3.Connection | None:
        return self._worker.connect(self._data_dir / f"registry-{tenant}.db", _REGISTRY_SCHEMA, create=create)

    def _tenant_exists(self, tenant: str) -> bool:
        if tenant in self._known_tenants:
            return True
        row = self._tenants_db().execute("SELECT 1 FROM tenants WHERE token = ?", (tenant,)).fetchone()
        if row is not None:
            self._known_tenants.add(tenant)
        return row is not None

    def _writable(self, tenant: str) -> sqlite3.Connection:
        """The tenant's database for a write; NotFound for an unknown tenant."""
        if not valid_tenant(tenant) or not self._tenant_exists(tenant):
            raise NotFound(f"tenant {tenant!r} does not exist")
        conn = self._tenant_db(tenant, create=True)
        assert conn is not None
        return conn

    def _readable(self, tenant: str) -> sqlite3.Connection | None:
        if not valid_tenant(tenant):
            return None
        return self._tenant_db(tenant, create=False)

    # ------------------------------------------------------------------ tenants

    async def ensure_tenant(self, tenant: model.Tenant) -> model.Tenant:
        """Create ``tenant`` or update its settings to the given ones (configuration is the
        source of truth); returns what is stored."""
        require_tenant(tenant.token)
        return await self._worker.run(self._ensure_tenant, _copy(tenant))

    def _ensure_tenant(self, tenant: model.Tenant) -> model.Tenant:
        with transaction(self._tenants_db()) as conn:
            row = conn.execute("SELECT data FROM tenants WHERE token = ?", (tenant.token,)).fetchone()
            if row is not None and not tenant.created_ms:
                tenant.created_ms = _parse(model.Tenant, row[0]).created_ms
            if not tenant.created_ms:
                tenant.created_ms = now_ms()
            conn.execute(
                "INSERT INTO tenants (token, data) VALUES (?, ?)"
                " ON CONFLICT (token) DO UPDATE SET data = excluded.data",
                (tenant.token, tenant.SerializeToString()),
            )
        self._tenant_db(tenant.token, create=True)
        self._known_tenants.add(tenant.token)
        return tenant

    async def create_tenant(self, tenant: model.Tenant) -> model.Tenant:
        """Create ``tenant`` and its (empty) database; Conflict if the token is taken."""
        require_tenant(tenant.token)
        stored = _copy(tenant)
        if not stored.created_ms:
            stored.created_ms = now_ms()
        created = await self._worker.run(self._create_tenant, stored)
        self._cache.forget_tenant(stored.token)  # of an earlier tenant of the token
        return created

    def _create_tenant(self, tenant: model.Tenant) -> model.Tenant:
        try:
            with transaction(self._tenants_db()) as conn:
                conn.execute(
                    "INSERT INTO tenants (token, data) VALUES (?, ?)",
                    (tenant.token, tenant.SerializeToString()),
                )
        except sqlite3.IntegrityError as err:
            raise Conflict(f"tenant {tenant.token!r} already exists") from err
        # The token was free: a registry file of that name is what an earlier tenant of the
        # token left (a write in flight during its deletion). The new tenant starts empty.
        self._worker.remove(self._data_dir / f"registry-{tenant.token}.db")
        self._tenant_db(tenant.token, create=True)
        self._known_tenants.add(tenant.token)
        return tenant

    async def update_tenant(self, tenant: model.Tenant) -> model.Tenant:
        """Replace the record of an existing tenant (its ``created_ms`` is kept)."""
        if not valid_tenant(tenant.token):
            raise NotFound(f"tenant {tenant.token[:70]!r} does not exist")
        return await self._worker.run(self._update_tenant, _copy(tenant))

    def _update_tenant(self, tenant: model.Tenant) -> model.Tenant:
        with transaction(self._tenants_db()) as conn:
            row = conn.execute("SELECT data FROM tenants WHERE token = ?", (tenant.token,)).fetchone()
            if row is None:
                raise NotFound(f"tenant {tenant.token!r} does not exist")
            tenant.created_ms = _parse(model.Tenant, row[0]).created_ms
            conn.execute(
                "UPDATE tenants SET data = ? WHERE token = ?", (tenant.SerializeToString(), tenant.token)
            )
        return tenant

    async def delete_tenant(self, token: str) -> bool:
        """Remove the tenant's record and ``registry-<tenant>.db``; False if neither existed."""
        if not valid_tenant(token):
            return False
        try:
            return await self._worker.run(self._delete_tenant, token)
        finally:
            self.forget_tenant(token)

    def _delete_tenant(self, token: str) -> bool:
        with transaction(self._tenants_db()) as conn:
            deleted = conn.execute("DELETE FROM tenants WHERE token = ?", (token,)).rowcount > 0
        self._known_tenants.discard(token)
        removed = self._worker.remove(self._data_dir / f"registry-{token}.db")
        return deleted or removed

    def forget_tenant(self, token: str) -> None:
        self._known_tenants.discard(token)
        if valid_tenant(token):
            self._worker.close_soon(self._data_dir / f"registry-{token}.db")
        self._cache.forget_tenant(token)

    async def get_tenant(self, token: str) -> model.Tenant | None:
        if not valid_tenant(token):
            return None
        return await self._worker.run(self._get_tenant, token)

    def _get_tenant(self, token: str) -> model.Tenant | None:
        row = self._tenants_db().execute("SELECT data FROM tenants WHERE token = ?", (token,)).fetchone()
        return None if row is None else _parse(model.Tenant, row[0])

    async def list_tenants(self) -> list[model.Tenant]:
        return await self._worker.run(self._list_tenants)

    def _list_tenants(self) -> list[model.Tenant]:
        rows = self._tenants_db().execute("SELECT data FROM tenants ORDER BY seq").fetchall()
        return [_parse(model.Tenant, data) for (data,) in rows]

    # ------------------------------------------------------------------ device types

    async def create_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType:
        if not dt.token:
            raise InvalidRequest("device type token must not be empty")
        return await self._worker.run(self._create_device_type, tenant, _copy(dt))

    def _create_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType:
        conn = self._writable(tenant)
        try:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO device_types (token, data) VALUES (?, ?)", (dt.token, dt.SerializeToString())
                )
        except sqlite3.IntegrityError as err:
            raise Conflict(f"device type {dt.token!r} already exists in tenant {tenant!r}") from err
        return dt

    async def get_device_type(self, tenant: str, token: str) -> model.DeviceType | None:
        return await self._worker.run(self._get_one, tenant, "device_types", token, model.DeviceType)

    async def list_device_types(self, tenant: str, page: int, page_size: int) -> Page[model.DeviceType]:
        limit, offset = check_page(page, page_size)
        items, total = await self._worker.run(
            self._list, tenant, "device_types", model.DeviceType, limit, offset
        )
        return Page(items, total, page, page_size)

    async def update_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType:
        """Replace the type's name, description and commands; NotFound if absent."""
        return await self._worker.run(self._update_device_type, tenant, _copy(dt))

    def _update_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType:
        conn = self._readable(tenant)
        with _maybe_transaction(conn):
            if (
                conn is None
                or not conn.execute(
                    "UPDATE device_types SET data = ? WHERE token = ?", (dt.SerializeToString(), dt.token)
                ).rowcount
            ):
                raise NotFound(f"device type {dt.token!r} does not exist in tenant {tenant!r}")
        return dt

    async def delete_device_type(self, tenant: str, token: str) -> None:
        """NotFound if absent; InUse while a device has the type (one transaction: a device
        cannot take the type between the check and the delete)."""
        await self._worker.run(self._delete_device_type, tenant, token)

    def _delete_device_type(self, tenant: str, token: str) -> None:
        conn = self._readable(tenant)
        with _maybe_transaction(conn):
            if (
                conn is None
                or conn.execute("SELECT 1 FROM device_types WHERE token = ?", (token,)).fetchone() is None
            ):
                raise NotFound(f"device type {token!r} does not exist in tenant {tenant!r}")
            user = conn.execute(
                "SELECT token FROM devices WHERE device_type = ? LIMIT 1", (token,)
            ).fetchone()
            if user is not None:
                raise InUse(
                    f"device type {token!r} is the type of device {user[0]!r}; delete the device or "
                    "change its type first"
                )
            conn.execute("DELETE FROM device_types WHERE token = ?", (token,))

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
        created = await self._worker.run(self._create_device, stored)
        self._cache.put_device(created.tenant, created.token, created.SerializeToString())
        return _copy(created)

    @staticmethod
    def _need_device_type(conn: sqlite3.Connection, device: model.Device) -> None:
        if (
            conn.execute("SELECT 1 FROM device_types WHERE token = ?", (device.device_type,)).fetchone()
            is None
        ):
            raise NotFound(f"device type {device.device_type!r} does not exist in tenant {device.tenant!r}")

    def _create_device(self, device: model.Device) -> model.Device:
        conn = self._writable(device.tenant)
        try:
            with transaction(conn):
                self._need_device_type(conn, device)
                conn.execute(
                    "INSERT INTO devices (token, device_type, data) VALUES (?, ?, ?)",
                    (device.token, device.device_type, device.SerializeToString()),
                )
        except sqlite3.IntegrityError as err:
            raise Conflict(f"device {device.token!r} already exists in tenant {device.tenant!r}") from err
        return device

    async def get_device(self, tenant: str, token: str) -> model.Device | None:
        """The device, or None. Found devices are served from memory after the first lookup."""
        cached = self._cache.device(tenant, token)
        if cached is not None:
            return _parse(model.Device, cached)
        data = await self._worker.run(self._get_data, tenant, "devices", token)
        if data is None:
            return None
        self._cache.put_device(tenant, token, data)
        return _parse(model.Device, data)

    async def list_devices(self, tenant: str, page: int, page_size: int) -> Page[model.Device]:
        limit, offset = check_page(page, page_size)
        items, total = await self._worker.run(self._list, tenant, "devices", model.Device, limit, offset)
        return Page(items, total, page, page_size)

    async def update_device(self, device: model.Device) -> model.Device:
        """Replace the device's type, comments and metadata (token, tenant and ``created_ms``
        stay); NotFound if the device or its type does not exist."""
        if not device.device_type:
            raise InvalidRequest("device must name a device type")
        try:
            updated = await self._worker.run(self._update_device, _copy(device))
        finally:
            self._cache.drop_device(device.tenant, device.token)
        return _copy(updated)

    def _update_device(self, device: model.Device) -> model.Device:
        conn = self._readable(device.tenant)
        with _maybe_transaction(conn):
            row = (
                None
                if conn is None
                else conn.execute("SELECT data FROM devices WHERE token = ?", (device.token,)).fetchone()
            )
            if conn is None or row is None:
                raise NotFound(f"device {device.token!r} does not exist in tenant {device.tenant!r}")
            self._need_device_type(conn, device)
            device.created_ms = _parse(model.Device, row[0]).created_ms
            conn.execute(
                "UPDATE devices SET device_type = ?, data = ? WHERE token = ?",
                (device.device_type, device.SerializeToString(), device.token),
            )
        return device

    async def delete_device(self, tenant: str, token: str) -> None:
        """NotFound if absent; InUse while it has an ACTIVE assignment (checked in the delete's
        transaction, so an assignment cannot be made in between)."""
        try:
            await self._worker.run(self._delete_device, tenant, token)
        finally:
            self._cache.drop_device(tenant, token)
            self._cache.drop_assignment(tenant, token)

    def _delete_device(self, tenant: str, token: str) -> None:
        conn = self._readable(tenant)
        with _maybe_transaction(conn):
            if (
                conn is None
                or conn.execute("SELECT 1 FROM devices WHERE token = ?", (token,)).fetchone() is None
            ):
                raise NotFound(f"device {token!r} does not exist in tenant {tenant!r}")
            active = conn.execute(
                "SELECT token FROM assignments WHERE device = ? AND status = ?", (token, int(_ACTIVE))
            ).fetchone()
            if active is not None:
                raise InUse(f"device {token!r} has active assignment {active[0]!r}; release it first")
            conn.execute("DELETE FROM devices WHERE token = ?", (token,))

    # ------------------------------------------------------------------ assignments

    async def create_assignment(self, assignment: model.Assignment) -> model.Assignment:
        """Store an ACTIVE assignment (token defaults to a uuid4, ``active_ms`` to now).
        NotFound for an unknown tenant or device; Conflict for a duplicate token or when the
        device already has an active assignment."""
        if not assignment.device:
            raise InvalidRequest("assignment must name a device")
        stored = _copy(assignment)
        if not stored.token:
            stored.token = uuid.uuid4().hex
        stored.status = _ACTIVE
        stored.released_ms = 0
        if not stored.active_ms:
            stored.active_ms = now_ms()
        try:
            return await self._worker.run(self._create_assignment, stored)
        finally:
            self._cache.drop_assignment(stored.tenant, stored.device)

    def _create_assignment(self, a: model.Assignment) -> model.Assignment:
        conn = self._writable(a.tenant)
        try:
            with transaction(conn):
                if conn.execute("SELECT 1 FROM devices WHERE token = ?", (a.device,)).fetchone() is None:
                    raise NotFound(f"device {a.device!r} does not exist in tenant {a.tenant!r}")
                conn.execute(
                    "INSERT INTO assignments (token, device, status, data) VALUES (?, ?, ?, ?)",
                    (a.token, a.device, int(a.status), a.SerializeToString()),
                )
        except sqlite3.IntegrityError as err:
            taken = conn.execute("SELECT 1 FROM assignments WHERE token = ?", (a.token,)).fetchone()
            if taken is not None:
                raise Conflict(f"assignment {a.token!r} already exists in tenant {a.tenant!r}") from err
            raise Conflict(f"device {a.device!r} already has an active assignment") from err
        return a

    async def get_assignment(self, tenant: str, token: str) -> model.Assignment | None:
        return await self._worker.run(self._get_one, tenant, "assignments", token, model.Assignment)

    async def active_assignment(self, tenant: str, device: str) -> model.Assignment | None:
        hit, cached = self._cache.assignment(tenant, device)
        if hit:
            return None if cached is None else _parse(model.Assignment, cached)
        data = await self._worker.run(self._active_assignment, tenant, device)
        self._cache.put_assignment(tenant, device, data)
        return None if data is None else _parse(model.Assignment, data)

    def _active_assignment(self, tenant: str, device: str) -> bytes | None:
        conn = self._readable(tenant)
        if conn is None:
            return None
        row = conn.execute(
            "SELECT data FROM assignments WHERE device = ? AND status = ?", (device, int(_ACTIVE))
        ).fetchone()
        return None if row is None else bytes(row[0])

    async def list_assignments(
        self, tenant: str, device: str | None, page: int, page_size: int
    ) -> Page[model.Assignment]:
        """A tenant's (or one device's) assignments, newest first."""
        limit, offset = check_page(page, page_size)
        items, total = await self._worker.run(self._list_assignments, tenant, device, limit, offset)
        return Page(items, total, page, page_size)

    def _list_assignments(
        self, tenant: str, device: str | None, limit: int, offset: int
    ) -> tuple[list[model.Assignment], int]:
        conn = self._readable(tenant)
        if conn is None:
            return [], 0
        where, args = ("WHERE device = ?", [device]) if device is not None else ("", [])
        (total,) = conn.execute(f"SELECT count(*) FROM assignments {where}", args).fetchone()
        rows = conn.execute(
            f"SELECT data FROM assignments {where} ORDER BY seq DESC LIMIT ? OFFSET ?", [*args, limit, offset]
        ).fetchall()
        return [_parse(model.Assignment, data) for (data,) in rows], int(total)

    async def release_assignment(self, tenant: str, token: str) -> model.Assignment:
        """Mark the assignment RELEASED (idempotent). NotFound if there is no such assignment."""
        released = await self._worker.run(self._release_assignment, tenant, token)
        self._cache.drop_assignment(tenant, released.device)
        return released

    def _release_assignment(self, tenant: str, token: str) -> model.Assignment:
        conn = self._readable(tenant)
        row = None
        if conn is not None:
            row = conn.execute("SELECT data FROM assignments WHERE token = ?", (token,)).fetchone()
        if conn is None or row is None:
            raise NotFound(f"assignment {token!r} does not exist in tenant {tenant!r}")
        a = _parse(model.Assignment, row[0])
        if a.status == _RELEASED:
            return a
        a.status = _RELEASED
        a.released_ms = now_ms()
        with transaction(conn):
            conn.execute(
                "UPDATE assignments SET status = ?, data = ? WHERE token = ?",
                (int(a.status), a.SerializeToString(), token),
            )
        return a

    # ------------------------------------------------------------------ customer types

    async def create_customer_type(self, tenant: str, ct: model.CustomerType) -> model.CustomerType:
        """Store ``ct`` (``created_ms`` defaults to now); NotFound / Conflict as for device types."""
        if not ct.token:
            raise InvalidRequest("customer type token must not be empty")
        stored = _copy(ct)
        if not stored.created_ms:
            stored.created_ms = now_ms()
        return await self._worker.run(self._create_customer_type, tenant, stored)

    def _create_customer_type(self, tenant: str, ct: model.CustomerType) -> model.CustomerType:
        conn = self._writable(tenant)
        try:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO customer_types (token, data) VALUES (?, ?)",
                    (ct.token, ct.SerializeToString()),
                )
        except sqlite3.IntegrityError as err:
            raise Conflict(f"customer type {ct.token!r} already exists in tenant {tenant!r}") from err
        return ct

    async def get_customer_type(self, tenant: str, token: str) -> model.CustomerType | None:
        return await self._worker.run(self._get_one, tenant, "customer_types", token, model.CustomerType)

    async def list_customer_types(self, tenant: str, page: int, page_size: int) -> Page[model.CustomerType]:
        limit, offset = check_page(page, page_size)
        items, total = await self._worker.run(
            self._list, tenant, "customer_types", model.CustomerType, limit, offset
        )
        return Page(items, total, page, page_size)

    async def update_customer_type(self, tenant: str, ct: model.CustomerType) -> model.CustomerType:
        return await self._worker.run(self._update_customer_type, tenant, _copy(ct))

    def _update_customer_type(self, tenant: str, ct: model.CustomerType) -> model.CustomerType:
        conn = self._readable(tenant)
        with _maybe_transaction(conn):
            row = (
                None
                if conn is None
                else conn.execute("SELECT data FROM customer_types WHERE token = ?", (ct.token,)).fetchone()
            )
            if conn is None or row is None:
                raise NotFound(f"customer type {ct.token!r} does not exist in tenant {tenant!r}")
            ct.created_ms = _parse(model.CustomerType, row[0]).created_ms
            conn.execute(
                "UPDATE customer_types SET data = ? WHERE token = ?", (ct.SerializeToString(), ct.token)
            )
        return ct

    async def delete_customer_type(self, tenant: str, token: str) -> None:
        await self._worker.run(self._delete_customer_type, tenant, token)

    def _delete_customer_type(self, tenant: str, token: str) -> None:
        conn = self._readable(tenant)
        with _maybe_transaction(conn):
            if (
                conn is None
                or conn.execute("SELECT 1 FROM customer_types WHERE token = ?", (token,)).fetchone() is None
            ):
                raise NotFound(f"customer type {token!r} does not exist in tenant {tenant!r}")
            user = conn.execute(
                "SELECT token FROM customers WHERE customer_type = ? LIMIT 1", (token,)
            ).fetchone()
            if user is not None:
                raise InUse(
                    f"customer type {token!r} is the type of customer {user[0]!r}; delete or change it first"
                )
            conn.execute("DELETE FROM customer_types WHERE token = ?", (token,))

    # ------------------------------------------------------------------ customers

    async def create_customer(self, tenant: str, customer: model.Customer) -> model.Customer:
        if not customer.token:
            raise InvalidRequest("customer token must not be empty")
        if not customer.customer_type:
            raise InvalidRequest("customer must name a customer type")
        stored = _copy(customer)
        if not stored.created_ms:
            stored.created_ms = now_ms()
        return await self._worker.run(self._create_customer, tenant, stored)

    def _check_customer_refs(self, conn: sqlite3.Connection, tenant: str, c: model.Customer) -> None:
        if (
            conn.execute("SELECT 1 FROM customer_types WHERE token = ?", (c.customer_type,)).fetchone()
            is None
        ):
            raise NotFound(f"customer type {c.customer_type!r} does not exist in tenant {tenant!r}")
        if not c.parent:
            return
        if c.parent == c.token:
            raise Cycle(f"customer {c.token!r} cannot be its own parent")
        # Walk up from the new parent: meeting the customer itself means a cycle.
        seen: set[str] = set()
        current = c.parent
        while current:
            if current == c.token:
                raise Cycle(
                    f"parent {c.parent!r} is below customer {c.token!r}: the customer tree would have a cycle"
                )
            if current in seen:  # a cycle already stored (cannot happen through this class)
                break
            seen.add(current)
            row = conn.execute("SELECT parent FROM customers WHERE token = ?", (current,)).fetchone()
            if row is None:
                if current == c.parent:
                    raise NotFound(f"parent customer {c.parent!r} does not exist in tenant {tenant!r}")
                break
            current = row[0]

    def _create_customer(self, tenant: str, c: model.Customer) -> model.Customer:
        conn = self._writable(tenant)
        try:
            with transaction(conn):
                self._check_customer_refs(conn, tenant, c)
                conn.execute(
                    "INSERT INTO customers (token, customer_type, parent, data) VALUES (?, ?, ?, ?)",
                    (c.token, c.customer_type, c.parent, c.SerializeToString()),
                )
        except sqlite3.IntegrityError as err:
            raise Conflict(f"customer {c.token!r} already exists in tenant {tenant!r}") from err
        return c

    async def get_customer(self, tenant: str, token: str) -> model.Customer | None:
        return await self._worker.run(self._get_one, tenant, "customers", token, model.Customer)

    async def list_customers(
        self, tenant: str, parent: str | None, page: int, page_size: int
    ) -> Page[model.Customer]:
        limit, offset = check_page(page, page_size)
        items, total = await self._worker.run(self._list_customers, tenant, parent, limit, offset)
        return Page(items, total, page, page_size)

    def _list_customers(
        self, tenant: str, parent: str | None, limit: int, offset: int
    ) -> tuple[list[model.Customer], int]:
        if parent is None:
            return self._list(tenant, "customers", model.Customer, limit, offset)
        conn = self._readable(tenant)
        if conn is None:
            return [], 0
        (total,) = conn.execute("SELECT count(*) FROM customers WHERE parent = ?", (parent,)).fetchone()
        rows = conn.execute(
            "SELECT data FROM customers WHERE parent = ? ORDER BY seq LIMIT ? OFFSET ?",
            (parent, limit, offset),
        ).fetchall()
        return [_parse(model.Customer, data) for (data,) in rows], int(total)

    async def update_customer(self, tenant: str, customer: model.Customer) -> model.Customer:
        if not customer.customer_type:
            raise InvalidRequest("customer must name a customer type")
        return await self._worker.run(self._update_customer, tenant, _copy(customer))

    def _update_customer(self, tenant: str, c: model.Customer) -> model.Customer:
        conn = self._readable(tenant)
        with _maybe_transaction(conn):
            row = (
                None
                if conn is None
                else conn.execute("SELECT data FROM customers WHERE token = ?", (c.token,)).fetchone()
            )
            if conn is None or row is None:
                raise NotFound(f"customer {c.token!r} does not exist in tenant {tenant!r}")
            self._check_customer_refs(conn, tenant, c)
            c.created_ms = _parse(model.Customer, row[0]).created_ms
            conn.execute(
                "UPDATE customers SET customer_type = ?, parent = ?, data = ? WHERE token = ?",
                (c.customer_type, c.parent, c.SerializeToString(), c.token),
            )
        return c

    async def delete_customer(self, tenant: str, token: str) -> None:
        await self._worker.run(self._delete_customer, tenant, token)

    def _delete_customer(self, tenant: str, token: str) -> None:
        conn = self._readable(tenant)
        with _maybe_transaction(conn):
            if (
                conn is None
                or conn.execute("SELECT 1 FROM customers WHERE token = ?", (token,)).fetchone() is None
            ):
                raise NotFound(f"customer {token!r} does not exist in tenant {tenant!r}")
            child = conn.execute("SELECT token FROM customers WHERE parent = ? LIMIT 1", (token,)).fetchone()
            if child is not None:
                raise InUse(f"customer {token!r} has child customer {child[0]!r}; delete or move it first")
            for a in self._active_of_customer(conn, token):
                raise InUse(
                    f"customer {token!r} is named by active assignment {a.token!r} of device {a.device!r}; "
                    "release it first"
                )
            conn.execute("DELETE FROM customers WHERE token = ?", (token,))

    @staticmethod
    def _active_of_customer(conn: sqlite3.Connection, customer: str) -> list[model.Assignment]:
        """The ACTIVE assignments naming ``customer``, by device (a scan of the active ones:
        the customer is inside the serialized assignment)."""
        rows = conn.execute("SELECT data FROM assignments WHERE status = ? ORDER BY device", (int(_ACTIVE),))
        return [a for (data,) in rows if (a := _parse(model.Assignment, data)).customer == customer]

    async def customer_devices(
        self, tenant: str, customer: str, page: int, page_size: int
    ) -> Page[model.Device]:
        limit, offset = check_page(page, page_size)
        items, total = await self._worker.run(self._customer_devices, tenant, customer, limit, offset)
        return Page(items, total, page, page_size)

    def _customer_devices(
        self, tenant: str, customer: str, limit: int, offset: int
    ) -> tuple[list[model.Device], int]:
        conn = self._readable(tenant)
        if conn is None:
            return [], 0
        active = self._active_of_customer(conn, customer)
        devices: list[model.Device] = []
        for a in active[offset : offset + limit]:
            row = conn.execute("SELECT data FROM devices WHERE token = ?", (a.device,)).fetchone()
            if row is not None:
                devices.append(_parse(model.Device, row[0]))
        return devices, len(active)

    # ------------------------------------------------------------------ shared reads (worker)

    def _get_data(self, tenant: str, table: str, token: str) -> bytes | None:
        conn = self._readable(tenant)
        if conn is None:
            return None
        row = conn.execute(f"SELECT data FROM {table} WHERE token = ?", (token,)).fetchone()
        return None if row is None else bytes(row[0])

    def _get_one(self, tenant: str, table: str, token: str, cls: type[M]) -> M | None:
        data = self._get_data(tenant, table, token)
        return None if data is None else _parse(cls, data)

    def _list(self, tenant: str, table: str, cls: type[M], limit: int, offset: int) -> tuple[list[M], int]:
        conn = self._readable(tenant)
        if conn is None:
            return [], 0
        (total,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        rows = conn.execute(
            f"SELECT data FROM {table} ORDER BY seq LIMIT ? OFFSET ?", (limit, offset)
        ).fetchall()
        return [_parse(cls, data) for (data,) in rows], int(total)


# ---------------------------------------------------------------------- invocations

_QUEUED = svc.COMMAND_STATUS_QUEUED
_DELIVERED = svc.COMMAND_STATUS_DELIVERED
_ANSWERED = svc.COMMAND_STATUS_ANSWERED
_FAILED = svc.COMMAND_STATUS_FAILED
_EXPIRED = svc.COMMAND_STATUS_EXPIRED
_LATE = svc.COMMAND_STATUS_LATE
_FAILURES = frozenset({_FAILED, _EXPIRED})
_FINAL = frozenset({_ANSWERED, _LATE, *_FAILURES})
_KNOWN = frozenset({_QUEUED, _DELIVERED, *_FINAL})
#: What ``update_status`` may be asked for (LATE is derived, never requested).
REQUESTABLE = _KNOWN - {_LATE}


Status: TypeAlias = svc.CommandStatus.ValueType


def next_status(current: Status, requested: Status) -> Status | None:
    """The status an invocation in ``current`` takes when ``requested`` is applied, or None if
    the update is ignored (see the module docstring)."""
    if requested == _ANSWERED and current in _FAILURES:
        return _LATE
    if current in _FINAL or requested == current or requested == _LATE:
        return None
    if requested == _QUEUED and current == _DELIVERED:
        return None
    return requested


def apply_status(
    inv: svc.InvocationState, requested: Status, reason: str, response_json: str | None, now: int
) -> svc.InvocationState | None:
    """``inv`` moved by ``requested`` (changed in place), or None if the update is ignored. A
    late answer keeps the failure's reason; a response is recorded once, the first."""
    status = next_status(inv.status, requested)
    if status is None:
        return None
    inv.status = status
    if status != _LATE:
        inv.reason = reason
    if response_json is not None:
        inv.response_json = response_json
    inv.updated_ms = max(now, inv.updated_ms)
    return inv


def check_requested(status: int) -> None:
    """InvalidRequest unless ``update_status`` may be asked for ``status``."""
    if status not in REQUESTABLE:
        raise InvalidRequest(
            f"unknown command status {status}"
            if status not in _KNOWN
            else "LATE is not requested: an answer (ANSWERED) to a failed invocation makes it late"
        )


class SqliteInvocationStore:
    """Implements :class:`fieldgate.cloud.store.invocations.InvocationStore`: ``invocations-<tenant>.db``."""

    def __init__(self, data_dir: Path, *, synchronous: Synchronous = "FULL") -> None:
        self._data_dir = data_dir
        self._worker = SqliteWorker("invocations", error=StoreError, synchronous=synchronous)

    async def start(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    def _db(self, tenant: str, *, create: bool) -> sqlite3.Connection | None:
        if not valid_tenant(tenant):
            return None
        path = self._data_dir / f"invocations-{tenant}.db"
        return self._worker.connect(path, _INVOCATIONS_SCHEMA, create=create)

    async def ensure_tenant(self, tenant: str) -> None:
        """Create ``invocations-<tenant>.db`` now."""
        require_tenant(tenant)
        await self._worker.run(self._db, tenant, create=True)

    async def delete_tenant(self, tenant: str) -> bool:
        """Delete ``invocations-<tenant>.db``; False if it did not exist."""
        if not valid_tenant(tenant):
            return False
        return await self._worker.run(self._worker.remove, self._data_dir / f"invocations-{tenant}.db")

    def forget_tenant(self, tenant: str) -> None:
        """Close the connection to the tenant's file (another instance deleted it)."""
        if valid_tenant(tenant):
            self._worker.close_soon(self._data_dir / f"invocations-{tenant}.db")

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
        return await self._worker.run(self._create, stored)

    def _create(self, inv: svc.InvocationState) -> svc.InvocationState:
        conn = self._db(inv.tenant, create=True)
        assert conn is not None
        try:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO invocations (id, device, status, expires_ms, data) VALUES (?, ?, ?, ?, ?)",
                    (inv.id, inv.device, int(inv.status), inv.expires_ms, inv.SerializeToString()),
                )
        except sqlite3.IntegrityError as err:
            raise Conflict(f"invocation {inv.id!r} already exists") from err
        return inv

    async def get(self, tenant: str, invocation_id: str) -> svc.InvocationState | None:
        return await self._worker.run(self._get, tenant, invocation_id)

    def _get(self, tenant: str, invocation_id: str) -> svc.InvocationState | None:
        conn = self._db(tenant, create=False)
        if conn is None:
            return None
        row = conn.execute("SELECT data FROM invocations WHERE id = ?", (invocation_id,)).fetchone()
        return None if row is None else _parse(svc.InvocationState, row[0])

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
        return await self._worker.run(self._update, tenant, invocation_id, status, reason, response_json)

    def _update(
        self,
        tenant: str,
        invocation_id: str,
        status: svc.CommandStatus.ValueType,
        reason: str,
        response_json: str | None,
    ) -> svc.InvocationState | None:
        conn = self._db(tenant, create=False)
        if conn is None:
            return None
        with transaction(conn):
            row = conn.execute("SELECT data FROM invocations WHERE id = ?", (invocation_id,)).fetchone()
            if row is None:
                return None
            inv = _parse(svc.InvocationState, row[0])
            moved = apply_status(inv, status, reason, response_json, now_ms())
            if moved is None:
                return inv
            conn.execute(
                "UPDATE invocations SET status = ?, data = ? WHERE id = ?",
                (int(moved.status), moved.SerializeToString(), invocation_id),
            )
        return moved

    async def pending_for_device(self, tenant: str, device: str) -> list[svc.InvocationState]:
        """Invocations still QUEUED for ``device``, oldest first."""
        return await self._worker.run(self._queued, tenant, device)

    async def list_pending(self, tenant: str) -> list[svc.InvocationState]:
        """Every QUEUED invocation of ``tenant``, oldest first (e.g. to re-send after a restart)."""
        return await self._worker.run(self._queued, tenant, None)

    def _queued(self, tenant: str, device: str | None) -> list[svc.InvocationState]:
        conn = self._db(tenant, create=False)
        if conn is None:
            return []
        if device is None:
            rows = conn.execute(
                "SELECT data FROM invocations WHERE status = ? ORDER BY seq", (int(_QUEUED),)
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT data FROM invocations WHERE device = ? AND status = ? ORDER BY seq",
                (device, int(_QUEUED)),
            ).fetchall()
        return [_parse(svc.InvocationState, data) for (data,) in rows]

    async def expire_due(self, now_ms: int, tenant: str | None = None) -> list[svc.InvocationState]:
        """Mark QUEUED invocations whose ``expires_ms`` (non-zero) has passed as EXPIRED
        (reason "ttl expired"), in every tenant or one; returns them. DELIVERED ones are left to
        the edge's response timeout."""
        return await self._worker.run(self._expire_due, now_ms, tenant)

    def _expire_due(self, now: int, tenant: str | None) -> list[svc.InvocationState]:
        if tenant is not None:
            tenants = [tenant]
        else:
            prefix, suffix = "invocations-", ".db"
            tenants = sorted(
                p.name[len(prefix) : -len(suffix)] for p in self._data_dir.glob("invocations-*.db")
            )
        expired: list[svc.InvocationState] = []
        for t in tenants:
            conn = self._db(t, create=False)
            if conn is None:
                continue
            with transaction(conn):
                rows = conn.execute(
                    "SELECT data FROM invocations WHERE status = ? AND expires_ms > 0 AND expires_ms <= ?"
                    " ORDER BY seq",
                    (int(_QUEUED), now),
                ).fetchall()
                updates = []
                for (data,) in rows:
                    inv = _parse(svc.InvocationState, data)
                    inv.status = _EXPIRED
                    inv.reason = "ttl expired"
                    inv.updated_ms = max(now, inv.updated_ms)
                    expired.append(inv)
                    updates.append((int(_EXPIRED), inv.SerializeToString(), inv.id))
                conn.executemany("UPDATE invocations SET status = ?, data = ? WHERE id = ?", updates)
        return expired
