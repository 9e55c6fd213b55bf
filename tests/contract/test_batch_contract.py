"""The batch store's contract on SQLite and Cassandra (the latter marked distributed): operations
with their elements (listing order, totals, status counts, cancelling what is pending),
schedules (a refused second create, replace of a missing one, delete) and the exactly-once claim
of a schedule's run; another store object (replica) sees the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldgate.cloud.config import CloudConfig
from fieldgate.cloud.domain.batch import (
    BatchElement,
    BatchOperation,
    CommandAction,
    ElementStatus,
    OperationStatus,
    Schedule,
    ScheduleRun,
    Selection,
)
from fieldgate.cloud.errors import Conflict, NotFound
from fieldgate.cloud.store.backend import storage_backend
from fieldgate.cloud.store.batch import BatchStore
from tests.contract.conftest import STORES, backend_config, drop_keyspaces

T = "default"
T0 = 1_700_000_000_000


@pytest.fixture(params=STORES)
async def config(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CloudConfig]:
    cfg = backend_config(request, request.param, tmp_path / "cloud")
    yield cfg
    if request.param == "cassandra":
        await drop_keyspaces(request.getfixturevalue("cassandra"), cfg.store.keyspace_prefix)


async def _store(config: CloudConfig) -> BatchStore:
    store = storage_backend(config).batch()
    await store.start()
    return store


def operation(op_id: str, devices: list[str], created_ms: int) -> BatchOperation:
    return BatchOperation(
        id=op_id,
        tenant=T,
        command="ping",
        params={"n": 1},
        selection=Selection(devices=devices),
        total=len(devices),
        created_ms=created_ms,
        updated_ms=created_ms,
    )


def schedule(schedule_id: str, device: str = "d1") -> Schedule:
    return Schedule(
        id=schedule_id,
        cron="* * * * *",
        action=CommandAction(kind="command", device=device, command="ping"),
        tenant=T,
        created_ms=T0,
        updated_ms=T0,
    )


async def test_operations_with_their_elements(config: CloudConfig) -> None:
    store = await _store(config)
    other = await _store(config)
    try:
        assert await store.get_operation(T, "op-1") is None
        assert await store.list_operations(T, 1, 10) == ([], 0)
        first = await store.create_operation(T, operation("op-1", ["d3", "d1", "d2"], T0), ["d3", "d1", "d2"])
        assert first.id == "op-1"
        await store.create_operation(T, operation("op-2", ["d9"], T0 + 1000), ["d9"])
        # A second create of an id is refused and leaves the first one (and its elements) alone.
        with pytest.raises(Conflict):
            await other.create_operation(T, operation("op-1", ["x"], T0 + 5), ["x"])
        got = await other.get_operation(T, "op-1")
        assert got is not None and got.selection.devices == ["d3", "d1", "d2"] and got.params == {"n": 1}

        ops, total = await other.list_operations(T, 1, 10)  # newest first
        assert [o.id for o in ops] == ["op-2", "op-1"] and total == 2
        ops, total = await other.list_operations(T, 2, 1)
        assert [o.id for o in ops] == ["op-1"] and total == 2
        assert sorted(o.id for o in await other.unfinished_operations(T)) == ["op-1", "op-2"]

        elements, total = await other.list_elements(T, "op-1", 1, 10)  # by device token
        assert [(e.device, e.status) for e in elements] == [
            ("d1", ElementStatus.PENDING),
            ("d2", ElementStatus.PENDING),
            ("d3", ElementStatus.PENDING),
        ]
        assert total == 3
        elements, total = await other.list_elements(T, "op-1", 2, 2)
        assert [e.device for e in elements] == ["d3"] and total == 3

        await store.save_elements(
            T,
            [
                BatchElement(
                    operation="op-1",
                    device="d1",
                    status=ElementStatus.QUEUED,
                    invocation="inv-1",
                    updated_ms=T0 + 9,
                ),
                BatchElement(
                    operation="op-1",
                    device="d2",
                    status=ElementStatus.FAILED,
                    reason="offline",
                    updated_ms=T0 + 9,
                ),
            ],
        )
        queued = await other.elements_in(T, "op-1", [ElementStatus.QUEUED], 10)
        assert [(e.device, e.invocation, e.updated_ms) for e in queued] == [("d1", "inv-1", T0 + 9)]
        failed = await other.elements_in(T, "op-1", [ElementStatus.FAILED, ElementStatus.QUEUED], 1)
        assert len(failed) == 1  # the limit holds
        assert await other.count_elements(T, "op-1") == {"queued": 1, "failed": 1, "pending": 1}

        assert await store.cancel_pending(T, "op-1") == 1
        assert await store.cancel_pending(T, "op-1") == 0
        assert await other.count_elements(T, "op-1") == {"queued": 1, "failed": 1, "cancelled": 1}
        (d2,) = [e for e in (await other.list_elements(T, "op-1", 1, 10))[0] if e.device == "d2"]
        assert d2.reason == "offline" and d2.invocation is None

        await store.save_operation(T, first.model_copy(update={"status": OperationStatus.COMPLETED}))
        done = await other.get_operation(T, "op-1")
        assert done is not None and done.status is OperationStatus.COMPLETED
        assert [o.id for o in await other.unfinished_operations(T)] == ["op-2"]
    finally:
        await other.stop()
        await store.stop()


async def test_schedules_and_the_one_claim_of_a_run(config: CloudConfig) -> None:
    store = await _store(config)
    other = await _store(config)
    try:
        assert await store.list_schedules(T) == []
        assert await store.get_schedule(T, "s1") is None
        await store.create_schedule(T, schedule("s1"))
        await store.create_schedule(T, schedule("s2"))
        with pytest.raises(Conflict):
            await other.create_schedule(T, schedule("s1", device="other"))
        got = await other.get_schedule(T, "s1")
        assert got is not None and isinstance(got.action, CommandAction) and got.action.device == "d1"
        assert sorted(s.id for s in await other.list_schedules(T)) == ["s1", "s2"]

        with pytest.raises(NotFound):
            await store.replace_schedule(T, schedule("nope"))
        await store.replace_schedule(T, schedule("s2").model_copy(update={"enabled": False}))
        s2 = await other.get_schedule(T, "s2")
        assert s2 is not None and s2.enabled is False

        # The first claim of (schedule, due time) wins, on whichever store object makes it.
        run = ScheduleRun(schedule="s1", due_ms=T0 + 60_000, replica="a", run_ms=T0 + 60_001)
        assert await store.claim_run(T, run) is True
        assert await other.claim_run(T, run.model_copy(update={"replica": "b"})) is False
        assert await other.claim_run(T, run.model_copy(update={"due_ms": T0 + 120_000})) is True
        claimed = await other.get_run(T, "s1", T0 + 60_000)
        assert claimed is not None and claimed.replica == "a" and claimed.result == ""
        assert await other.get_run(T, "s1", T0) is None

        await store.finish_run(T, "s1", T0 + 60_000, "op-7")
        finished = await other.get_run(T, "s1", T0 + 60_000)
        assert finished is not None and finished.result == "op-7"
        runs = await other.list_runs(T, "s1")  # newest first
        assert [r.due_ms for r in runs] == [T0 + 120_000, T0 + 60_000]
        assert [r.due_ms for r in await other.list_runs(T, "s1", limit=1)] == [T0 + 120_000]

        assert await store.delete_schedule(T, "s2") is True
        assert await store.delete_schedule(T, "s2") is False
        assert [s.id for s in await other.list_schedules(T)] == ["s1"]
    finally:
        await other.stop()
        await store.stop()
