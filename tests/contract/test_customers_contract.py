"""Customer types and customers in the registry, on every backend: CRUD, conflicts, paging,
the customer tree (unknown parents, cycles refused), what blocks a delete (children, active
assignments, customers of a type), the devices of a customer, and tenants kept apart."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fieldgate.cloud.errors import Conflict, Cycle, InUse, InvalidRequest, NotFound
from fieldgate.cloud.store.registry import Registry
from fieldgate.v1 import model_pb2 as model
from tests.contract.conftest import Backend


@pytest.fixture
async def registry(backend: Backend) -> AsyncIterator[Registry]:
    r = backend.registry()
    await r.start()
    for tenant in ("acme", "globex"):
        await r.ensure_tenant(model.Tenant(token=tenant))
        await r.create_device_type(tenant, model.DeviceType(token="sensor"))
        await r.create_customer_type(tenant, model.CustomerType(token="site", name="Site"))
    yield r
    await r.stop()


def customer(token: str, parent: str = "", ctype: str = "site") -> model.Customer:
    return model.Customer(token=token, customer_type=ctype, parent=parent, name=token.title())


async def test_customer_type_crud(registry: Registry) -> None:
    ct = model.CustomerType(token="dealer", name="Dealer", description="sells")
    ct.metadata["region"] = "eu"
    created = await registry.create_customer_type("acme", ct)
    assert created.created_ms > 0 and created.metadata["region"] == "eu"
    assert await registry.get_customer_type("acme", "dealer") == created
    with pytest.raises(Conflict):
        await registry.create_customer_type("acme", model.CustomerType(token="dealer"))
    with pytest.raises(NotFound):
        await registry.create_customer_type("nobody", model.CustomerType(token="x"))
    changed = model.CustomerType(token="dealer", name="Reseller")
    updated = await registry.update_customer_type("acme", changed)
    assert updated.name == "Reseller" and updated.created_ms == created.created_ms and not updated.metadata
    assert await registry.get_customer_type("acme", "dealer") == updated
    page = await registry.list_customer_types("acme", 1, 10)
    assert [c.token for c in page.items] == ["site", "dealer"] and page.total == 2
    assert page.items[1] == updated  # the listing shows the update
    with pytest.raises(NotFound):
        await registry.update_customer_type("acme", model.CustomerType(token="ghost"))
    await registry.delete_customer_type("acme", "dealer")
    assert await registry.get_customer_type("acme", "dealer") is None
    assert (await registry.list_customer_types("acme", 1, 10)).total == 1
    with pytest.raises(NotFound):
        await registry.delete_customer_type("acme", "dealer")
    assert await registry.get_customer_type("globex", "site") is not None


async def test_customer_type_in_use_cannot_be_deleted(registry: Registry) -> None:
    await registry.create_customer("acme", customer("c1"))
    with pytest.raises(InUse, match="c1"):
        await registry.delete_customer_type("acme", "site")
    await registry.delete_customer("acme", "c1")
    await registry.delete_customer_type("acme", "site")


async def test_customer_crud_and_paging(registry: Registry) -> None:
    c = customer("acme-hq")
    c.metadata["vat"] = "123"
    created = await registry.create_customer("acme", c)
    assert created.created_ms > 0
    assert await registry.get_customer("acme", "acme-hq") == created
    assert await registry.get_customer("globex", "acme-hq") is None
    with pytest.raises(Conflict):
        await registry.create_customer("acme", customer("acme-hq"))
    with pytest.raises(NotFound, match="customer type"):
        await registry.create_customer("acme", customer("x", ctype="nope"))
    for i in range(4):
        await registry.create_customer("acme", customer(f"c{i}"))
    page = await registry.list_customers("acme", None, 2, 2)
    assert [x.token for x in page.items] == ["c1", "c2"] and page.total == 5
    with pytest.raises(InvalidRequest):
        await registry.list_customers("acme", None, 0, 2)
    updated = await registry.update_customer(
        "acme", model.Customer(token="c1", customer_type="site", name="Renamed", description="d")
    )
    assert updated.created_ms == page.items[0].created_ms
    assert await registry.get_customer("acme", "c1") == updated
    assert (await registry.list_customers("acme", None, 2, 2)).items[0] == updated
    with pytest.raises(NotFound):
        await registry.update_customer("acme", customer("ghost"))
    await registry.delete_customer("acme", "c1")
    assert await registry.get_customer("acme", "c1") is None
    assert (await registry.list_customers("acme", None, 1, 10)).total == 4
    with pytest.raises(NotFound):
        await registry.delete_customer("acme", "c1")


async def test_customer_tree_parents_children_and_cycles(registry: Registry) -> None:
    await registry.create_customer("acme", customer("root"))
    await registry.create_customer("acme", customer("mid", parent="root"))
    await registry.create_customer("acme", customer("leaf", parent="mid"))
    with pytest.raises(NotFound, match="parent"):
        await registry.create_customer("acme", customer("orphan", parent="ghost"))
    # A parent of another tenant does not exist here.
    await registry.create_customer("globex", customer("g-root"))
    with pytest.raises(NotFound):
        await registry.create_customer("acme", customer("x", parent="g-root"))
    children = await registry.list_customers("acme", "root", 1, 10)
    assert [c.token for c in children.items] == ["mid"] and children.total == 1
    # Cycles: the customer itself, or anything below it, cannot become its parent.
    with pytest.raises(Cycle, match="own parent"):
        await registry.update_customer("acme", customer("root", parent="root"))
    with pytest.raises(Cycle, match="cycle"):
        await registry.update_customer("acme", customer("root", parent="leaf"))
    assert (await registry.get_customer("acme", "root")).parent == ""  # type: ignore[union-attr]
    # A child cannot be orphaned by deleting its parent.
    with pytest.raises(InUse, match="mid"):
        await registry.delete_customer("acme", "root")
    # Moving leaf under root updates both child listings.
    await registry.update_customer("acme", customer("leaf", parent="root"))
    assert [c.token for c in (await registry.list_customers("acme", "root", 1, 10)).items] == ["mid", "leaf"]
    assert (await registry.list_customers("acme", "mid", 1, 10)).total == 0
    await registry.delete_customer("acme", "mid")
    await registry.delete_customer("acme", "leaf")
    await registry.delete_customer("acme", "root")
    assert (await registry.list_customers("acme", None, 1, 10)).total == 0


async def test_devices_of_a_customer_follow_active_assignments(registry: Registry) -> None:
    await registry.create_customer("acme", customer("c1"))
    await registry.create_customer("acme", customer("c2"))
    for dev in ("d3", "d1", "d2"):
        await registry.create_device(model.Device(token=dev, tenant="acme", device_type="sensor"))
    a1 = await registry.create_assignment(model.Assignment(tenant="acme", device="d1", customer="c1"))
    await registry.create_assignment(model.Assignment(tenant="acme", device="d3", customer="c1"))
    await registry.create_assignment(model.Assignment(tenant="acme", device="d2", customer="c2"))
    page = await registry.customer_devices("acme", "c1", 1, 10)
    assert [d.token for d in page.items] == ["d1", "d3"] and page.total == 2
    assert [d.token for d in (await registry.customer_devices("acme", "c1", 2, 1)).items] == ["d3"]
    assert (await registry.customer_devices("globex", "c1", 1, 10)).total == 0
    with pytest.raises(InUse, match="release"):
        await registry.delete_customer("acme", "c1")
    await registry.release_assignment("acme", a1.token)
    assert [d.token for d in (await registry.customer_devices("acme", "c1", 1, 10)).items] == ["d3"]
    # A new assignment of d1 to c2 moves it.
    await registry.create_assignment(model.Assignment(tenant="acme", device="d1", customer="c2"))
    assert [d.token for d in (await registry.customer_devices("acme", "c2", 1, 10)).items] == ["d1", "d2"]
    active_d3 = await registry.active_assignment("acme", "d3")
    assert active_d3 is not None
    await registry.release_assignment("acme", active_d3.token)
    await registry.delete_customer("acme", "c1")
    assert await registry.get_customer("acme", "c1") is None
