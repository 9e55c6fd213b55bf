"""The registry and invocation store contract, on every backend (SQLite files, Cassandra):
CRUD, conflicts, tenants, list orders and paging, the assignment and invocation status rules,
changing and deleting device types and devices (nothing in use is deleted, also when two
replicas race).

Backend-specific behaviour lives beside: tests/unit/test_sqlite_registry.py (files) and
tests/contract/test_cassandra_stores.py (races between replicas, keyspaces, the secret).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fieldgate.cloud.errors import Conflict, InUse, InvalidRequest, NotFound
from fieldgate.cloud.store.invocations import InvocationStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.v1 import model_pb2 as model
from fieldgate.v1 import services_pb2 as svc
from tests.contract.conftest import Backend

QUEUED = svc.COMMAND_STATUS_QUEUED
DELIVERED = svc.COMMAND_STATUS_DELIVERED
ANSWERED = svc.COMMAND_STATUS_ANSWERED
FAILED = svc.COMMAND_STATUS_FAILED
EXPIRED = svc.COMMAND_STATUS_EXPIRED
LATE = svc.COMMAND_STATUS_LATE


def sensor_type() -> model.DeviceType:
    dt = model.DeviceType(token="sensor", name="Sensor")
    dt.commands.add(name="ping")
    cmd = dt.commands.add(name="set-interval", description="reporting interval")
    cmd.params.add(name="seconds", type=model.PARAM_TYPE_INT, required=True)
    return dt


@pytest.fixture
async def registry(backend: Backend) -> AsyncIterator[Registry]:
    r = backend.registry()
    await r.start()
    await r.ensure_tenant(
        model.Tenant(token="acme", name="Acme", auto_register=True, default_device_type="sensor")
    )
    await r.create_device_type("acme", sensor_type())
    yield r
    await r.stop()


@pytest.fixture
async def invocations(backend: Backend) -> AsyncIterator[InvocationStore]:
    s = backend.invocations()
    await s.start()
    yield s
    await s.stop()


# ---------------------------------------------------------------- tenants


async def test_ensure_tenant_creates_then_updates(registry: Registry) -> None:
    got = await registry.get_tenant("acme")
    assert got is not None and got.created_ms > 0
    assert got == model.Tenant(
        token="acme", name="Acme", auto_register=True, default_device_type="sensor", created_ms=got.created_ms
    )
    await registry.ensure_tenant(model.Tenant(token="acme", name="Acme Corp", auto_register=False))
    await registry.ensure_tenant(model.Tenant(token="globex"))
    tenants = await registry.list_tenants()
    assert [(t.token, t.name, t.auto_register) for t in tenants] == [
        ("acme", "Acme Corp", False),
        ("globex", "", False),
    ]
    assert await registry.get_tenant("nobody") is None


async def test_tenant_tokens_must_be_file_safe(registry: Registry) -> None:
    with pytest.raises(InvalidRequest):
        await registry.ensure_tenant(model.Tenant(token="../x"))
    assert await registry.get_tenant("../x") is None


# ---------------------------------------------------------------- device types


async def test_device_type_round_trips_commands_and_params(registry: Registry) -> None:
    assert await registry.get_device_type("acme", "sensor") == sensor_type()
    assert await registry.get_device_type("acme", "other") is None


async def test_duplicate_device_type_conflicts(registry: Registry) -> None:
    with pytest.raises(Conflict):
        await registry.create_device_type("acme", model.DeviceType(token="sensor"))


async def test_device_type_in_unknown_tenant_is_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound):
        await registry.create_device_type("nobody", model.DeviceType(token="t"))


async def test_list_device_types_pages_in_creation_order(registry: Registry) -> None:
    for i in range(4):
        await registry.create_device_type("acme", model.DeviceType(token=f"t{i}"))
    page = await registry.list_device_types("acme", 2, 2)
    assert [d.token for d in page.items] == ["t1", "t2"] and page.total == 5
    with pytest.raises(InvalidRequest):
        await registry.list_device_types("acme", 0, 10)


# ---------------------------------------------------------------- devices


async def test_create_and_get_device(registry: Registry) -> None:
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


async def test_device_lookups_miss_cleanly(registry: Registry) -> None:
    assert await registry.get_device("acme", "nope") is None
    assert await registry.get_device("nobody", "dev-1") is None
    assert await registry.get_device("../x", "dev-1") is None


async def test_device_created_by_another_instance_is_found_after_a_miss(
    registry: Registry, backend: Backend
) -> None:
    assert await registry.get_device("acme", "late") is None
    other = backend.registry()
    await other.start()
    await other.create_device(model.Device(token="late", tenant="acme", device_type="sensor"))
    await other.stop()
    found = await registry.get_device("acme", "late")
    assert found is not None and found.token == "late"


async def test_device_errors(registry: Registry) -> None:
    await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    with pytest.raises(Conflict):
        await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    with pytest.raises(NotFound):
        await registry.create_device(model.Device(token="dev-2", tenant="acme", device_type="missing"))
    with pytest.raises(NotFound):
        await registry.create_device(model.Device(token="dev-2", tenant="nobody", device_type="sensor"))
    with pytest.raises(InvalidRequest):
        await registry.create_device(model.Device(token="", tenant="acme", device_type="sensor"))


async def test_list_devices_pages_with_total(registry: Registry) -> None:
    for i in range(7):
        await registry.create_device(model.Device(token=f"d{i}", tenant="acme", device_type="sensor"))
    pages = [await registry.list_devices("acme", p, 3) for p in (1, 2, 3)]
    assert [[d.token for d in p.items] for p in pages] == [["d0", "d1", "d2"], ["d3", "d4", "d5"], ["d6"]]
    assert {p.total for p in pages} == {7}


async def test_tenants_are_separate(registry: Registry) -> None:
    await registry.ensure_tenant(model.Tenant(token="globex"))
    await registry.create_device_type("globex", model.DeviceType(token="sensor", name="Globex sensor"))
    await registry.create_device(model.Device(token="same", tenant="acme", device_type="sensor"))
    assert await registry.get_device("globex", "same") is None
    assert (await registry.list_devices("globex", 1, 10)).total == 0
    dt = await registry.get_device_type("globex", "sensor")
    assert dt is not None and dt.name == "Globex sensor"
    # The same token may exist in both tenants.
    await registry.create_device(model.Device(token="same", tenant="globex", device_type="sensor"))


# ---------------------------------------------------------------- changing and deleting


async def test_device_type_update_replaces_commands(registry: Registry, backend: Backend) -> None:
    await registry.create_device_type("acme", model.DeviceType(token="t", name="T"))
    changed = model.DeviceType(token="t", name="Thermo", description="d")
    changed.commands.add(name="reboot")
    assert await registry.update_device_type("acme", changed) == changed
    other = backend.registry()  # another replica reads the same record
    await other.start()
    try:
        assert await other.get_device_type("acme", "t") == changed
        page = await other.list_device_types("acme", 1, 10)
        assert [d.name for d in page.items] == ["Sensor", "Thermo"]
    finally:
        await other.stop()
    with pytest.raises(NotFound):
        await registry.update_device_type("acme", model.DeviceType(token="ghost"))
    with pytest.raises(NotFound):
        await registry.update_device_type("nobody", model.DeviceType(token="t"))


async def test_device_type_in_use_is_not_deleted(registry: Registry) -> None:
    await registry.create_device_type("acme", model.DeviceType(token="t"))
    await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="t"))
    with pytest.raises(InUse, match="device 'dev-1'"):
        await registry.delete_device_type("acme", "t")
    assert await registry.get_device_type("acme", "t") is not None
    await registry.update_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    await registry.delete_device_type("acme", "t")
    assert await registry.get_device_type("acme", "t") is None
    assert [d.token for d in (await registry.list_device_types("acme", 1, 10)).items] == ["sensor"]
    with pytest.raises(NotFound):
        await registry.delete_device_type("acme", "t")
    with pytest.raises(NotFound):  # a device cannot take a deleted type
        await registry.create_device(model.Device(token="dev-2", tenant="acme", device_type="t"))
    await registry.create_device_type("acme", model.DeviceType(token="t"))  # the token is free again


async def test_device_update_keeps_token_and_creation(registry: Registry, backend: Backend) -> None:
    created = await registry.create_device(
        model.Device(token="dev-1", tenant="acme", device_type="sensor", comments="roof")
    )
    await registry.create_device_type("acme", model.DeviceType(token="t"))
    new = model.Device(token="dev-1", tenant="acme", device_type="t", comments="cellar")
    new.metadata["floor"] = "-1"
    updated = await registry.update_device(new)
    assert updated.created_ms == created.created_ms and updated.device_type == "t"
    assert await registry.get_device("acme", "dev-1") == updated  # this instance: at once
    other = backend.registry()
    await other.start()
    try:
        assert await other.get_device("acme", "dev-1") == updated
        assert [d.comments for d in (await other.list_devices("acme", 1, 10)).items] == ["cellar"]
    finally:
        await other.stop()
    with pytest.raises(NotFound):  # an unknown type: nothing changes
        await registry.update_device(model.Device(token="dev-1", tenant="acme", device_type="ghost"))
    assert await registry.get_device("acme", "dev-1") == updated
    with pytest.raises(NotFound):
        await registry.update_device(model.Device(token="ghost", tenant="acme", device_type="t"))


async def test_device_with_an_active_assignment_is_not_deleted(registry: Registry, backend: Backend) -> None:
    await registry.create_device(
        model.Device(token="dev-1", tenant="acme", device_type="sensor", comments="a")
    )
    a = await registry.create_assignment(model.Assignment(token="a1", tenant="acme", device="dev-1"))
    with pytest.raises(InUse, match="'a1'"):
        await registry.delete_device("acme", "dev-1")
    assert await registry.get_device("acme", "dev-1") is not None
    await registry.release_assignment("acme", a.token)
    await registry.delete_device("acme", "dev-1")
    assert await registry.get_device("acme", "dev-1") is None  # not served from the cache
    assert await registry.active_assignment("acme", "dev-1") is None
    assert (await registry.list_devices("acme", 1, 10)).total == 0
    with pytest.raises(NotFound):
        await registry.delete_device("acme", "dev-1")
    with pytest.raises(NotFound):
        await registry.create_assignment(model.Assignment(tenant="acme", device="dev-1"))
    # The token is free again; the released assignment stays in the history.
    again = await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    assert again.comments == ""
    history = await registry.list_assignments("acme", "dev-1", 1, 10)
    assert [x.token for x in history.items] == ["a1"]
    other = backend.registry()
    await other.start()
    try:
        assert await other.get_device("acme", "dev-1") == again
        await other.create_assignment(model.Assignment(token="a2", tenant="acme", device="dev-1"))
    finally:
        await other.stop()


async def test_a_delete_and_a_new_reference_never_both_win(registry: Registry, backend: Backend) -> None:
    """Two replicas: deleting a device type while devices of it are created, and deleting a
    device while it is assigned. Either the delete wins (the others fail) or it is refused; a
    device never keeps a deleted type, an active assignment never names a deleted device."""
    other = backend.registry()
    await other.start()
    try:
        for round_ in range(3):
            t = f"race-{round_}"
            await registry.create_device_type("acme", model.DeviceType(token=t))
            results = await asyncio.gather(
                other.delete_device_type("acme", t),
                *(
                    registry.create_device(model.Device(token=f"{t}-d{i}", tenant="acme", device_type=t))
                    for i in range(3)
                ),
                return_exceptions=True,
            )
            assert all(isinstance(r, NotFound | InUse) for r in results if isinstance(r, BaseException)), (
                results
            )
            made = [r for r in results[1:] if isinstance(r, model.Device)]
            if await registry.get_device_type("acme", t) is None:
                assert not made
                assert [await other.get_device("acme", f"{t}-d{i}") for i in range(3)] == [None] * 3
            else:
                assert isinstance(results[0], InUse) and made

            d = f"{t}-dev"
            await registry.create_device(model.Device(token=d, tenant="acme", device_type="sensor"))
            outcome = await asyncio.gather(
                other.delete_device("acme", d),
                registry.create_assignment(model.Assignment(tenant="acme", device=d)),
                return_exceptions=True,
            )
            assert all(
                isinstance(r, NotFound | InUse | Conflict) for r in outcome if isinstance(r, BaseException)
            )
            active = await other.active_assignment("acme", d)
            if await other.get_device("acme", d) is None:
                assert active is None and not isinstance(outcome[1], model.Assignment)
            else:
                assert isinstance(outcome[0], InUse) and active is not None
    finally:
        await other.stop()


# ---------------------------------------------------------------- assignments


async def test_assignment_lifecycle(registry: Registry) -> None:
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


async def test_assignment_errors(registry: Registry) -> None:
    await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    await registry.create_device(model.Device(token="dev-2", tenant="acme", device_type="sensor"))
    with pytest.raises(NotFound):
        await registry.create_assignment(model.Assignment(tenant="acme", device="ghost"))
    with pytest.raises(NotFound):
        await registry.release_assignment("acme", "ghost")
    await registry.create_assignment(model.Assignment(token="x", tenant="acme", device="dev-1"))
    with pytest.raises(Conflict):
        await registry.create_assignment(model.Assignment(token="x", tenant="acme", device="dev-2"))


async def test_list_assignments_of_tenant_and_device(registry: Registry) -> None:
    for dev in ("dev-1", "dev-2"):
        await registry.create_device(model.Device(token=dev, tenant="acme", device_type="sensor"))
        await registry.create_assignment(model.Assignment(token=f"a-{dev}", tenant="acme", device=dev))
    everything = await registry.list_assignments("acme", None, 1, 10)
    assert [a.token for a in everything.items] == ["a-dev-2", "a-dev-1"]
    one = await registry.list_assignments("acme", "dev-2", 1, 10)
    assert [a.token for a in one.items] == ["a-dev-2"] and one.total == 1


async def test_registry_survives_reopen(registry: Registry, backend: Backend) -> None:
    await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    await registry.stop()
    again = backend.registry()
    await again.start()
    assert (await again.get_device("acme", "dev-1")) is not None
    assert [t.token for t in await again.list_tenants()] == ["acme"]
    await again.stop()


# ---------------------------------------------------------------- invocations


def invocation(inv_id: str = "inv-1", device: str = "dev-1", expires_ms: int = 0) -> svc.InvocationState:
    return svc.InvocationState(
        id=inv_id, tenant="acme", device=device, command="ping", params_json="{}", expires_ms=expires_ms
    )


async def test_invocation_happy_path(invocations: InvocationStore) -> None:
    created = await invocations.create(invocation())
    assert created.status == QUEUED and created.created_ms > 0
    assert await invocations.get("acme", "inv-1") == created
    delivered = await invocations.update_status("acme", "inv-1", DELIVERED)
    assert delivered is not None and delivered.status == DELIVERED
    answered = await invocations.update_status("acme", "inv-1", ANSWERED, response_json='{"pong":1}')
    assert answered is not None and answered.status == ANSWERED and answered.response_json == '{"pong":1}'
    assert await invocations.get("acme", "inv-1") == answered


async def test_terminal_states_are_final_and_backwards_is_ignored(invocations: InvocationStore) -> None:
    await invocations.create(invocation())
    await invocations.update_status("acme", "inv-1", DELIVERED)
    back = await invocations.update_status("acme", "inv-1", QUEUED)
    assert back is not None and back.status == DELIVERED
    failed = await invocations.update_status("acme", "inv-1", FAILED, reason="timeout")
    assert failed is not None and failed.status == FAILED and failed.reason == "timeout"
    for status in (DELIVERED, QUEUED, EXPIRED, FAILED):
        again = await invocations.update_status("acme", "inv-1", status, reason="other")
        assert again == failed
    assert await invocations.get("acme", "inv-1") == failed


async def test_an_answer_after_the_timeout_makes_the_invocation_late(invocations: InvocationStore) -> None:
    """The device did answer, after the edge's response timeout: the answer is kept (first one
    wins), the status is LATE, the reason still says why it had failed, and LATE is final."""
    await invocations.create(invocation())
    await invocations.update_status("acme", "inv-1", DELIVERED)
    failed = await invocations.update_status("acme", "inv-1", FAILED, reason="timeout")
    assert failed is not None
    late = await invocations.update_status("acme", "inv-1", ANSWERED, response_json='{"pong":1}')
    assert late is not None
    assert (late.status, late.reason, late.response_json) == (LATE, "timeout", '{"pong":1}')
    assert late.updated_ms >= failed.updated_ms
    assert await invocations.get("acme", "inv-1") == late
    for status in (ANSWERED, FAILED, EXPIRED, DELIVERED, QUEUED):
        assert await invocations.update_status("acme", "inv-1", status, response_json='{"pong":2}') == late


async def test_late_is_derived_never_requested(invocations: InvocationStore) -> None:
    await invocations.create(invocation())
    with pytest.raises(InvalidRequest, match="late"):
        await invocations.update_status("acme", "inv-1", LATE)
    state = await invocations.get("acme", "inv-1")
    assert state is not None and state.status == QUEUED


async def test_an_answer_racing_the_timeout_is_never_lost(backend: Backend) -> None:
    """The edge's FAILED "timeout" and the device's answer reach two replicas at once: whichever
    wins, the invocation ends with the answer (answered, or late with the reason)."""
    first, second = backend.invocations(), backend.invocations()
    await first.start()
    await second.start()
    try:
        for i in range(8):
            inv_id = f"race-{i}"
            await first.create(invocation(inv_id))
            await first.update_status("acme", inv_id, DELIVERED)
            await asyncio.gather(
                first.update_status("acme", inv_id, FAILED, reason="timeout"),
                second.update_status("acme", inv_id, ANSWERED, response_json=f'{{"n":{i}}}'),
            )
            final = await first.get("acme", inv_id)
            assert final is not None and final.response_json == f'{{"n":{i}}}', final
            assert (final.status, final.reason) in ((ANSWERED, ""), (LATE, "timeout")), final
    finally:
        await first.stop()
        await second.stop()


async def test_answer_may_overtake_the_delivered_report(invocations: InvocationStore) -> None:
    await invocations.create(invocation())
    answered = await invocations.update_status("acme", "inv-1", ANSWERED, response_json="{}")
    assert answered is not None and answered.status == ANSWERED
    stale = await invocations.update_status("acme", "inv-1", DELIVERED)
    assert stale is not None and stale.status == ANSWERED


async def test_invocation_errors(invocations: InvocationStore) -> None:
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


async def test_pending_lists_queued_oldest_first(invocations: InvocationStore) -> None:
    for i in range(3):
        await invocations.create(invocation(f"inv-{i}"))
    await invocations.create(invocation("other", device="dev-2"))
    await invocations.update_status("acme", "inv-1", DELIVERED)
    assert [i.id for i in await invocations.pending_for_device("acme", "dev-1")] == ["inv-0", "inv-2"]
    assert [i.id for i in await invocations.list_pending("acme")] == ["inv-0", "inv-2", "other"]
    assert await invocations.list_pending("globex") == []


async def test_expire_due_expires_only_queued_invocations_past_their_ttl(
    invocations: InvocationStore,
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
    # An expired invocation stays expired for the edge; its device's answer makes it late.
    stale = await invocations.update_status("acme", "due", DELIVERED)
    assert stale is not None and stale.status == EXPIRED
    late = await invocations.update_status("acme", "due", ANSWERED, response_json="{}")
    assert late is not None and (late.status, late.reason, late.response_json) == (LATE, "ttl expired", "{}")
    assert await invocations.expire_due(2_000) == []


# ---------------------------------------------------------------- beyond the original SQLite tests


async def test_tenants_list_in_creation_order_not_by_name(registry: Registry) -> None:
    for token in ("zeta", "beta", "alpha"):
        stored = await registry.ensure_tenant(model.Tenant(token=token, name=token.upper()))
        assert stored.created_ms > 0
        assert stored == model.Tenant(token=token, name=token.upper(), created_ms=stored.created_ms)
    await registry.ensure_tenant(model.Tenant(token="zeta", name="Zeta again"))  # an update keeps its place
    assert [(t.token, t.name) for t in await registry.list_tenants()] == [
        ("acme", "Acme"),
        ("zeta", "Zeta again"),
        ("beta", "BETA"),
        ("alpha", "ALPHA"),
    ]


async def test_reads_of_an_unknown_tenant_are_empty_and_writes_not_found(registry: Registry) -> None:
    assert await registry.get_device_type("nobody", "sensor") is None
    assert await registry.get_assignment("nobody", "a") is None
    assert await registry.active_assignment("nobody", "dev-1") is None
    for listing in (
        await registry.list_device_types("nobody", 1, 10),
        await registry.list_devices("nobody", 1, 10),
        await registry.list_assignments("nobody", None, 1, 10),
        await registry.list_assignments("nobody", "dev-1", 1, 10),
    ):
        assert (listing.items, listing.total) == ([], 0)
    with pytest.raises(NotFound):
        await registry.create_assignment(model.Assignment(tenant="nobody", device="dev-1"))
    with pytest.raises(NotFound):
        await registry.release_assignment("nobody", "a")
    with pytest.raises(InvalidRequest):
        await registry.list_devices("nobody", 1, 0)


async def test_assignments_page_newest_first_with_totals(registry: Registry) -> None:
    for i in range(3):
        await registry.create_device(model.Device(token=f"dev-{i}", tenant="acme", device_type="sensor"))
    for round_ in range(2):
        for i in range(3):
            a = await registry.create_assignment(
                model.Assignment(token=f"a{round_}-{i}", tenant="acme", device=f"dev-{i}")
            )
            if round_ == 0:
                await registry.release_assignment("acme", a.token)
    first, second = [await registry.list_assignments("acme", None, p, 4) for p in (1, 2)]
    assert [a.token for a in first.items] == ["a1-2", "a1-1", "a1-0", "a0-2"]
    assert [a.token for a in second.items] == ["a0-1", "a0-0"]
    assert first.total == second.total == 6
    # The listings show the release.
    assert [a.status for a in second.items] == [model.ASSIGNMENT_STATUS_RELEASED] * 2
    one = await registry.list_assignments("acme", "dev-1", 1, 1)
    assert [a.token for a in one.items] == ["a1-1"] and one.total == 2
    older = await registry.list_assignments("acme", "dev-1", 2, 1)
    assert [(a.token, a.status) for a in older.items] == [("a0-1", model.ASSIGNMENT_STATUS_RELEASED)]


async def test_releasing_an_old_assignment_again_leaves_the_new_one_active(registry: Registry) -> None:
    await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    old = await registry.create_assignment(model.Assignment(token="old", tenant="acme", device="dev-1"))
    released = await registry.release_assignment("acme", old.token)
    new = await registry.create_assignment(model.Assignment(token="new", tenant="acme", device="dev-1"))
    assert await registry.release_assignment("acme", "old") == released
    assert await registry.active_assignment("acme", "dev-1") == new
    got = await registry.get_assignment("acme", "new")
    assert got is not None and got.status == model.ASSIGNMENT_STATUS_ACTIVE


async def test_a_refused_assignment_leaves_nothing_behind(registry: Registry) -> None:
    await registry.create_device(model.Device(token="dev-1", tenant="acme", device_type="sensor"))
    first = await registry.create_assignment(model.Assignment(token="first", tenant="acme", device="dev-1"))
    with pytest.raises(Conflict):
        await registry.create_assignment(model.Assignment(token="second", tenant="acme", device="dev-1"))
    assert await registry.get_assignment("acme", "second") is None
    listing = await registry.list_assignments("acme", None, 1, 10)
    assert [a.token for a in listing.items] == ["first"] and listing.total == 1
    # The refused token is free for another device.
    await registry.create_device(model.Device(token="dev-2", tenant="acme", device_type="sensor"))
    await registry.create_assignment(model.Assignment(token="second", tenant="acme", device="dev-2"))
    assert await registry.active_assignment("acme", "dev-1") == first


async def test_an_invocation_created_in_another_state_is_not_pending(invocations: InvocationStore) -> None:
    delivered = invocation("d")
    delivered.status = DELIVERED
    created = await invocations.create(delivered)
    assert created.status == DELIVERED
    await invocations.create(invocation("q"))
    assert [i.id for i in await invocations.list_pending("acme")] == ["q"]
    assert [i.id for i in await invocations.pending_for_device("acme", "dev-1")] == ["q"]
    with pytest.raises(InvalidRequest):
        await invocations.create(svc.InvocationState(id="x", tenant="acme", device="d", status=99))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        await invocations.create(svc.InvocationState(id="x", tenant="../x", device="d"))


async def test_expire_due_of_one_tenant_leaves_the_others(invocations: InvocationStore) -> None:
    await invocations.create(invocation("due", expires_ms=1_000))
    other = invocation("due-elsewhere", expires_ms=1_000)
    other.tenant = "globex"
    await invocations.create(other)
    expired = await invocations.expire_due(2_000, tenant="globex")
    assert [(i.tenant, i.id, i.reason) for i in expired] == [("globex", "due-elsewhere", "ttl expired")]
    assert [i.id for i in await invocations.list_pending("acme")] == ["due"]
    assert await invocations.expire_due(2_000, tenant="nobody") == []
