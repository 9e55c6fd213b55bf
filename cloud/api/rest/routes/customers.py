"""REST routes for customer types and customers (thin: the rules are in ``customers`` and the
registry). Request bodies are strict like every other (unknown fields, wrong types → 422).

This module deliberately does not use ``from __future__ import annotations``: FastAPI reads the
route signatures at definition time, and the per-app ``Auth`` dependency is a closure local.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, status
from pydantic import BaseModel, Field

from fieldgate.cloud.api.rest.models import DeviceOut, Metadata, PageOut, _In, error_docs, page_fields
from fieldgate.cloud.api.rest.paging import PageQuery
from fieldgate.cloud.errors import NotFound
from fieldgate.cloud.services.access import Principal
from fieldgate.cloud.services.customers import MAX_DESCRIPTION, MAX_NAME, CustomerManagement, matches
from fieldgate.cloud.services.documents import iso
from fieldgate.cloud.services.management import TOKEN_PATTERN
from fieldgate.cloud.store.site import OPT_TOKEN_PATTERN
from fieldgate.v1 import model_pb2 as model

ERRORS = error_docs(common=True)
# The token of a record a PUT replaces (one that is not a token cannot be a customer's).
RecordToken = Annotated[str, Path(max_length=128, pattern=TOKEN_PATTERN)]


class CustomerTypeChange(_In):
    name: str = Field("", max_length=MAX_NAME)
    description: str = Field("", max_length=MAX_DESCRIPTION)
    metadata: Metadata = Field(default_factory=dict)

    def to_pb(self, token: str) -> model.CustomerType:
        return model.CustomerType(
            token=token, name=self.name, description=self.description, metadata=self.metadata
        )


class CustomerTypeIn(CustomerTypeChange):
    token: str = Field(pattern=TOKEN_PATTERN)


class CustomerTypeOut(BaseModel):
    token: str
    name: str
    description: str
    metadata: dict[str, str]
    created: str

    @classmethod
    def from_pb(cls, ct: model.CustomerType) -> "CustomerTypeOut":
        return cls(
            token=ct.token,
            name=ct.name,
            description=ct.description,
            metadata=dict(ct.metadata),
            created=iso(ct.created_ms),
        )


class CustomerChange(_In):
    customer_type: str = Field(min_length=1, max_length=128)
    parent: str = Field(
        "",
        max_length=128,
        pattern=OPT_TOKEN_PATTERN,
        description="token of the parent customer; empty = top level",
    )
    name: str = Field("", max_length=MAX_NAME)
    description: str = Field("", max_length=MAX_DESCRIPTION)
    metadata: Metadata = Field(default_factory=dict)

    def to_pb(self, token: str) -> model.Customer:
        return model.Customer(
            token=token,
            customer_type=self.customer_type,
            parent=self.parent,
            name=self.name,
            description=self.description,
            metadata=self.metadata,
        )


class CustomerIn(CustomerChange):
    token: str = Field(pattern=TOKEN_PATTERN)


class CustomerOut(BaseModel):
    token: str
    customer_type: str
    parent: str
    name: str
    description: str
    metadata: dict[str, str]
    created: str

    @classmethod
    def from_pb(cls, c: model.Customer) -> "CustomerOut":
        return cls(
            token=c.token,
            customer_type=c.customer_type,
            parent=c.parent,
            name=c.name,
            description=c.description,
            metadata=dict(c.metadata),
            created=iso(c.created_ms),
        )


class Deleted(BaseModel):
    token: str
    deleted: bool = True


def _visible(who: Principal, token: str) -> None:
    """A customer user sees its own customer only (others do not exist for it)."""
    if who.scope_customer is not None and token != who.scope_customer:
        raise NotFound(f"customer '{token[:140]}' does not exist")


def customers_router(
    customers: CustomerManagement,
    read: Callable[..., Awaitable[Principal]],
    write: Callable[..., Awaitable[Principal]],
) -> APIRouter:
    """The routes; ``read`` / ``write`` are the access policy's dependencies for reading and
    changing the tenant's registry."""
    router = APIRouter(prefix="/api/v1", responses=ERRORS)
    Auth = Annotated[Principal, Depends(read)]
    Write = Annotated[Principal, Depends(write)]
    in_use = error_docs({404: "no such entity", 409: "still in use (the detail says by what)"})

    # customer types

    @router.post(
        "/customer-types",
        status_code=status.HTTP_201_CREATED,
        tags=["customers"],
        responses=error_docs({409: "a customer type with that token exists"}),
    )
    async def create_customer_type(body: CustomerTypeIn, who: Write) -> CustomerTypeOut:
        ct = await customers.create_customer_type(who.tenant, body.to_pb(body.token))
        return CustomerTypeOut.from_pb(ct)

    @router.get("/customer-types", tags=["customers"])
    async def list_customer_types(who: Auth, paging: PageQuery) -> PageOut[CustomerTypeOut]:
        p = await customers.list_customer_types(who.tenant, paging.page, paging.page_size)
        return PageOut[CustomerTypeOut](items=[CustomerTypeOut.from_pb(c) for c in p.items], **page_fields(p))

    @router.get("/customer-types/{token}", tags=["customers"], responses=error_docs({404: "no such type"}))
    async def get_customer_type(token: str, who: Auth) -> CustomerTypeOut:
        return CustomerTypeOut.from_pb(await customers.get_customer_type(who.tenant, token))

    @router.put("/customer-types/{token}", tags=["customers"], responses=error_docs({404: "no such type"}))
    async def update_customer_type(
        token: RecordToken, body: CustomerTypeChange, who: Write
    ) -> CustomerTypeOut:
        """Replace name, description and metadata."""
        return CustomerTypeOut.from_pb(await customers.update_customer_type(who.tenant, body.to_pb(token)))

    @router.delete("/customer-types/{token}", tags=["customers"], responses=in_use)
    async def delete_customer_type(token: str, who: Write) -> Deleted:
        """409 while a customer has this type."""
        await customers.delete_customer_type(who.tenant, token)
        return Deleted(token=token)

    # customers

    @router.post(
        "/customers",
        status_code=status.HTTP_201_CREATED,
        tags=["customers"],
        responses=error_docs(
            {
                409: "a customer with that token exists",
                422: "invalid, or the customer type or parent does not exist",
            }
        ),
    )
    async def create_customer(body: CustomerIn, who: Write) -> CustomerOut:
        """A customer of an existing customer type, optionally below a parent customer."""
        return CustomerOut.from_pb(await customers.create_customer(who.tenant, body.to_pb(body.token)))

    @router.get("/customers", tags=["customers"])
    async def list_customers(
        who: Auth,
        paging: PageQuery,
        parent: Annotated[
            str | None, Query(max_length=128, description="only this customer's children")
        ] = None,
        search: Annotated[
            str | None, Query(max_length=128, description="substring of the token or name (any case)")
        ] = None,
    ) -> PageOut[CustomerOut]:
        """The tenant's customers in creation order (a customer user: its own customer)."""
        if who.scope_customer is not None:
            own = await customers.get_customer(who.tenant, who.scope_customer)
            wanted = (parent is None or own.parent == parent) and (not search or matches(own, search.lower()))
            mine = [own] if wanted else []
            return PageOut[CustomerOut](
                items=[CustomerOut.from_pb(c) for c in mine],
                page=paging.page,
                page_size=paging.page_size,
                total=len(mine),
            )
        p = await customers.list_customers(who.tenant, parent, paging.page, paging.page_size, search=search)
        return PageOut[CustomerOut](items=[CustomerOut.from_pb(c) for c in p.items], **page_fields(p))

    @router.get("/customers/{token}", tags=["customers"], responses=error_docs({404: "no such customer"}))
    async def get_customer(token: str, who: Auth) -> CustomerOut:
        _visible(who, token)
        return CustomerOut.from_pb(await customers.get_customer(who.tenant, token))

    @router.put(
        "/customers/{token}",
        tags=["customers"],
        responses=error_docs(
            {
                404: "no such customer",
                409: "the new parent is below the customer (a cycle)",
                422: "invalid, or the customer type or parent does not exist",
            }
        ),
    )
    async def update_customer(token: RecordToken, body: CustomerChange, who: Write) -> CustomerOut:
        """Replace type, parent, name, description and metadata (a parent below it: 422)."""
        return CustomerOut.from_pb(await customers.update_customer(who.tenant, body.to_pb(token)))

    @router.delete("/customers/{token}", tags=["customers"], responses=in_use)
    async def delete_customer(token: str, who: Write) -> Deleted:
        """409 while a child customer or an active assignment names it."""
        await customers.delete_customer(who.tenant, token)
        return Deleted(token=token)

    @router.get(
        "/customers/{token}/devices", tags=["customers"], responses=error_docs({404: "no such customer"})
    )
    async def list_customer_devices(token: str, who: Auth, paging: PageQuery) -> PageOut[DeviceOut]:
        """The devices whose active assignment names this customer, by device token."""
        _visible(who, token)
        p = await customers.customer_devices(who.tenant, token, paging.page, paging.page_size)
        return PageOut[DeviceOut](items=[DeviceOut.from_pb(d) for d in p.items], **page_fields(p))

    return router
