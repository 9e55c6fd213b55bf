"""Customer types and customers as plain async methods, shared by REST and gRPC (like
:class:`~fieldgate.cloud.services.management.Management`): the request rules (tokens, lengths,
metadata, paging) live here once; the registry enforces what needs its data (types and parents
exist, no cycles, nothing deleted while in use). Every method takes the caller's tenant first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

from fieldgate.cloud.errors import InvalidRequest, NotFound, UnknownReference
from fieldgate.cloud.services.management import MAX_PAGE_SIZE, check_page, check_token
from fieldgate.cloud.store import Page
from fieldgate.cloud.store.registry import Registry
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


def matches(c: model.Customer, needle: str) -> bool:
    """Whether ``needle`` (lower case) is part of the customer's token or name, in any case."""
    return needle in c.token.lower() or needle in c.name.lower()


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

    async def _check_refs(self, tenant: str, c: model.Customer) -> None:
        """UnknownReference for a customer type or parent that does not exist (the registry
        checks again where it stores, against a concurrent delete)."""
        if await self._registry.get_customer_type(tenant, c.customer_type) is None:
            raise UnknownReference(
                "customer type", c.customer_type, "create it with POST /api/v1/customer-types"
            )
        if c.parent and c.parent != c.token and await self._registry.get_customer(tenant, c.parent) is None:
            raise UnknownReference("parent customer", c.parent)

    async def _stored(
        self, tenant: str, c: model.Customer, call: Awaitable[model.Customer]
    ) -> model.Customer:
        try:
            return await call
        except NotFound:
            await self._check_refs(tenant, c)  # a type or parent deleted meanwhile: say which
            raise

    async def create_customer(self, tenant: str, c: model.Customer) -> model.Customer:
        check_token("customer", c.token)
        self._check_customer(c)
        await self._check_refs(tenant, c)
        new = model.Customer()
        new.CopyFrom(c)
        new.created_ms = 0
        return await self._stored(tenant, c, self._registry.create_customer(tenant, new))

    async def get_customer(self, tenant: str, token: str) -> model.Customer:
        c = await self._registry.get_customer(tenant, token)
        if c is None:
            raise NotFound(f"customer '{token[:140]}' does not exist")
        return c

    async def list_customers(
        self, tenant: str, parent: str | None, page: int, page_size: int, *, search: str | None = None
    ) -> Page[model.Customer]:
        """Customers in creation order; with ``parent`` its children only; with ``search``
        those whose token or name contains it (any case; a scan of the tenant's customers)."""
        check_page(page, page_size)
        if parent:
            await self.get_customer(tenant, parent)
        if not search:
            return await self._registry.list_customers(tenant, parent or None, page, page_size)
        needle = search.lower()
        found: list[model.Customer] = []
        at = 1
        while True:
            p = await self._registry.list_customers(tenant, parent or None, at, MAX_PAGE_SIZE)
            found.extend(c for c in p.items if matches(c, needle))
            if not p.items or at * MAX_PAGE_SIZE >= p.total:
                break
            at += 1
        start = (page - 1) * page_size
        return Page(items=found[start : start + page_size], total=len(found), page=page, page_size=page_size)

    async def update_customer(self, tenant: str, c: model.Customer) -> model.Customer:
        self._check_customer(c)
        await self.get_customer(tenant, c.token)
        await self._check_refs(tenant, c)
        return await self._stored(tenant, c, self._registry.update_customer(tenant, c))

    async def delete_customer(self, tenant: str, token: str) -> None:
        await self._registry.delete_customer(tenant, token)

    async def customer_devices(
        self, tenant: str, token: str, page: int, page_size: int
    ) -> Page[model.Device]:
        check_page(page, page_size)
        await self.get_customer(tenant, token)
        return await self._registry.customer_devices(tenant, token, page, page_size)
