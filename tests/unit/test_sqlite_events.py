"""What only the SQLite event store has: a file per tenant and the migration of an older file.
The behaviour both event stores share is in tests/contract/test_events_contract.py."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldgate.cloud.store.events import AssignmentEventQuery, EventQuery
from fieldgate.cloud.store.sqlite.events import SqliteEventStore, event_id
from fieldgate.v1 import events_pb2 as pb

T0 = 1_700_000_000_000


def measurement(
    device: str = "dev-1", *, t: int = T0, alt: str | None = None, tenant: str = "acme", received: int = 0
) -> pb.Event:
    alt = alt or uuid.uuid4().hex
    e = pb.Event(
        tenant=tenant,
        device=device,
        alternate_id=alt,
        id=event_id(tenant, device, alt),
        event_time_ms=t,
        received_time_ms=received or t,
    )
    e.measurement.values["temperature"] = 21.5
    return e


def assigned(e: pb.Event, assignment: str) -> pb.Event:
    e.assignment = assignment
    return e


def event_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.glob("events-*.db"))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteEventStore]:
    s = SqliteEventStore(tmp_path)
    await s.start()
    yield s
    await s.stop()


async def test_each_tenant_has_a_file_of_its_own(store: SqliteEventStore, tmp_path: Path) -> None:
    await store.add("acme", [measurement("shared-token", tenant="acme")])
    await store.add("globex", [assigned(measurement("shared-token", tenant="globex"), "shared")])
    assert event_files(tmp_path) == ["events-acme.db", "events-globex.db"]


async def test_reads_of_an_unknown_tenant_create_no_file(store: SqliteEventStore, tmp_path: Path) -> None:
    assert (await store.list_device_events(EventQuery("nobody", "dev-1"))).total == 0
    assert await store.get_event("nobody", "x") is None
    assert await store.get_event("../etc", "x") is None
    assert (await store.list_assignment_events(AssignmentEventQuery("nobody", "shared"))).total == 0
    assert (await store.list_assignment_events(AssignmentEventQuery("../etc", "shared"))).total == 0
    assert await store.events_for_invocation("nobody", "x") == []
    assert event_files(tmp_path) == []


async def test_a_database_of_the_previous_schema_gains_the_assignment_indexes(tmp_path: Path) -> None:
    s1 = SqliteEventStore(tmp_path)
    await s1.start()
    await s1.add("acme", [assigned(measurement(t=T0 + i), "A1") for i in range(3)])
    await s1.stop()
    # What a database written before assignment queries existed looks like.
    with sqlite3.connect(tmp_path / "events-acme.db") as conn:
        conn.execute("DROP INDEX events_by_assignment_time")
        conn.execute("DROP INDEX events_by_assignment_rare_kind_time")
    s2 = SqliteEventStore(tmp_path)
    await s2.start()
    try:
        assert (await s2.list_assignment_events(AssignmentEventQuery("acme", "A1"))).total == 3
    finally:
        await s2.stop()
    with sqlite3.connect(tmp_path / "events-acme.db") as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT data FROM events WHERE assignment = ? AND assignment != ''"
                " ORDER BY event_time_ms DESC",
                ("A1",),
            )
        )
    assert {"events_by_assignment_time", "events_by_assignment_rare_kind_time"} <= names
    assert "events_by_assignment_time" in plan
