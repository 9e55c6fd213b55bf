"""The SQLite registry and invocation store: CRUD, conflicts, tenants, status rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldgate.cloud.errors import Conflict, InvalidRequest, NotFound
from fieldgate.cloud.store.sqlite_registry import SqliteInvocationStore, SqliteRegistry
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc

QUEUED = svc.COMMAND_STATUS_QUEUED
DELIVERED = svc.COMMAND_STATUS_DELIVERED
ANSWERED = svc.COMMAND_STATUS_ANSWERED
FAILED = svc.COMMAND_STATUS_FAILED
EXPIRED = svc.COMMAND_STATUS_EXPIRED


def sensor_type() -> model.DeviceType:
    dt = model.DeviceType(token="sensor", name="Sensor")
    dt.commands.add(name="ping")
    cmd = dt.commands.add(name="set-interval", description="reporting interval")
    cmd.params.add(name="seconds", type=model.PARAM_TYPE_INT, required=True)
    return dt


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    r = SqliteRegistry(tmp_path)
    await r.start()
    await r.ensure_tenant(
        model.Tenant(token="acme", name="Acme", auto_register=True, default_device_type="sensor")
    )
    await r.create_device_type("acme", sensor_type())
    yield r
    await r.stop()


@pytest.fixture
async def invocations(tmp_path: Path) -> AsyncIterator[SqliteInvocationStore]:
    s = SqliteInvocationStore(tmp_path)
    await s.start()
    yield s
    await s.stop()


# ---------------------------------------------------------------- tenants


async def test_ensure_tenant_creates_then_updates(registry: SqliteRegistry) -> None:
    assert (await registry.get_tenant("acme")) == model.Tenant(
        token="acme", name="Acme", auto_register=True, default_device_type="sensor"
    )
    await registry.ensure_tenant(model.Tenant(token="acme", name="Acme Corp", auto_register=False))
    await registry.ensure_tenant(model.Tenant(token="globex"))
    tenants = await registry.list_tenants()
    assert [(t.token, t.name, t.auto_register) for t in tenants] == [
        ("acme", "Acme Corp", False),
        ("globex", "", False),
    ]
    assert await registry.get_tenant("nobody") is None


async def test_tenant_tokens_must_be_file_safe(registry: SqliteRegistry) -> None:
    with pytest.raises(InvalidRequest):
        await registry.ensure_tenant(model.Tenant(token="../x"))
    assert await registry.get_tenant("../x") is None


# ---------------------------------------------------------------- device types


async def test_device_type_round_trips_commands_and_params(registry: SqliteRegistry) -> None:
    assert await registry.get_device_type("acme", "sensor") == sensor_type()
    assert await registry.get_device_type("acme", "other") is None


async def test_duplicate_device_type_conflicts(registry: SqliteRegistry) -> None:
    with pytest.raises(Conflict):
        await registry.create_device_type("acme", model.DeviceType(token="sensor"))


async def test_device_type_in_unknown_tenant_is_not_found(registry: SqliteRegistry) -> None:
    with pytest.raises(NotFound):
        await registry.create_device_type("nobody", model.DeviceType(token="t"))


async def test_list_device_types_pages_in_creation_order(registry: SqliteRegistry) -> None:
    for i in range(4):
        await registry.create_device_type("acme", model.DeviceType(token=f"t{i}"))
    page = await registry.list_device_types("acme", 2, 2)
    assert [d.token for d in page.items] == ["t1", "t2"] and page.total == 5
    with pytest.raises(InvalidRequest):
        await registry.list_device_types("acme", 0, 10)


# ---------------------------------------------------------------- devices


async def test_create_and_get_device(registry: SqliteRegistry) -> None:
    d = model.Device(token="dev-1", tenant="acme", device_type="sensor", comments="roof")
    d.metadata["floor"] = "3"
    created = await registry.create_device(d)
    assert created.created_ms > 0
    got = await registry.get_device("acme", "dev-1")
    assert got == created and got.metadata["floor"] == "3"
    # Served from the cache the second time, and callers cannot change the cached copy.
    assert got is not None
    got.comments = "mutated by a caller"
    assert (await registry.get_device("acme", "dev-1")) == created


async def test_device_lookups_miss_cleanly(registry: SqliteRegistry) -> None:
    assert await registry.get_device("acme", "nope") is None
    assert await registry.get_device("nobody", "dev-1") is None
    assert await registry.get_device("../x", "dev-1") is None


async def test_device_created_by_another_instance_is_found_after_a_miss(
    registry: SqliteRegistry, tmp_path: Path
) -> None:
    assert await registry.get_device("acme", "late") is None
    other = SqliteRegistry(tmp_path)
    await other.start()
    await other.create_device(model.Device(token="late", tenant="acme", device_type="sensor"))
    await other.stop()
    found = await registry.get_device("acme", "late")
    assert found is not None and found.token == "late"


async def test_device_errors(registry: SqliteRegistry) -> None:
    await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    with pytest.raises(Conflict):
        await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    with pytest.raises(NotFound):
        await registry.create_device(model.Device(token="dev-2", tenant="acme", device_type="missing"))
    with pytest.raises(NotFound):
        await registry.create_device(model.Device(token="dev-2", tenant="nobody", device_type="sensor"))
    with pytest.raises(InvalidRequest):
        await registry.create_device(model.Device(token="", tenant="acme", device_type="sensor"))


async def test_list_devices_pages_with_total(registry: SqliteRegistry) -> None:
    for i in range(7):
        await registry.create_device(model.Device(token=f"d{i}", tenant="acme", device_type="sensor"))
    pages = [await registry.list_devices("acme", p, 3) for p in (1, 2, 3)]
    assert [[d.token for d in p.items] for p in pages] == [["d0", "d1", "d2"], ["d3", "d4", "d5"], ["d6"]]
    assert {p.total for p in pages} == {7}


async def test_tenants_are_separate(registry: SqliteRegistry) -> None:
    await registry.ensure_tenant(model.Tenant(token="globex"))
    await registry.create_device_type("globex", model.DeviceType(token="sensor", name="Globex sensor"))
    await registry.create_device(model.Device(token="same", tenant="acme", device_type="sensor"))
    assert await registry.get_device("globex", "same") is None
    assert (await registry.list_devices("globex", 1, 10)).total == 0
    dt = await registry.get_device_type("globex", "sensor")
    assert dt is not None and dt.name == "Globex sensor"
    # The same token may exist in both tenants.
    await registry.create_device(model.Device(token="same", tenant="globex", device_type="sensor"))


# ---------------------------------------------------------------- assignments


async def test_assignment_lifecycle(registry: SqliteRegistry) -> None:
    await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    a = await registry.create_assignment(model.Assignment(tenant="acme", device="dev-1", customer="c1"))
    assert a.token and a.status == model.ASSIGNMENT_STATUS_ACTIVE and a.active_ms > 0
    assert await registry.active_assignment("acme", "dev-1") == a
    with pytest.raises(Conflict):
        await registry.create_assignment(model.Assignment(tenant="acme", device="dev-1"))
    released = await registry.release_assignment("acme", a.token)
    assert released.status == model.ASSIGNMENT_STATUS_RELEASED and released.released_ms >= a.active_ms
    assert await registry.active_assignment("acme", "dev-1") is None
    assert await registry.release_assignment("acme", a.token) == released  # idempotent
    b = await registry.create_assignment(model.Assignment(token="second", tenant="acme", device="dev-1"))
    assert await registry.active_assignment("acme", "dev-1") == b
    history = await registry.list_assignments("acme", "dev-1", 1, 10)
    assert [x.token for x in history.items] == ["second", a.token] and history.total == 2


async def test_assignment_errors(registry: SqliteRegistry) -> None:
    await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    await registry.create_device(model.Device(token="dev-2", tenant="acme", device_type="sensor"))
    with pytest.raises(NotFound):
        await registry.create_assignment(model.Assignment(tenant="acme", device="ghost"))
    with pytest.raises(NotFound):
        await registry.release_assignment("acme", "ghost")
    await registry.create_assignment(model.Assignment(token="x", tenant="acme", device="dev-1"))
    with pytest.raises(Conflict):
        await registry.create_assignment(model.Assignment(token="x", tenant="acme", device="dev-2"))


async def test_list_assignments_of_tenant_and_device(registry: SqliteRegistry) -> None:
    for dev in ("dev-1", "dev-2"):
        await registry.create_device(model.Device(token=dev, tenant="acme", device_type="sensor"))
        await registry.create_assignment(model.Assignment(token=f"a-{dev}", tenant="acme", device=dev))
    everything = await registry.list_assignments("acme", None, 1, 10)
    assert [a.token for a in everything.items] == ["a-dev-2", "a-dev-1"]
    one = await registry.list_assignments("acme", "dev-2", 1, 10)
    assert [a.token for a in one.items] == ["a-dev-2"] and one.total == 1


async def test_registry_survives_reopen(registry: SqliteRegistry, tmp_path: Path) -> None:
    await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    await registry.stop()
    again = SqliteRegistry(tmp_path)
    await again.start()
    assert (await again.get_device("acme", "dev-1")) is not None
    assert [t.token for t in await again.list_tenants()] == ["acme"]
    await again.stop()


# ---------------------------------------------------------------- invocations


def invocation(inv_id: str = "inv-1", device: str = "dev-1", expires_ms: int = 0) -> svc.InvocationState:
    return svc.InvocationState(
        id=inv_id, tenant="acme", device=device, command="ping", params_json="{}", expires_ms=expires_ms
    )


async def test_invocation_happy_path(invocations: SqliteInvocationStore) -> None:
    created = await invocations.create(invocation())
    assert created.status == QUEUED and created.created_ms > 0
    assert await invocations.get("acme", "inv-1") == created
    delivered = await invocations.update_status("acme", "inv-1", DELIVERED)
    assert delivered is not None and delivered.status == DELIVERED
    answered = await invocations.update_status("acme", "inv-1", ANSWERED, response_json='{"pong":1}')
    assert answered is not None and answered.status == ANSWERED and answered.response_json == '{"pong":1}'
    assert await invocations.get("acme", "inv-1") == answered


async def test_terminal_states_are_final_and_backwards_is_ignored(invocations: SqliteInvocationStore) -> None:
    await invocations.create(invocation())
    await invocations.update_status("acme", "inv-1", DELIVERED)
    back = await invocations.update_status("acme", "inv-1", QUEUED)
    assert back is not None and back.status == DELIVERED
    failed = await invocations.update_status("acme", "inv-1", FAILED, reason="timeout")
    assert failed is not None and failed.status == FAILED and failed.reason == "timeout"
    late = await invocations.update_status("acme", "inv-1", ANSWERED, response_json="{}")
    assert late == failed
    assert await invocations.get("acme", "inv-1") == failed


async def test_answer_may_overtake_the_delivered_report(invocations: SqliteInvocationStore) -> None:
    await invocations.create(invocation())
    answered = await invocations.update_status("acme", "inv-1", ANSWERED, response_json="{}")
    assert answered is not None and answered.status == ANSWERED
    stale = await invocations.update_status("acme", "inv-1", DELIVERED)
    assert stale is not None and stale.status == ANSWERED


async def test_invocation_errors(invocations: SqliteInvocationStore) -> None:
    await invocations.create(invocation())
    with pytest.raises(Conflict):
        await invocations.create(invocation())
    with pytest.raises(InvalidRequest):
        await invocations.create(svc.InvocationState(tenant="acme", device="d"))
    assert await invocations.update_status("acme", "ghost", DELIVERED) is None
    assert await invocations.update_status("nobody", "inv-1", DELIVERED) is None
    assert await invocations.get("globex", "inv-1") is None
    with pytest.raises(InvalidRequest):
        await invocations.update_status("acme", "inv-1", svc.COMMAND_STATUS_UNSPECIFIED)


async def test_pending_lists_queued_oldest_first(invocations: SqliteInvocationStore) -> None:
    for i in range(3):
        await invocations.create(invocation(f"inv-{i}"))
    await invocations.create(invocation("other", device="dev-2"))
    await invocations.update_status("acme", "inv-1", DELIVERED)
    assert [i.id for i in await invocations.pending_for_device("acme", "dev-1")] == ["inv-0", "inv-2"]
    assert [i.id for i in await invocations.list_pending("acme")] == ["inv-0", "inv-2", "other"]
    assert await invocations.list_pending("globex") == []


async def test_expire_due_expires_only_queued_invocations_past_their_ttl(
    invocations: SqliteInvocationStore,
) -> None:
    await invocations.create(invocation("due", expires_ms=1_000))
    await invocations.create(invocation("delivered", expires_ms=1_000))
    await invocations.create(invocation("later", expires_ms=5_000))
    await invocations.create(invocation("forever", expires_ms=0))
    other = invocation("due-elsewhere", expires_ms=1_000)
    other.tenant = "globex"
    await invocations.create(other)
    await invocations.update_status("acme", "delivered", DELIVERED)
    expired = await invocations.expire_due(2_000)
    assert sorted((i.tenant, i.id) for i in expired) == [("acme", "due"), ("globex", "due-elsewhere")]
    assert all(i.status == EXPIRED for i in expired)
    state = await invocations.get("acme", "due")
    assert state is not None and state.status == EXPIRED
    assert await invocations.expire_due(2_000) == []
    assert [i.id for i in await invocations.pending_for_device("acme", "dev-1")] == ["later", "forever"]
    # An expired invocation stays expired, even if an answer arrives late.
    late = await invocations.update_status("acme", "due", ANSWERED, response_json="{}")
    assert late is not None and late.status == EXPIRED
