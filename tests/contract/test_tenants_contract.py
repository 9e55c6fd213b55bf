"""The tenant lifecycle of the stores, on every backend (SQLite files, Cassandra keyspaces):
create (conflicts), update, delete with every piece of data, provisioning of the event and
invocation stores, and what a second store instance (another replica) sees."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from fieldgate.cloud.errors import Conflict, NotFound
from fieldgate.cloud.store.events import EventQuery, EventStore
from fieldgate.cloud.store.invocations import InvocationStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from tests.contract.conftest import Backend


@dataclass
class Stores:
    registry: Registry
    events: EventStore
    invocations: InvocationStore


@pytest.fixture
async def stores(backend: Backend) -> AsyncIterator[Stores]:
    s = Stores(backend.registry(), backend.events(), backend.invocations())
    for part in (s.registry, s.events, s.invocations):
        await part.start()
    yield s
    for part in (s.invocations, s.events, s.registry):
        await part.stop()


def measurement(device: str, alt: str) -> pb.Event:
    ev = pb.Event(tenant="acme", device=device, alternate_id=alt, event_time_ms=1_700_000_000_000)
    ev.measurement.values["t"] = 1.0
    return ev


async def test_create_tenant_conflicts_on_a_taken_token(stores: Stores) -> None:
    created = await stores.registry.create_tenant(model.Tenant(token="acme", name="Acme", settings_json="{}"))
    assert created.created_ms > 0
    assert await stores.registry.get_tenant("acme") == created
    with pytest.raises(Conflict, match="acme"):
        await stores.registry.create_tenant(model.Tenant(token="acme", name="Other"))
    assert (await stores.registry.get_tenant("acme")).name == "Acme"  # type: ignore[union-attr]


async def test_update_tenant_keeps_created_and_refuses_unknown(stores: Stores) -> None:
    created = await stores.registry.create_tenant(model.Tenant(token="acme", name="Acme"))
    updated = await stores.registry.update_tenant(
        model.Tenant(token="acme", name="Acme Corp", settings_json='{"auto_register": false}')
    )
    assert updated.created_ms == created.created_ms
    assert await stores.registry.get_tenant("acme") == updated
    with pytest.raises(NotFound):
        await stores.registry.update_tenant(model.Tenant(token="nobody"))
    # ensure_tenant (the configuration at start) keeps the first creation time too.
    again = await stores.registry.ensure_tenant(model.Tenant(token="acme", name="From file"))
    assert again.created_ms == created.created_ms


async def test_delete_tenant_removes_every_piece_of_its_data(stores: Stores, backend: Backend) -> None:
    reg = stores.registry
    await reg.create_tenant(model.Tenant(token="acme"))
    await reg.create_tenant(model.Tenant(token="globex"))
    for tenant in ("acme", "globex"):
        await stores.events.ensure_tenant(tenant)
        await stores.invocations.ensure_tenant(tenant)
        await reg.create_device_type(tenant, model.DeviceType(token="dt"))
        await reg.create_device(model.Device(token="d1", tenant=tenant, device_type="dt"))
        await reg.create_customer_type(tenant, model.CustomerType(token="ct"))
        ev = measurement("d1", "a1")
        ev.tenant = tenant
        assert len(await stores.events.add(tenant, [ev])) == 1
        await stores.invocations.create(svc.InvocationState(id=f"inv-{tenant}", tenant=tenant, device="d1"))
    assert await reg.get_device("acme", "d1") is not None  # cached now

    assert await reg.delete_tenant("acme") is True
    await stores.events.delete_tenant("acme")
    await stores.invocations.delete_tenant("acme")

    assert await reg.get_tenant("acme") is None
    assert [t.token for t in await reg.list_tenants()] == ["globex"]
    assert await reg.get_device("acme", "d1") is None
    assert (await reg.list_devices("acme", 1, 10)).total == 0
    assert await reg.get_customer_type("acme", "ct") is None
    assert await stores.invocations.get("acme", "inv-acme") is None
    page = await stores.events.list_device_events(EventQuery(tenant="acme", device="d1"))
    assert page.total == 0
    with pytest.raises(NotFound):
        await reg.create_device_type("acme", model.DeviceType(token="x"))
    assert await reg.delete_tenant("acme") is False
    # The other tenant is untouched.
    assert await reg.get_device("globex", "d1") is not None
    assert await stores.invocations.get("globex", "inv-globex") is not None
    assert (await stores.events.list_device_events(EventQuery(tenant="globex", device="d1"))).total == 1

    # The token can be used again, and starts empty.
    await reg.create_tenant(model.Tenant(token="acme"))
    assert (await reg.list_device_types("acme", 1, 10)).total == 0
    if backend.kind == "sqlite":
        names = sorted(p.name for p in backend.config.data_dir.rglob("*acme*") if p.suffix == ".db")
        assert names == ["registry-acme.db"]


async def test_another_instance_sees_a_created_and_a_deleted_tenant(stores: Stores, backend: Backend) -> None:
    other = backend.registry()
    await other.start()
    try:
        assert await other.get_tenant("acme") is None
        await stores.registry.create_tenant(model.Tenant(token="acme", name="Acme"))
        await other.create_device_type("acme", model.DeviceType(token="dt"))
        await other.create_device(model.Device(token="d1", tenant="acme", device_type="dt"))
        assert await stores.registry.get_device("acme", "d1") is not None
        await stores.registry.delete_tenant("acme")
        other.forget_tenant("acme")  # what the ZooKeeper watch does in every other process
        assert await other.get_tenant("acme") is None
        assert await other.get_device("acme", "d1") is None
        with pytest.raises(NotFound):
            await other.create_device_type("acme", model.DeviceType(token="dt2"))
    finally:
        await other.stop()
