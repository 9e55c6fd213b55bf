"""The registry: tenants, customer types, customers, device types, devices and assignments, per
tenant.

:class:`Registry` is the interface. :class:`RegistryBase` holds every rule of it once — what a
request must name, defaults, what may be changed, what blocks a delete, the customer tree, the
error a caller sees, the in-memory cache of the inbound hot path — over the row primitives of a
backend (:mod:`fieldgate.cloud.store.sqlite.registry`, :mod:`fieldgate.cloud.store.cassandra.registry`).

Rules a caller will notice:

* Writes for a tenant that was never created raise NotFound; reads for it return None / empty
  pages. A taken token raises Conflict. ``delete_tenant`` removes the record with the
  tenant's registry data; ``create_tenant`` starts it empty (whatever an earlier tenant of
  the token left is gone).
* References (:func:`references`): a device names an existing device type, a customer an
  existing customer type and (optionally) parent customer, an assignment an existing device.
  A reference that does not exist is NotFound; a referenced row is not deleted (InUse, naming
  who references it): a device type a device has, a customer type a customer has, a customer
  with a child customer or named by an ACTIVE assignment, a device with an ACTIVE assignment.
  Each backend makes "the reference exists" and "nothing references the row I delete" hold
  together, also when two processes race (SQLite: one transaction; Cassandra: reference counts
  moved by compare-and-set and deletes ``IF refs = 0``): never both win.
* A customer's parent must not be the customer or below it (Cycle, a Conflict): the walk up the
  tree (:func:`parent_walk`) is driven by the backend where its write is atomic.
* A device has at most one ACTIVE assignment (a second is Conflict). Releasing sets RELEASED and
  ``released_ms`` once (two releases at once return the same stored release); releasing again
  returns the released assignment. An assignment without a token gets a uuid4.
* Updates keep the token and ``created_ms``.
* Lists are in creation order, except assignments: newest first.
* :meth:`RegistryBase.get_device` is on the hot path of inbound processing: found devices are
  kept in a bounded in-memory cache (:class:`~fieldgate.cloud.store._registry_cache.RegistryCache`)
  and active assignments for a few seconds; this instance's own writes drop them at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from google.protobuf.message import Message as ProtoMessage

from fieldgate.cloud.errors import Conflict, Cycle, InUse, InvalidRequest, NotFound
from fieldgate.cloud.store import Page
from fieldgate.cloud.store._registry_cache import DEVICE_CACHE_S, RegistryCache
from fieldgate.cloud.store.validators import check_page, require_tenant, valid_tenant
from fieldgate.timeutil import now_ms
from fieldgate.v1 import model_pb2 as model


class Registry(Protocol):
    """Device management data, per tenant."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    # tenants
    async def ensure_tenant(self, tenant: model.Tenant) -> model.Tenant:
        """Create or update (configuration is the source of truth); ``created_ms`` stays the
        first creation's."""

    async def create_tenant(self, tenant: model.Tenant) -> model.Tenant:
        """Create a tenant and its registry storage; Conflict if the token is taken."""

    async def update_tenant(self, tenant: model.Tenant) -> model.Tenant:
        """Replace a tenant's record (name, settings); NotFound if it does not exist."""

    async def delete_tenant(self, token: str) -> bool:
        """Remove the tenant's record and all its registry data (on Cassandra: its whole
        keyspace, events and invocations included). False if there was no such tenant."""

    def forget_tenant(self, token: str) -> None:
        """Drop this instance's caches of a tenant (another process deleted it)."""

    async def get_tenant(self, token: str) -> model.Tenant | None: ...
    async def list_tenants(self) -> list[model.Tenant]: ...

    # customer types
    async def create_customer_type(self, tenant: str, ct: model.CustomerType) -> model.CustomerType: ...
    async def get_customer_type(self, tenant: str, token: str) -> model.CustomerType | None: ...
    async def list_customer_types(
        self, tenant: str, page: int, page_size: int
    ) -> Page[model.CustomerType]: ...
    async def update_customer_type(self, tenant: str, ct: model.CustomerType) -> model.CustomerType:
        """Replace name, description and metadata (``created_ms`` kept); NotFound if absent."""

    async def delete_customer_type(self, tenant: str, token: str) -> None:
        """NotFound if absent; InUse while a customer has this type."""

    # customers (a tree: ``parent`` is another customer of the tenant)
    async def create_customer(self, tenant: str, customer: model.Customer) -> model.Customer:
        """NotFound for an unknown tenant, customer type or parent; Conflict for a taken token."""

    async def get_customer(self, tenant: str, token: str) -> model.Customer | None: ...
    async def list_customers(
        self, tenant: str, parent: str | None, page: int, page_size: int
    ) -> Page[model.Customer]:
        """Customers in creation order; with ``parent``, only its children."""

    async def update_customer(self, tenant: str, customer: model.Customer) -> model.Customer:
        """Replace type, parent, name, description, metadata; NotFound if absent (or an unknown
        type/parent), Cycle when the new parent is the customer or below it."""

    async def delete_customer(self, tenant: str, token: str) -> None:
        """NotFound if absent; InUse while a child customer or an ACTIVE assignment names it."""

    async def customer_devices(
        self, tenant: str, customer: str, page: int, page_size: int
    ) -> Page[model.Device]:
        """The devices whose ACTIVE assignment names ``customer``, by device token."""

    # device types
    async def create_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType: ...
    async def get_device_type(self, tenant: str, token: str) -> model.DeviceType | None: ...
    async def list_device_types(self, tenant: str, page: int, page_size: int) -> Page[model.DeviceType]: ...
    async def update_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType:
        """Replace name, description and commands; NotFound if absent."""

    async def delete_device_type(self, tenant: str, token: str) -> None:
        """NotFound if absent; InUse (naming one) while a device has this type. A device
        created or moved to the type at the same moment on another replica makes one of the
        two fail, never both succeed, and never both fail."""

    # devices
    async def create_device(self, device: model.Device) -> model.Device:
        """NotFound for an unknown tenant or device type; Conflict for a taken token."""

    async def get_device(self, tenant: str, token: str) -> model.Device | None: ...
    async def list_devices(self, tenant: str, page: int, page_size: int) -> Page[model.Device]: ...
    async def update_device(self, device: model.Device) -> model.Device:
        """Replace type, comments and metadata (``created_ms`` kept); NotFound if the device or
        its (new) type does not exist."""

    async def delete_device(self, tenant: str, token: str) -> None:
        """NotFound if absent; InUse while the device has an ACTIVE assignment (an assignment
        created at the same moment makes one of the two fail). Its token is free again."""

    # assignments
    async def create_assignment(self, assignment: model.Assignment) -> model.Assignment: ...
    async def get_assignment(self, tenant: str, token: str) -> model.Assignment | None: ...
    async def active_assignment(self, tenant: str, device: str) -> model.Assignment | None: ...
    async def list_assignments(
        self, tenant: str, device: str | None, page: int, page_size: int
    ) -> Page[model.Assignment]: ...
    async def release_assignment(self, tenant: str, token: str) -> model.Assignment: ...


def default_device_type(token: str = "default") -> model.DeviceType:
    """The device type a tenant starts with and automatically registered devices get unless
    configured otherwise: commands ``ping()`` and ``set-interval(seconds: int, required)`` — what
    the simulators and the README's tour use."""
    return model.DeviceType(
        token=token,
        name="Default device",
        description="Created by fieldgate for automatically registered devices.",
        commands=[
            model.DeviceCommand(name="ping", description="Answer with a command response."),
            model.DeviceCommand(
                name="set-interval",
                description="Change the reporting interval.",
                params=[model.CommandParam(name="seconds", type=model.PARAM_TYPE_INT, required=True)],
            ),
        ],
    )


# --------------------------------------------------------------------------- rows and rules

Kind = Literal["device_type", "device", "assignment", "customer_type", "customer"]
Entity = model.DeviceType | model.Device | model.Assignment | model.CustomerType | model.Customer
LABELS: dict[Kind, str] = {
    "device_type": "device type",
    "device": "device",
    "assignment": "assignment",
    "customer_type": "customer type",
    "customer": "customer",
}
MESSAGES: dict[Kind, type[Entity]] = {
    "device_type": model.DeviceType,
    "device": model.Device,
    "assignment": model.Assignment,
    "customer_type": model.CustomerType,
    "customer": model.Customer,
}
ACTIVE = model.ASSIGNMENT_STATUS_ACTIVE
RELEASED = model.ASSIGNMENT_STATUS_RELEASED

M = TypeVar("M", bound=ProtoMessage)


@dataclass(frozen=True, slots=True)
class Ref:
    """A row of a tenant's registry, named by kind and token: a reference a row makes, or the
    referrer that keeps a row from deletion (``token`` empty: one not visible yet, e.g. a
    device being created on another replica)."""

    kind: Kind
    token: str

    def __str__(self) -> str:
        return f"{LABELS[self.kind]} {self.token!r}"


def kind_of(entity: Entity) -> Kind:
    for kind, cls in MESSAGES.items():
        if isinstance(entity, cls):
            return kind
    raise TypeError(f"not a registry entity: {type(entity).__name__}")


def references(entity: Entity) -> list[Ref]:
    """The rows ``entity`` names, each of which must exist and stays while it is named (an
    assignment's device is held by its ACTIVE status, see :meth:`RegistryBase._assign`; the
    customer it names is checked by the management service, not held)."""
    if isinstance(entity, model.Device):
        return [Ref("device_type", entity.device_type)]
    if isinstance(entity, model.Customer):
        refs = [Ref("customer_type", entity.customer_type)]
        return [*refs, Ref("customer", entity.parent)] if entity.parent else refs
    return []


#: The customer-tree check as a walk: yields a customer token, is sent that customer's parent
#: ("" at the top of the tree, None when there is no such customer).
Walk = Generator[str, str | None, None]


def parent_walk(customer: model.Customer) -> Walk:
    """Walk up from ``customer``'s (new) parent; meeting the customer itself means its new
    parent is below it: Cycle. The backend drives the walk where its write is atomic (SQLite:
    inside the update's transaction) with :func:`drive` or :func:`drive_async`. An unknown
    parent ends the walk (the reference check reports it)."""
    seen: set[str] = set()
    current = customer.parent
    while current:
        if current == customer.token:
            raise Cycle(
                f"parent {customer.parent!r} is below customer {customer.token!r}: "
                "the customer tree would have a cycle"
            )
        if current in seen:  # a cycle already stored (cannot happen through this class)
            return
        seen.add(current)
        parent = yield current
        if parent is None:
            return
        current = parent


def drive(walk: Walk, parent_of: Callable[[str], str | None]) -> None:
    """Run ``walk`` with a synchronous lookup (e.g. inside a SQLite transaction)."""
    try:
        token = next(walk)
        while True:
            token = walk.send(parent_of(token))
    except StopIteration:
        return


async def drive_async(walk: Walk, parent_of: Callable[[str], Awaitable[str | None]]) -> None:
    """Run ``walk`` with an asynchronous lookup."""
    try:
        token = next(walk)
        while True:
            token = walk.send(await parent_of(token))
    except StopIteration:
        return


#: What a primitive reports: done (``"stored"``/``"deleted"``), ``"taken"`` (the token, or for an
#: assignment its token), ``"missing"`` (the row), ``"busy"`` (a device that has an ACTIVE
#: assignment, or is being deleted), or a :class:`Ref`: the reference that does not exist (a
#: write), the referrer that keeps the row (a delete).
Stored = Literal["stored", "taken"] | Ref
Replaced = Literal["stored", "missing"] | Ref
Deleted = Literal["deleted", "missing", "busy"] | Ref
Assigned = Literal["stored", "taken", "busy"] | Ref


def parse(cls: type[M], data: bytes) -> M:
    msg = cls()
    msg.ParseFromString(data)
    return msg


def copy(msg: M) -> M:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def no_tenant(tenant: str) -> NotFound:
    """The error of a write for a tenant that does not exist (or was deleted meanwhile)."""
    return NotFound(f"tenant {tenant!r} does not exist")


def _in(tenant: str) -> str:
    return f"in tenant {tenant!r}"


class RegistryBase:
    """The rules of :class:`Registry` over a backend's primitives (see the module docstring):
    tenant records and each tenant's storage; one keyed row per entity with the columns its
    references and listings need; ACTIVE assignments by device; pages in list order."""

    def __init__(
        self,
        *,
        device_cache_size: int = 100_000,
        assignment_cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        device_cache_s: float = DEVICE_CACHE_S,
    ) -> None:
        self._cache = RegistryCache(device_cache_size, assignment_cache_s, clock, device_cache_s)
        self._known_tenants: set[str] = set()

    # --- primitives: tenants (backends) --------------------------------------------------------

    async def _tenant_read(self, token: str) -> model.Tenant | None:
        raise NotImplementedError

    async def _tenant_all(self) -> list[model.Tenant]:
        """Every tenant record, in creation order."""
        raise NotImplementedError

    async def _tenant_insert(self, tenant: model.Tenant) -> bool:
        """Store a new record; False if the token is taken (of two creators one wins)."""
        raise NotImplementedError

    async def _tenant_put(self, tenant: model.Tenant) -> None:
        """Store the record, new or not (a new one takes its place in creation order)."""
        raise NotImplementedError

    async def _tenant_replace(self, tenant: model.Tenant) -> bool:
        """Replace an existing record; False if there is none."""
        raise NotImplementedError

    async def _tenant_delete(self, token: str) -> bool:
        """Remove the record; False if there was none."""
        raise NotImplementedError

    async def _storage_create(self, tenant: str, *, fresh: bool) -> None:
        """Provision the tenant's registry storage; ``fresh``: first remove what an earlier
        tenant of the token left (a write in flight during its deletion)."""
        raise NotImplementedError

    async def _storage_drop(self, tenant: str) -> bool:
        """Remove the tenant's registry storage; False if there was none."""
        raise NotImplementedError

    def _storage_forget(self, tenant: str) -> None:
        """Drop what this instance holds open of the tenant's storage."""
        raise NotImplementedError

    # --- primitives: rows (backends; reads of a tenant without storage find nothing) -----------

    async def _get(self, tenant: str, kind: Kind, token: str) -> bytes | None:
        raise NotImplementedError

    async def _page(
        self, tenant: str, kind: Kind, limit: int, offset: int, of: str | None = None
    ) -> tuple[list[bytes], int]:
        """A page of ``kind`` in list order and the total; ``of``: only a parent's customers,
        or a device's assignments."""
        raise NotImplementedError

    async def _insert(self, tenant: str, entity: Entity, refs: Sequence[Ref]) -> Stored:
        """Store a new row whose ``refs`` exist and are then held: a delete of one of them
        finds this row, or this insert finds it gone (the first missing is returned)."""
        raise NotImplementedError

    async def _replace(self, tenant: str, entity: Entity, refs: Sequence[Ref], walk: Walk | None) -> Replaced:
        """Replace an existing row, holding its new ``refs`` (and giving back the old ones it
        no longer names); drive ``walk`` over the stored customer tree before writing."""
        raise NotImplementedError

    async def _delete(self, tenant: str, kind: Kind, token: str) -> Deleted:
        """Delete the row unless something references it (see the module docstring)."""
        raise NotImplementedError

    async def _assign(self, assignment: model.Assignment) -> Assigned:
        """Store a new ACTIVE assignment: the device must exist and have no ACTIVE one."""
        raise NotImplementedError

    async def _active(self, tenant: str, device: str) -> bytes | None:
        """The device's ACTIVE assignment."""
        raise NotImplementedError

    async def _release(self, tenant: str, released: model.Assignment) -> model.Assignment | None:
        """Store ``released`` if the assignment is still ACTIVE (compare-and-set), then free
        what marks it active (idempotent: repairs a release cut short). What is stored now;
        None if there is no such assignment."""
        raise NotImplementedError

    async def _customer_devices(
        self, tenant: str, customer: str, limit: int, offset: int
    ) -> tuple[list[bytes], int]:
        """A page of the devices whose ACTIVE assignment names ``customer``, by device token,
        and the number of such assignments."""
        raise NotImplementedError

    # --- tenants -------------------------------------------------------------------------------

    async def ensure_tenant(self, tenant: model.Tenant) -> model.Tenant:
        """Create ``tenant`` or update its settings to the given ones (configuration is the
        source of truth); returns what is stored."""
        require_tenant(tenant.token)
        stored = copy(tenant)
        if not stored.created_ms:
            current = await self._tenant_read(stored.token)
            stored.created_ms = current.created_ms if current is not None and current.created_ms else now_ms()
        await self._tenant_put(stored)
        await self._storage_create(stored.token, fresh=False)
        self._known_tenants.add(stored.token)
        return stored

    async def create_tenant(self, tenant: model.Tenant) -> model.Tenant:
        """Create ``tenant`` and its (empty) storage; Conflict if the token is taken."""
        require_tenant(tenant.token)
        stored = copy(tenant)
        if not stored.created_ms:
            stored.created_ms = now_ms()
        if not await self._tenant_insert(stored):
            raise Conflict(f"tenant {stored.token!r} already exists")
        self.forget_tenant(stored.token)  # of an earlier tenant of the token
        await self._storage_create(stored.token, fresh=True)
        self._known_tenants.add(stored.token)
        return stored

    async def update_tenant(self, tenant: model.Tenant) -> model.Tenant:
        """Replace the record of an existing tenant (its ``created_ms`` is kept)."""
        current = await self.get_tenant(tenant.token)
        if current is None:
            raise NotFound(f"tenant {tenant.token[:70]!r} does not exist")
        stored = copy(tenant)
        stored.created_ms = current.created_ms
        if not await self._tenant_replace(stored):
            raise NotFound(f"tenant {tenant.token!r} does not exist")
        return stored

    async def delete_tenant(self, token: str) -> bool:
        """Remove the tenant's record and its registry storage; False if neither existed."""
        if not valid_tenant(token):
            return False
        try:
            deleted = await self._tenant_delete(token)
            self.forget_tenant(token)
            dropped = await self._storage_drop(token)
        finally:
            self.forget_tenant(token)
        return deleted or dropped

    def forget_tenant(self, token: str) -> None:
        """Forget what this instance holds of ``token`` (open storage, found devices, active
        assignments): another process (or this one) deleted it."""
        self._known_tenants.discard(token)
        if valid_tenant(token):
            self._storage_forget(token)
        self._cache.forget_tenant(token)

    async def get_tenant(self, token: str) -> model.Tenant | None:
        return await self._tenant_read(token) if valid_tenant(token) else None

    async def list_tenants(self) -> list[model.Tenant]:
        return await self._tenant_all()

    async def _writable(self, tenant: str) -> None:
        """NotFound unless ``tenant`` exists (a write creates its storage when needed)."""
        if tenant in self._known_tenants:
            return
        if not valid_tenant(tenant) or await self._tenant_read(tenant) is None:
            raise no_tenant(tenant)
        self._known_tenants.add(tenant)

    # --- shared --------------------------------------------------------------------------------

    async def _one(self, tenant: str, kind: Kind, token: str, cls: type[M]) -> M | None:
        if not valid_tenant(tenant):
            return None
        data = await self._get(tenant, kind, token)
        return None if data is None else parse(cls, data)

    async def _list(
        self, tenant: str, kind: Kind, cls: type[M], page: int, page_size: int, of: str | None = None
    ) -> Page[M]:
        limit, offset = check_page(page, page_size)
        if not valid_tenant(tenant):
            return Page([], 0, page, page_size)
        rows, total = await self._page(tenant, kind, limit, offset, of)
        return Page([parse(cls, data) for data in rows], total, page, page_size)

    async def _create(self, tenant: str, entity: Entity) -> None:
        await self._writable(tenant)
        outcome = await self._insert(tenant, entity, references(entity))
        if outcome == "taken":
            raise Conflict(f"{LABELS[kind_of(entity)]} {entity.token!r} already exists {_in(tenant)}")
        if isinstance(outcome, Ref):
            raise self._unknown(tenant, outcome)

    async def _update(self, tenant: str, entity: Entity, walk: Walk | None = None) -> None:
        outcome = await self._replace(tenant, entity, references(entity), walk)
        if outcome == "missing":
            raise NotFound(f"{LABELS[kind_of(entity)]} {entity.token!r} does not exist {_in(tenant)}")
        if isinstance(outcome, Ref):
            raise self._unknown(tenant, outcome)

    async def _kept(self, tenant: str, entity: Entity) -> int:
        """The stored ``created_ms`` of ``entity``'s row; NotFound if there is none."""
        kind = kind_of(entity)
        old = await self._one(tenant, kind, entity.token, MESSAGES[kind])
        if old is None:
            raise NotFound(f"{LABELS[kind]} {entity.token!r} does not exist {_in(tenant)}")
        return int(getattr(old, "created_ms", 0))

    @staticmethod
    def _unknown(tenant: str, ref: Ref) -> NotFound:
        what = "parent customer" if ref.kind == "customer" else LABELS[ref.kind]
        return NotFound(f"{what} {ref.token!r} does not exist {_in(tenant)}")

    async def _remove(self, tenant: str, kind: Kind, token: str) -> None:
        outcome = await self._delete(tenant, kind, token) if valid_tenant(tenant) else "missing"
        if outcome == "deleted":
            return
        if outcome == "missing":
            raise NotFound(f"{LABELS[kind]} {token!r} does not exist {_in(tenant)}")
        if outcome == "busy":
            raise Conflict(f"{LABELS[kind]} {token!r} is being deleted by another request")
        raise await self._in_use(tenant, kind, token, outcome)

    async def _in_use(self, tenant: str, kind: Kind, token: str, by: Ref) -> InUse:
        what = f"{LABELS[kind]} {token!r}"
        if by.kind == "assignment":
            a = await self.get_assignment(tenant, by.token)
            device = f" of device {a.device!r}" if a is not None else ""
            if kind == "device":
                return InUse(f"{what} has active assignment {by.token!r}; release it first")
            return InUse(f"{what} is named by active assignment {by.token!r}{device}; release it first")
        if not by.token:
            return InUse(f"{what} is in use by a {LABELS[by.kind]} being written; try again")
        if kind == "customer":
            return InUse(f"{what} has child customer {by.token!r}; delete or move it first")
        if kind == "device_type":
            return InUse(
                f"{what} is the type of device {by.token!r}; delete the device or change its type first"
            )
        return InUse(f"{what} is the type of {by}; delete or change it first")

    # --- customer types ------------------------------------------------------------------------

    async def create_customer_type(self, tenant: str, ct: model.CustomerType) -> model.CustomerType:
        """Store ``ct`` (``created_ms`` defaults to now)."""
        if not ct.token:
            raise InvalidRequest("customer type token must not be empty")
        stored = copy(ct)
        if not stored.created_ms:
            stored.created_ms = now_ms()
        await self._create(tenant, stored)
        return stored

    async def get_customer_type(self, tenant: str, token: str) -> model.CustomerType | None:
        return await self._one(tenant, "customer_type", token, model.CustomerType)

    async def list_customer_types(self, tenant: str, page: int, page_size: int) -> Page[model.CustomerType]:
        return await self._list(tenant, "customer_type", model.CustomerType, page, page_size)

    async def update_customer_type(self, tenant: str, ct: model.CustomerType) -> model.CustomerType:
        stored = copy(ct)
        stored.created_ms = await self._kept(tenant, stored)
        await self._update(tenant, stored)
        return stored

    async def delete_customer_type(self, tenant: str, token: str) -> None:
        await self._remove(tenant, "customer_type", token)

    # --- customers -----------------------------------------------------------------------------

    @staticmethod
    def _check_customer(customer: model.Customer) -> None:
        if not customer.customer_type:
            raise InvalidRequest("customer must name a customer type")
        if customer.parent and customer.parent == customer.token:
            raise Cycle(f"customer {customer.token!r} cannot be its own parent")

    async def create_customer(self, tenant: str, customer: model.Customer) -> model.Customer:
        if not customer.token:
            raise InvalidRequest("customer token must not be empty")
        self._check_customer(customer)
        stored = copy(customer)
        if not stored.created_ms:
            stored.created_ms = now_ms()
        await self._create(tenant, stored)
        return stored

    async def get_customer(self, tenant: str, token: str) -> model.Customer | None:
        return await self._one(tenant, "customer", token, model.Customer)

    async def list_customers(
        self, tenant: str, parent: str | None, page: int, page_size: int
    ) -> Page[model.Customer]:
        return await self._list(tenant, "customer", model.Customer, page, page_size, parent)

    async def update_customer(self, tenant: str, customer: model.Customer) -> model.Customer:
        self._check_customer(customer)
        stored = copy(customer)
        stored.created_ms = await self._kept(tenant, stored)
        await self._update(tenant, stored, parent_walk(stored))
        return stored

    async def delete_customer(self, tenant: str, token: str) -> None:
        await self._remove(tenant, "customer", token)

    async def customer_devices(
        self, tenant: str, customer: str, page: int, page_size: int
    ) -> Page[model.Device]:
        limit, offset = check_page(page, page_size)
        if not valid_tenant(tenant):
            return Page([], 0, page, page_size)
        rows, total = await self._customer_devices(tenant, customer, limit, offset)
        return Page([parse(model.Device, data) for data in rows], total, page, page_size)

    # --- device types --------------------------------------------------------------------------

    async def create_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType:
        if not dt.token:
            raise InvalidRequest("device type token must not be empty")
        stored = copy(dt)
        await self._create(tenant, stored)
        return stored

    async def get_device_type(self, tenant: str, token: str) -> model.DeviceType | None:
        return await self._one(tenant, "device_type", token, model.DeviceType)

    async def list_device_types(self, tenant: str, page: int, page_size: int) -> Page[model.DeviceType]:
        return await self._list(tenant, "device_type", model.DeviceType, page, page_size)

    async def update_device_type(self, tenant: str, dt: model.DeviceType) -> model.DeviceType:
        """Replace the type's name, description and commands; NotFound if absent."""
        stored = copy(dt)
        if not valid_tenant(tenant):
            raise NotFound(f"device type {dt.token!r} does not exist {_in(tenant)}")
        await self._update(tenant, stored)
        return stored

    async def delete_device_type(self, tenant: str, token: str) -> None:
        await self._remove(tenant, "device_type", token)

    # --- devices -------------------------------------------------------------------------------

    async def create_device(self, device: model.Device) -> model.Device:
        """Store ``device`` (``created_ms`` defaults to now)."""
        if not device.token:
            raise InvalidRequest("device token must not be empty")
        if not device.device_type:
            raise InvalidRequest("device must name a device type")
        stored = copy(device)
        if not stored.created_ms:
            stored.created_ms = now_ms()
        await self._create(stored.tenant, stored)
        self._cache.put_device(stored.tenant, stored.token, stored.SerializeToString())
        return copy(stored)

    async def get_device(self, tenant: str, token: str) -> model.Device | None:
        """The device, or None. Found devices are served from memory after the first lookup."""
        cached = self._cache.device(tenant, token)
        if cached is not None:
            return parse(model.Device, cached)
        data = await self._get(tenant, "device", token) if valid_tenant(tenant) else None
        if data is None:
            return None
        self._cache.put_device(tenant, token, data)
        return parse(model.Device, data)

    async def list_devices(self, tenant: str, page: int, page_size: int) -> Page[model.Device]:
        return await self._list(tenant, "device", model.Device, page, page_size)

    async def update_device(self, device: model.Device) -> model.Device:
        """Replace the device's type, comments and metadata (token, tenant and ``created_ms``
        stay)."""
        if not device.device_type:
            raise InvalidRequest("device must name a device type")
        stored = copy(device)
        try:
            stored.created_ms = await self._kept(device.tenant, stored)
            await self._update(device.tenant, stored)
        finally:
            self._cache.drop_device(device.tenant, device.token)
        return copy(stored)

    async def delete_device(self, tenant: str, token: str) -> None:
        try:
            await self._remove(tenant, "device", token)
        finally:
            self._cache.drop_device(tenant, token)
            self._cache.drop_assignment(tenant, token)

    # --- assignments ---------------------------------------------------------------------------

    async def create_assignment(self, assignment: model.Assignment) -> model.Assignment:
        """Store an ACTIVE assignment (token defaults to a uuid4, ``active_ms`` to now)."""
        if not assignment.device:
            raise InvalidRequest("assignment must name a device")
        a = copy(assignment)
        if not a.token:
            a.token = uuid.uuid4().hex
        a.status = ACTIVE
        a.released_ms = 0
        if not a.active_ms:
            a.active_ms = now_ms()
        try:
            await self._writable(a.tenant)
            outcome = await self._assign(a)
        finally:
            self._cache.drop_assignment(a.tenant, a.device)
        if outcome == "taken":
            raise Conflict(f"assignment {a.token!r} already exists {_in(a.tenant)}")
        if outcome == "busy":
            raise Conflict(f"device {a.device!r} already has an active assignment")
        if isinstance(outcome, Ref):
            raise self._unknown(a.tenant, outcome)
        return a

    async def get_assignment(self, tenant: str, token: str) -> model.Assignment | None:
        return await self._one(tenant, "assignment", token, model.Assignment)

    async def active_assignment(self, tenant: str, device: str) -> model.Assignment | None:
        hit, cached = self._cache.assignment(tenant, device)
        if hit:
            return None if cached is None else parse(model.Assignment, cached)
        data = await self._active(tenant, device) if valid_tenant(tenant) else None
        self._cache.put_assignment(tenant, device, data)
        return None if data is None else parse(model.Assignment, data)

    async def list_assignments(
        self, tenant: str, device: str | None, page: int, page_size: int
    ) -> Page[model.Assignment]:
        """A tenant's (or one device's) assignments, newest first."""
        return await self._list(tenant, "assignment", model.Assignment, page, page_size, device)

    async def release_assignment(self, tenant: str, token: str) -> model.Assignment:
        """Mark the assignment RELEASED (idempotent). NotFound if there is no such assignment."""
        current = await self.get_assignment(tenant, token)
        released = None
        if current is not None:
            want = copy(current)
            if want.status != RELEASED:
                want.status = RELEASED
                want.released_ms = now_ms()
            released = await self._release(tenant, want)
        if released is None:
            raise NotFound(f"assignment {token!r} does not exist {_in(tenant)}")
        self._cache.drop_assignment(tenant, released.device)
        return released
