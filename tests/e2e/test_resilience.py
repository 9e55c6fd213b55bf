"""No event lost, none stored twice: a cloud outage under load, and kill -9 of the edge agent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.config import BusConfig, CloudConfig, StoreConfig
from fieldgate.cloud.store.events import EventQuery
from fieldgate.suite import Suite, SuiteOptions
from tests.helpers.backends import BACKENDS, backends_for
from tests.helpers.publisher import AckedPublisher
from tests.helpers.waiting import eventually, free_port, never, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def stored_ids(cloud: CloudApp, device: str) -> list[str]:
    ids: list[str] = []
    page = 1
    while True:
        res = await cloud.parts.event_store.list_device_events(
            EventQuery(tenant="default", device=device, kind="measurement", page=page, page_size=1000)
        )
        ids += [e.alternate_id for e in res.items]
        if len(res.items) < 1000:
            return ids
        page += 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_cloud_outage_under_load_loses_nothing(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    # Load at 600 msg/s, before, during and after the outage: it stops once the cloud is back and
    # has taken more (a bound of 60 s of load, far more than it takes even on a busy machine).
    most = 600 * 60
    b = backends_for(request, backend)
    opts = SuiteOptions(
        data_dir=tmp_path / "fg",
        grpc_port=free_port(),
        admin_password="pw-of-the-outage",
        bus=b.bus,
        store=b.store,
        zookeeper=b.zookeeper,
    )
    async with Suite(opts) as suite:
        pub = AckedPublisher("127.0.0.1", suite.mqtt_port)
        await asyncio.to_thread(pub.connect)
        done, stop = threading.Event(), threading.Event()

        def load() -> None:
            pub.publish_measurements("default", "outage-1", most, rate_hz=600, stop=stop)
            done.set()

        def acked_more(than: int) -> bool:
            return len(pub.acked) >= than

        thread = threading.Thread(target=load, daemon=True)
        thread.start()

        async def flowing() -> bool:
            return len(await stored_ids(suite.cloud, "outage-1")) >= 300

        await eventually(flowing, timeout=60, interval=0.2, what="events flowing into the cloud")
        # Outage: the whole cloud goes away while devices keep publishing (the edge buffers).
        cfg: CloudConfig = suite.cloud.config
        await suite.cloud.stop()
        mark = len(pub.acked)
        await eventually(
            lambda: acked_more(mark + 1200), timeout=60, what="two seconds of load during the outage"
        )
        suite.cloud = CloudApp(cfg)
        await suite.cloud.start()
        mark = len(pub.acked)
        await eventually(lambda: acked_more(mark + 600), timeout=60, what="load after the outage")
        assert not done.is_set(), "the load ended before the outage did"
        stop.set()
        await asyncio.to_thread(thread.join, 60)
        assert await asyncio.to_thread(pub.wait_all_acked, 30)
        pub.close()
        total = len(pub.sent)
        assert len(pub.acked) == total

        async def all_stored() -> bool:
            return len(await stored_ids(suite.cloud, "outage-1")) >= total

        await eventually(all_stored, timeout=60, interval=0.5, what="every event stored")

        async def stored_twice() -> bool:
            return len(await stored_ids(suite.cloud, "outage-1")) > total

        # A duplicate still in flight would land now: none may.
        await never(stored_twice, within=1.0, interval=0.25, what="an event stored twice")
        ids = await stored_ids(suite.cloud, "outage-1")
        assert len(ids) == total, f"{len(ids) - len(set(ids))} stored twice"
        assert set(ids) == set(pub.acked)


def _start_edge(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fieldgate.cli", "edge", "run", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("backend", BACKENDS)
async def test_kill_9_of_edge_agent_loses_nothing_acknowledged(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    b = backends_for(request, backend)
    cloud_cfg = CloudConfig(
        data_dir=tmp_path / "cloud",
        grpc_port=0,
        rest_port=0,
        bus=b.bus or BusConfig(),
        store=b.store or StoreConfig(),
        zookeeper=b.zookeeper,
    )
    async with CloudApp(cloud_cfg) as cloud:
        mqtt_port = free_port()
        edge_cfg = tmp_path / "edge.yaml"
        edge_cfg.write_text(
            yaml.safe_dump(
                {
                    "edge_id": "edge-k9",
                    "data_dir": str(tmp_path / "edge"),
                    "mqtt": {"port": mqtt_port},
                    "uplink": {"target": f"127.0.0.1:{cloud.grpc_port}"},
                }
            )
        )
        log = tmp_path / "edge.log"
        proc = _start_edge(edge_cfg, log)
        try:
            await asyncio.to_thread(wait_for_port, mqtt_port, proc=proc)
            pub = AckedPublisher("127.0.0.1", mqtt_port)
            await asyncio.to_thread(pub.connect)
            stop = threading.Event()
            thread = threading.Thread(
                target=pub.publish_measurements,
                args=("default", "k9-1", 20000),
                kwargs={"stop": stop},
                daemon=True,
            )
            thread.start()
            await eventually(lambda: asyncio.sleep(0, len(pub.acked) > 500), timeout=20, what="500 acks")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            stop.set()
            await asyncio.to_thread(thread.join, 10)
            acked = set(pub.acked)
            pub.client.loop_stop()
            assert len(acked) > 500

            proc = _start_edge(edge_cfg, log)
            await asyncio.to_thread(wait_for_port, mqtt_port, proc=proc)

            async def all_acked_stored() -> bool:
                return acked <= set(await stored_ids(cloud, "k9-1"))

            await eventually(
                all_acked_stored,
                timeout=60,
                interval=0.5,
                what=f"all {len(acked)} acknowledged events stored after kill -9",
            )
            ids = await stored_ids(cloud, "k9-1")
            assert len(ids) == len(set(ids)), "an event was stored twice"
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
