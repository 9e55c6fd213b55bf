"""The edge directory's contract on SQLite and Cassandra (the latter marked distributed):
upserts add tenants and keep the last report, a stale stream's disconnect does not win over
a newer stream, and the connected lease runs out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldgate.cloud.store.backend import storage_backend
from fieldgate.cloud.store.edges import STALE_AFTER_MS, EdgeDirectory, EdgeRecord, EdgeReport
from tests.contract.conftest import STORES, backend_config, drop_keyspaces


@pytest.fixture(params=STORES)
async def directory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EdgeDirectory]:
    config = backend_config(request, request.param, tmp_path / "cloud")
    d = storage_backend(config).edges()
    await d.start()
    yield d
    await d.stop()
    if request.param == "cassandra":
        await drop_keyspaces(request.getfixturevalue("cassandra"), config.store.keyspace_prefix)


REPORT = EdgeReport(buffer_depth=12, oldest_pending_ms=900, failed_decodes=2, time_ms=1000)


async def test_empty(directory: EdgeDirectory) -> None:
    assert await directory.list_edges() == []


async def test_upsert_adds_tenants_and_keeps_the_last_report(directory: EdgeDirectory) -> None:
    await directory.put(
        EdgeRecord("e1", "s1", "0.1", connected_ms=100, last_seen_ms=100, tenants=frozenset({"a"}))
    )
    await directory.put(
        EdgeRecord(
            "e1", "s1", "0.1", connected_ms=100, last_seen_ms=200, tenants=frozenset({"b"}), report=REPORT
        )
    )
    await directory.put(EdgeRecord("e1", "s1", "0.1", connected_ms=100, last_seen_ms=300))  # no report: kept
    await directory.put(EdgeRecord("e0", "s9", "0.2", connected_ms=50, last_seen_ms=60))
    edges = await directory.list_edges()
    assert [e.edge_id for e in edges] == ["e0", "e1"]
    e1 = edges[1]
    assert e1.tenants == {"a", "b"} and e1.report == REPORT and e1.last_seen_ms == 300
    assert e1.version == "0.1" and e1.connected_ms == 100 and e1.session == "s1"
    assert edges[0].report is None and edges[0].tenants == frozenset()


async def test_a_stale_disconnect_does_not_win(directory: EdgeDirectory) -> None:
    await directory.put(EdgeRecord("e1", "old", "0.1", connected_ms=100, last_seen_ms=100))
    await directory.put(EdgeRecord("e1", "new", "0.1", connected_ms=200, last_seen_ms=200))  # reconnected
    await directory.disconnected("e1", "old", 250)  # the old stream's close arrives late
    (e1,) = await directory.list_edges()
    assert e1.connected_ms == 200 and e1.connected(210)
    await directory.disconnected("e1", "new", 300)
    (e1,) = await directory.list_edges()
    assert e1.connected_ms == 0 and e1.last_seen_ms == 300 and not e1.connected(301)


async def test_the_connected_lease_runs_out(directory: EdgeDirectory) -> None:
    await directory.put(EdgeRecord("e1", "s", "0.1", connected_ms=100, last_seen_ms=1000))
    (e1,) = await directory.list_edges()
    assert e1.connected(1000 + STALE_AFTER_MS - 1)
    assert not e1.connected(1000 + STALE_AFTER_MS)  # its ingest went away without a word
