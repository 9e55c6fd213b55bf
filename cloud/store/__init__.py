"""Storage interfaces of the cloud: the event store (SQLite or Cassandra) and the registry of
tenants, customer types, customers, device types, devices, assignments, invocations and users.

Implementations keep each tenant's data apart (a database or keyspace per tenant); no method
takes a query that spans tenants.

Tenant lifecycle (docs/operations/distributed.md, "Tenants"): the registry holds the tenant's
record (``create_tenant`` claims the token and starts the registry's storage empty;
``delete_tenant`` removes the record with the registry's data). Every other store that keeps
data of a tenant is :class:`TenantOwned`: ``ensure_tenant`` provisions its storage at once,
``delete_tenant`` removes everything it keeps of the tenant, ``forget_tenant`` only drops what
one instance caches about a tenant (another process deleted it). The one list of those stores
is :class:`fieldgate.cloud.tenants.TenantStores`: provisioning, deletion, the processes' forget
path and the lifecycle tests all iterate it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc


@dataclass(frozen=True, slots=True)
class EventQuery:
    tenant: str
    device: str
    # Payload field name of pb.Event ("measurement", "location", ...); None = all.
    kind: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    page: int = 1
    page_size: int = 100


@dataclass(frozen=True, slots=True)
class AssignmentEventQuery:
    """Like :class:`EventQuery`, for the events stamped with one assignment (``pb.Event.assignment``,
    set by inbound enrichment): what a device reported while it was assigned to that asset."""

    tenant: str
    assignment: str
    kind: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    page: int = 1
    page_size: int = 100


#: At most this many events are returned for one invocation (the invocation and its responses;
#: a device that answers one command thousands of times does not make the query unbounded).
MAX_INVOCATION_EVENTS = 1000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    page: int
    page_size: int


@runtime_checkable
class TenantOwned(Protocol):
    """A store that keeps data of each tenant (see the module docstring).

    ``delete_tenant`` never creates anything (a store with no storage for the tenant answers
    False), and ``ensure_tenant`` after ``delete_tenant`` gives empty storage: a tenant created
    again under the same token inherits nothing."""

    async def ensure_tenant(self, tenant: str) -> None:
        """Provision the tenant's storage now (idempotent; may do nothing)."""

    async def delete_tenant(self, tenant: str) -> bool:
        """Remove everything this store keeps of the tenant; False if there was nothing."""

    def forget_tenant(self, tenant: str) -> None:
        """Drop this instance's caches of the tenant (another process deleted it)."""


class EventStore(TenantOwned, Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def add(self, tenant: str, events: Sequence[pb.Event]) -> list[pb.Event]:
        """Store ``events`` idempotently: an event whose (device, alternate_id) is already
        stored is skipped. Returns the events that were newly stored."""

    async def list_device_events(self, query: EventQuery) -> Page[pb.Event]:
        """A device's events, newest first."""

    async def list_assignment_events(self, query: AssignmentEventQuery) -> Page[pb.Event]:
        """An assignment's events, newest first (same order, filters and paging as a device's)."""

    async def events_for_invocation(
        self, tenant: str, invocation: str, limit: int = MAX_INVOCATION_EVENTS
    ) -> list[pb.Event]:
        """The command_invocation event of ``invocation`` and the command_response events that
        answer it, oldest first (event time), at most ``limit``. Empty for an unknown id.
        A response whose ``refused`` is set (not its device's invocation) is not among them."""

    async def get_event(self, tenant: str, event_id: str) -> pb.Event | None: ...

    async def ensure_tenant(self, tenant: str) -> None:
        """Provision the tenant's event storage now (its file; its keyspace with every table)."""

    async def delete_tenant(self, tenant: str) -> bool:
        """Remove every event of the tenant (file / keyspace); False if there was none."""

    def forget_tenant(self, tenant: str) -> None:
        """Drop this instance's caches of a tenant another process deleted."""


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
        type/parent), InvalidRequest when the new parent is the customer or below it (cycle)."""

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
        two fail, never both succeed."""

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


class InvocationStore(TenantOwned, Protocol):
    """Command invocations and their status (queued, delivered, answered, failed, expired, late)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def create(self, inv: svc.InvocationState) -> svc.InvocationState: ...
    async def get(self, tenant: str, invocation_id: str) -> svc.InvocationState | None: ...

    async def update_status(
        self,
        tenant: str,
        invocation_id: str,
        status: svc.CommandStatus.ValueType,
        *,
        reason: str = "",
        response_json: str | None = None,
    ) -> svc.InvocationState | None:
        """Move an invocation forward. Terminal states (answered, failed, expired, late) are
        final, with one exception: ANSWERED on a FAILED or EXPIRED invocation makes it LATE (the
        response is kept, ``reason`` still says why it had failed). An update that would move
        backwards is ignored and the current state returned."""

    async def pending_for_device(self, tenant: str, device: str) -> list[svc.InvocationState]:
        """Invocations still queued for a device, oldest first."""

    async def list_pending(self, tenant: str) -> list[svc.InvocationState]:
        """Every QUEUED invocation of ``tenant``, oldest first."""

    async def expire_due(self, now_ms: int, tenant: str | None = None) -> list[svc.InvocationState]:
        """Mark QUEUED invocations whose ``expires_ms`` has passed EXPIRED; returns them."""

    async def ensure_tenant(self, tenant: str) -> None:
        """Provision the tenant's invocation storage now."""

    async def delete_tenant(self, tenant: str) -> bool:
        """Remove every invocation of the tenant; False if there was none."""

    def forget_tenant(self, tenant: str) -> None:
        """Drop this instance's caches of a tenant another process deleted."""
