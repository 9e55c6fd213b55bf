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
is :class:`fieldgate.cloud.composition.TenantStores`: provisioning, deletion, the processes'
forget path and the lifecycle tests all iterate it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

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
