"""Customer types and customers as plain async methods, shared by REST and gRPC (like
:class:`~fieldgate.cloud.api.management.Management`): the request rules (tokens, lengths,
metadata, paging) live here once; the registry enforces what needs its data (types and parents
exist, no cycles, nothing deleted while in use). Every method takes the caller's tenant first.
"""

from __future__ import annotations

from collections.abc import Mapping

from fieldgate.cloud.api.management import check_page, check_token
from fieldgate.cloud.errors import InvalidRequest, NotFound
from fieldgate.cloud.store import Page, Registry
from fieldgate.v1 import model_pb2 as model

MAX_NAME = 200
MAX_DESCRIPTION = 2000


def check_metadata(metadata: Mapping[str, str]) -> None:
    if len(metadata) > 100:
        raise InvalidRequest("metadata may hold at most 100 entries")
    for key, value in metadata.items():
        if not key or len(key) > 128 or len(value) > 4096:
            raise InvalidRequest("metadata keys must be 1-128 characters and values at most 4096")


def _check_texts(name: str, description: str) -> None:
    if len(name) > MAX_NAME:
        raise InvalidRequest(f"name must be at most {MAX_NAME} characters")
    if len(description) > MAX_DESCRIPTION:
        raise InvalidRequest(f"description must be at most {MAX_DESCRIPTION} characters")


class CustomerManagement:
    """Customer types and customers of one caller's tenant."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    # customer types ---------------------------------------------------------------------------

    async def create_customer_type(self, tenant: str, ct: model.CustomerType) -> model.CustomerType:
        check_token("customer type", ct.token)
        _check_texts(ct.name, ct.description)
        check_metadata(ct.metadata)
        new = model.CustomerType()
        new.CopyFrom(ct)
        new.created_ms = 0
        return await self._registry.create_customer_type(tenant, new)

    async def get_customer_type(self, tenant: str, token: str) -> model.CustomerType:
        ct = await self._registry.get_customer_type(tenant, token)
        if ct is None:
            raise NotFound(f"customer type '{token[:140]}' does not exist")
        return ct

    async def list_customer_types(self, tenant: str, page: int, page_size: int) -> Page[model.CustomerType]:
        check_page(page, page_size)
        return await self._registry.list_customer_types(tenant, page, page_size)

    async def update_customer_type(self, tenant: str, ct: model.CustomerType) -> model.CustomerType:
        _check_texts(ct.name, ct.description)
        check_metadata(ct.metadata)
        return await self._registry.update_customer_type(tenant, ct)

    async def delete_customer_type(self, tenant: str, token: str) -> None:
        await self._registry.delete_customer_type(tenant, token)

    # customers --------------------------------------------------------------------------------

    def _check_customer(self, c: model.Customer) -> None:
        _check_texts(c.name, c.description)
        check_metadata(c.metadata)
        if not c.customer_type:
            raise InvalidRequest("customer_type is required")
        if c.parent:
            check_token("parent customer", c.parent)

    async def create_customer(self, tenant: str, c: model.Customer) -> model.Customer:
        check_token("customer", c.token)
        self._check_customer(c)
        new = model.Customer()
        new.CopyFrom(c)
        new.created_ms = 0
        return await self._registry.create_customer(tenant, new)

    async def get_customer(self, tenant: str, token: str) -> model.Customer:
        c = await self._registry.get_customer(tenant, token)
        if c is None:
            raise NotFound(f"customer '{token[:140]}' does not exist")
        return c

    async def list_customers(
        self, tenant: str, parent: str | None, page: int, page_size: int
    ) -> Page[model.Customer]:
        check_page(page, page_size)
        if parent:
            await self.get_customer(tenant, parent)
        return await self._registry.list_customers(tenant, parent or None, page, page_size)

    async def update_customer(self, tenant: str, c: model.Customer) -> model.Customer:
        self._check_customer(c)
        return await self._registry.update_customer(tenant, c)

    async def delete_customer(self, tenant: str, token: str) -> None:
        await self._registry.delete_customer(tenant, token)

    async def customer_devices(
        self, tenant: str, token: str, page: int, page_size: int
    ) -> Page[model.Device]:
        check_page(page, page_size)
        await self.get_customer(tenant, token)
        return await self._registry.customer_devices(tenant, token, page, page_size)
