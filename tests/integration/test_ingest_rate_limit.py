"""Ingest's per-tenant rate limit with a real edge uplink and the real IngestService: a tenant
over ``max_events_per_s`` has its batches held (counted), every event still arrives exactly
once (the edge keeps what is not acknowledged), the bucket's bound holds on the bus, and an
unlimited tenant on the same edge is not refused anything."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fieldgate.cloud.bus import DECODED, topic_name
from fieldgate.cloud.bus.embedded import EmbeddedBus
from fieldgate.cloud.pipeline.ingest.service import IngestService
from fieldgate.cloud.pipeline.sessions import EdgeSessions
from fieldgate.cloud.pipeline.stage import decode_batch
from fieldgate.cloud.store.sqlite.registry import SqliteRegistry
from fieldgate.cloud.zk.models import TenantSettings, TenantSettingsRegistry
from fieldgate.edge.buffer import EventBuffer
from fieldgate.edge.config import BufferConfig, UplinkConfig
from fieldgate.edge.uplink import Uplink
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.integration

RATE, BURST, N = 40.0, 20, 120


async def test_over_rate_batches_are_held_and_nothing_is_lost(tmp_path: Path) -> None:
    live = TenantSettingsRegistry(
        [TenantSettings(token="lim", max_events_per_s=RATE, burst_events=BURST), TenantSettings(token="free")]
    )
    registry = SqliteRegistry(tmp_path / "registry")
    bus = EmbeddedBus(tmp_path / "bus.db", trim_interval_s=None)
    async with bus:
        await registry.start()
        for t in ("lim", "free"):
            await registry.ensure_tenant(model.Tenant(token=t))
        ingest = IngestService(bus, registry, EdgeSessions(), "127.0.0.1", 0, tenant_settings=live)
        await ingest.start()
        try:
            async with EventBuffer(BufferConfig(), tmp_path / "buffer.db") as buf:
                events = [
                    pb.Event(
                        tenant=t,
                        device="d1",
                        alternate_id=f"{t}-{i}",
                        measurement=pb.Measurement(values={"v": i}),
                    )
                    for i in range(N)
                    for t in ("lim", "free")
                ]
                await buf.append(events)
                config = UplinkConfig(target=f"127.0.0.1:{ingest.port}", batch_max_events=10)

                async def ignore(_: object) -> None:
                    return None

                uplink = Uplink(config, "edge-1", buf, ignore)
                started = time.monotonic()
                await uplink.start()
                try:
                    await eventually(lambda: buf.depth == 0, timeout=60, what="every event acknowledged")
                finally:
                    await uplink.stop()
                elapsed = time.monotonic() - started
        finally:
            await ingest.stop()
            await registry.stop()

        assert ingest.stats.batches_throttled > 0 and ingest.stats.events_throttled > 0
        assert ingest.stats.events_rejected == 0 and uplink.stats.events_refused == 0
        got: dict[str, list[str]] = {}
        async with bus.consumer("check", DECODED) as consumer:
            for _ in range(20):
                records = await consumer.poll(1000, 0.2)
                for r in records:
                    for ev in decode_batch(r, r.topic.split(".")[2]).events:
                        got.setdefault(ev.tenant, []).append(ev.alternate_id)
        # Exactly once each: held batches were never published before they were acknowledged.
        for t in ("lim", "free"):
            assert sorted(got[t]) == sorted(f"{t}-{i}" for i in range(N)), t
        # The bound: at most the burst plus the rate over the time it took (plus one batch).
        assert N <= BURST + RATE * elapsed + 10
        assert elapsed >= (N - BURST - 10) / RATE * 0.9
        assert topic_name("lim", DECODED) in bus.end_offsets(DECODED)
