"""The dashboard's live stream and edges page with every cloud service in its own process on
real ZooKeeper, Kafka and Cassandra: the ``api`` process reads the bus itself (its own tail
consumer group) and the edges come from the Cassandra edge directory that ``ingest`` writes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.suite import Suite, SuiteOptions
from tests.e2e.test_end_to_end import publish_once
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.distributed, pytest.mark.integration]

PASSWORD = "distributed-dashboard-pw"


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    options = SuiteOptions(
        data_dir=tmp_path / "fg", admin_password=PASSWORD, distributed=True, edge_process=True
    )
    async with Suite(options) as running:
        yield running


async def test_live_stream_and_edges_across_processes(suite: Suite) -> None:
    async with httpx.AsyncClient(base_url=suite.rest_url, timeout=10) as api:
        r = await api.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
        api.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        async with api.stream("GET", "/api/v1/live", timeout=120) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert await anext(lines) == "event: hello"

            async def publisher() -> None:
                # Until the api's tail consumer has its partitions, events pass it by: keep sending.
                for i in range(60):
                    await asyncio.to_thread(
                        publish_once,
                        suite.mqtt_port,
                        "fieldgate/default/devices/dash-1/events",
                        {"type": "measurement", "values": {"n": float(i)}},
                    )
                    # Pacing of the re-sends, not a wait: the stream's reader below waits (with
                    # its deadline) for the first event that gets through.
                    await asyncio.sleep(2)

            task = asyncio.create_task(publisher())
            event: dict[str, Any] | None = None
            try:
                async with asyncio.timeout(120):
                    async for line in lines:
                        if line.startswith("data: ") and '"measurement"' in line:
                            event = json.loads(line[6:])
                            break
            finally:
                task.cancel()
        assert event is not None and event["device"] == "dash-1" and "n" in event["values"]

        async def edge_reported() -> dict[str, Any] | None:
            items = (await api.get("/api/v1/edges")).json()["items"]
            edge: dict[str, Any] = next((e for e in items if e["edge_id"] == suite.options.edge_id), {})
            return edge if edge.get("buffer_depth") is not None else None

        edge = await eventually(edge_reported, 60, "the edge's buffer depth in /edges", interval=1)
        assert edge["connected"] and edge["buffer_depth"] is not None and edge["uplink_lag_ms"] is not None
        fleet = (await api.get("/api/v1/fleet")).json()
        assert fleet["edges_connected"] >= 1 and fleet["events_last_minute"] >= 1
