"""Batch operations and schedules on the real stores (SQLite; Cassandra marked distributed), the
real CommandService, invocation store and embedded bus: a restart mid-batch never invokes an
element twice, cancel stops what was not invoked, two scheduler replicas run each due time once,
missed runs run the latest one once, a one-shot schedule fires once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fieldgate.cloud.bus.embedded import EmbeddedBus
from fieldgate.cloud.config import CloudConfig
from fieldgate.cloud.domain.batch import (
    BatchRequest,
    CommandAction,
    ElementStatus,
    OperationStatus,
    Schedule,
    Selection,
)
from fieldgate.cloud.errors import Conflict
from fieldgate.cloud.services.batch import BatchOperations, element_invocation_id
from fieldgate.cloud.services.commands import CommandService
from fieldgate.cloud.services.scheduler import Scheduler
from fieldgate.cloud.store.backend import storage_backend
from fieldgate.cloud.store.batch import BatchStore
from fieldgate.cloud.store.invocations import InvocationStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.v1 import model_pb2 as model
from tests.contract.conftest import STORES, backend_config, drop_keyspaces
from tests.helpers.waiting import eventually, never

pytestmark = pytest.mark.integration

T = "default"
MINUTE = 60_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % MINUTE  # a whole minute


@dataclass
class World:
    config: CloudConfig
    registry: Registry
    invocations: InvocationStore
    commands: CommandService
    stores: list[BatchStore]

    async def batch_store(self) -> BatchStore:
        """A new store object on the same data (another process, or the same one restarted)."""
        store = storage_backend(self.config).batch()
        await store.start()
        self.stores.append(store)
        return store


@pytest.fixture(params=STORES)
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    config = backend_config(request, request.param, tmp_path / "cloud")
    storage = storage_backend(config)
    registry, invocations = storage.registry(), storage.invocations()
    bus = EmbeddedBus(tmp_path / "bus.db")
    for part in (bus, registry, invocations):
        await part.start()
    await registry.ensure_tenant(model.Tenant(token=T, name=T))
    await registry.create_device_type(
        T,
        model.DeviceType(
            token="actuator",
            name="actuator",
            commands=[
                model.DeviceCommand(name="ping"),
                model.DeviceCommand(
                    name="set-interval",
                    params=[model.CommandParam(name="seconds", type=model.PARAM_TYPE_INT, required=True)],
                ),
            ],
        ),
    )
    for i in range(40):
        await registry.create_device(model.Device(token=f"act-{i:02d}", tenant=T, device_type="actuator"))
    w = World(config, registry, invocations, CommandService(registry, invocations, bus, 3600), [])
    try:
        yield w
    finally:
        for store in w.stores:
            await store.stop()
        for part in (invocations, registry, bus):
            await part.stop()
        if request.param == "cassandra":
            await drop_keyspaces(request.getfixturevalue("cassandra"), config.store.keyspace_prefix)


def request_for(prefix: str = "act-") -> BatchRequest:
    return BatchRequest(
        command="set-interval",
        params={"seconds": 5},
        selection=Selection.model_validate({"filter": {"token_prefix": prefix}}),
    )


async def test_restart_mid_batch_invokes_every_device_exactly_once(world: World) -> None:
    store = await world.batch_store()
    first = BatchOperations(
        store, world.registry, world.commands, max_concurrency=2, max_per_s=40, poll_s=0.05
    )
    op = await first.create(T, request_for(), "tester")
    assert op.total == 40
    await first.start()
    await eventually(lambda: first.invoked >= 10, timeout=20, what="some elements invoked")
    await first.stop()  # the process dies mid-batch
    invoked_before = first.invoked
    assert invoked_before < 40

    # A crash between "invocation created" and "element recorded": the invocation exists, the
    # element still says pending.
    pending = await store.elements_in(T, op.id, [ElementStatus.PENDING], 1)
    crashed = pending[0].device
    made_here = 1
    try:
        await world.commands.invoke(
            T,
            crashed,
            "set-interval",
            {"seconds": 5},
            None,
            "tester",
            invocation_id=element_invocation_id(T, op.id, crashed),
        )
    except Conflict:  # the stopped runner had created it already (the same half-done state)
        made_here = 0

    second = BatchOperations(await world.batch_store(), world.registry, world.commands, poll_s=0.05)
    await second.start()  # resumes unfinished operations at start
    try:

        async def all_invoked() -> bool:
            # The runner records the last element, then marks the operation RUNNING: wait for both.
            counts = await second.store.count_elements(T, op.id)
            current = await second.store.get_operation(T, op.id)
            return (
                counts.get(ElementStatus.QUEUED.value, 0) == 40
                and current is not None
                and current.status is OperationStatus.RUNNING
            )

        await eventually(all_invoked, timeout=30, what="all 40 elements queued and the operation running")
    finally:
        await second.stop()
    assert second.already_invoked >= 1  # the crashed element was found, not invoked again
    # Stopping the first runner can cut up to max_concurrency invokes short after the store write
    # but before they were counted; the second runner finds those as already invoked. Counted
    # creations therefore never exceed 40, and the store holds exactly one per device (below).
    assert invoked_before + second.invoked + made_here <= 40
    assert invoked_before + second.invoked + made_here + second.already_invoked >= 40
    queued = await world.invocations.list_pending(T)
    assert len(queued) == 40  # one invocation per device, none twice
    assert {q.id for q in queued} == {element_invocation_id(T, op.id, f"act-{i:02d}") for i in range(40)}
    elements, total = await second.store.list_elements(T, op.id, 1, 100)
    assert total == 40 and all(e.invocation == element_invocation_id(T, op.id, e.device) for e in elements)


async def test_cancel_stops_the_elements_not_yet_invoked(world: World) -> None:
    ops = BatchOperations(
        await world.batch_store(),
        world.registry,
        world.commands,
        max_concurrency=1,
        max_per_s=10,
        poll_s=0.05,
    )
    op = await ops.create(T, request_for(), "tester")
    await ops.start()
    try:
        await eventually(lambda: ops.invoked >= 3, timeout=20, what="three invoked")
        cancelled = await ops.cancel(T, op.id)
        assert cancelled.status is OperationStatus.CANCELLED
        # The runner gets every chance to invoke more (it polls every 0.05 s): it must not.
        await never(lambda: ops.invoked > 5, within=0.5, what="invocations after the cancel")
        _, counts = await ops.progress(T, op.id)
    finally:
        await ops.stop()
    invoked = len(await world.invocations.list_pending(T))
    assert counts.get("queued", 0) == invoked
    assert counts.get("cancelled", 0) == 40 - invoked > 0
    assert invoked <= ops.invoked <= 5  # at most the ones in flight when it was cancelled


async def test_two_scheduler_replicas_run_each_due_time_once(world: World) -> None:
    now = [T0 + 5_000]
    clock = lambda: now[0]  # noqa: E731
    store_a, store_b = await world.batch_store(), await world.batch_store()
    ops_a = BatchOperations(store_a, world.registry, world.commands)
    ops_b = BatchOperations(store_b, world.registry, world.commands)
    a = Scheduler(store_a, world.registry, world.commands, ops_a, replica="a", clock=clock)
    b = Scheduler(store_b, world.registry, world.commands, ops_b, replica="b", clock=clock)
    await store_a.create_schedule(
        T,
        Schedule(
            id="every-minute",
            cron="* * * * *",
            action=CommandAction(kind="command", device="act-01", command="ping"),
            tenant=T,
            created_ms=T0 + 1_000,
            updated_ms=T0 + 1_000,
        ),
    )
    ran = 0
    for step in range(1, 6):  # five minutes, both replicas ticking at the same instants
        for second in (0, 1, 20):
            now[0] = T0 + step * MINUTE + second * 1000
            results = await asyncio.gather(a.tick(), b.tick(), a.tick(), b.tick())
            ran += sum(results)
    assert ran == 5 and a.runs + b.runs == 5
    runs = await store_a.list_runs(T, "every-minute")
    assert [r.due_ms for r in runs] == [T0 + m * MINUTE for m in range(5, 0, -1)]
    assert len(await world.invocations.list_pending(T)) == 5  # one command per due time

    # Down for ten minutes: the latest missed due time runs, once; the others are skipped.
    now[0] = T0 + 15 * MINUTE + 30_000
    assert sum(await asyncio.gather(a.tick(), b.tick())) == 1
    assert (await store_a.list_runs(T, "every-minute", 1))[0].due_ms == T0 + 15 * MINUTE
    assert len(await world.invocations.list_pending(T)) == 6
    schedule = await store_b.get_schedule(T, "every-minute")
    assert schedule is not None and schedule.last_due_ms == T0 + 15 * MINUTE
    assert schedule.last_result.startswith("invocation ")

    # A third replica started late (no memory of what ran) runs nothing already claimed.
    c = Scheduler(await world.batch_store(), world.registry, world.commands, ops_a, replica="c", clock=clock)
    assert await c.tick() == 0


async def test_one_shot_schedule_fires_once_and_a_batch_schedule_starts_an_operation(world: World) -> None:
    now = [T0]
    store = await world.batch_store()
    ops = BatchOperations(store, world.registry, world.commands)
    sched = Scheduler(store, world.registry, world.commands, ops, clock=lambda: now[0])
    await store.create_schedule(
        T,
        Schedule.model_validate(
            {
                "id": "once",
                "at_ms": T0 + 30_000,
                "action": {
                    "kind": "batch",
                    "command": "ping",
                    "selection": {"devices": ["act-01", "act-02"]},
                },
                "tenant": T,
                "created_ms": T0,
                "updated_ms": T0,
            }
        ),
    )
    assert await sched.tick() == 0  # not due yet
    now[0] = T0 + 31_000
    assert await sched.tick() == 1
    now[0] = T0 + 90_000
    assert await sched.tick() == 0
    done = await store.get_schedule(T, "once")
    assert done is not None and not done.enabled and done.last_due_ms == T0 + 30_000
    listed, total = await store.list_operations(T, 1, 10)
    assert total == 1 and listed[0].schedule == "once" and listed[0].total == 2
    assert done.last_result == f"batch {listed[0].id}"


async def test_a_one_shot_schedule_set_before_its_creation_never_runs(world: World) -> None:
    """docs/api.md: a due time before the schedule was created never runs — a one-shot time in
    the past is not overdue, it was never ahead."""
    from fieldgate.cloud.services.scheduler import next_time

    now = [T0]
    store = await world.batch_store()
    ops = BatchOperations(store, world.registry, world.commands)
    sched = Scheduler(store, world.registry, world.commands, ops, clock=lambda: now[0])
    past = Schedule(
        id="past",
        at_ms=T0 - 60_000,
        action=CommandAction(kind="command", device="act-01", command="ping"),
        tenant=T,
        created_ms=T0,
        updated_ms=T0,
    )
    await store.create_schedule(T, past)
    assert next_time(past, now[0]) is None
    for step in (0, 1_000, 3_600_000):
        now[0] = T0 + step
        assert await sched.tick() == 0
    assert await world.invocations.list_pending(T) == []
    assert await store.list_runs(T, "past", 10) == []
    kept = await store.get_schedule(T, "past")
    assert kept is not None and kept.last_due_ms is None


async def test_a_group_selection_resolves_through_the_site_store(world: World, tmp_path: Path) -> None:
    from fieldgate.cloud.errors import InvalidRequest
    from fieldgate.cloud.store.site import DeviceGroup, GroupElement

    site = storage_backend(world.config).site()
    await site.start()
    try:
        await site.create(T, DeviceGroup(token="valves"))
        await site.create(T, DeviceGroup(token="north"))
        await site.put_element(T, "north", GroupElement(kind="device", token="act-03"))
        await site.put_element(T, "valves", GroupElement(kind="device", token="act-01"))
        await site.put_element(T, "valves", GroupElement(kind="group", token="north"))
        ops = BatchOperations(await world.batch_store(), world.registry, world.commands, groups=site)
        req = BatchRequest(command="ping", selection=Selection(group="valves"))
        assert await ops.resolve(T, req.selection) == ["act-01", "act-03"]
        op = await ops.create(T, req, "tester")
        assert op.total == 2
        with pytest.raises(InvalidRequest, match=r"selection\.group"):
            await ops.create(T, BatchRequest(command="ping", selection=Selection(group="nope")), "tester")
    finally:
        await site.stop()


async def test_a_claim_whose_replica_died_is_taken_over_once(world: World) -> None:
    from fieldgate.cloud.domain.batch import ScheduleRun

    now = [T0 + 10_000]
    store = await world.batch_store()
    ops = BatchOperations(store, world.registry, world.commands)
    await store.create_schedule(
        T,
        Schedule(
            id="once",
            at_ms=T0,
            action=CommandAction(kind="command", device="act-05", command="ping"),
            tenant=T,
            created_ms=T0 - 1000,
            updated_ms=T0 - 1000,
        ),
    )
    # Replica "dead" claimed the due time and died before running it.
    assert await store.claim_run(
        T, ScheduleRun(schedule="once", due_ms=T0, replica="dead", run_ms=T0 + 5_000)
    )
    a = Scheduler(store, world.registry, world.commands, ops, replica="a", clock=lambda: now[0], lease_s=60)
    assert await a.tick() == 0  # within the lease: the claimer may still be at it
    assert await a.tick() == 0
    assert await world.invocations.list_pending(T) == []
    now[0] = T0 + 70_000
    b = Scheduler(store, world.registry, world.commands, ops, replica="b", clock=lambda: now[0], lease_s=60)
    assert sum(await asyncio.gather(a.tick(), b.tick())) >= 1  # both may take over; one invocation results
    pending = await world.invocations.list_pending(T)
    assert [p.device for p in pending] == ["act-05"]
    run = await store.get_run(T, "once", T0)
    assert run is not None and run.result == f"invocation {pending[0].id}"
    done = await store.get_schedule(T, "once")
    assert done is not None and not done.enabled
    assert await a.tick() == 0 and await b.tick() == 0
    assert len(await world.invocations.list_pending(T)) == 1
