"""The registry's interface: tenants, customer types, customers, device types, devices and
assignments, per tenant."""

from __future__ import annotations

from typing import Protocol

from fieldgate.cloud.store import Page
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
