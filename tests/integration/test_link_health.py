"""Link health: an adapter's HealthBoard shows up as Prometheus metrics and its connect/disconnect
transitions reach the cloud as PRESENCE state changes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.edge.health import HealthBoard
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.edge_adapters import LoopbackAdapter
from tests.helpers.edge_cloud import TestCloud

pytestmark = pytest.mark.integration


class HealthyLoopback(LoopbackAdapter):
    name = "loop-health"

    def __init__(self) -> None:
        super().__init__()
        self.health = HealthBoard()


@pytest.fixture
async def cloud() -> AsyncIterator[TestCloud]:
    async with TestCloud() as c:
        yield c


def presence(events: Mapping[Any, pb.Event], device: str) -> list[str]:
    return [
        e.state_change.current
        for e in events.values()
        if e.device == device and e.state_change.kind == pb.STATE_CHANGE_KIND_PRESENCE
    ]


async def test_presence_and_link_metrics(tmp_path: Path, cloud: TestCloud) -> None:
    adapter = HealthyLoopback()
    config = EdgeConfig(
        data_dir=tmp_path / "edge",
        mqtt=MqttConfig(enabled=False),
        uplink=UplinkConfig(target=cloud.target, batch_max_delay_ms=2),
    )
    async with EdgeAgent(config, [adapter]) as agent:
        adapter.health.connected("default", "port-1")
        adapter.health.error("default", "port-1", "crc")
        adapter.health.error("default", "port-1", "crc")
        adapter.health.disconnected("default", "port-1")
        adapter.health.connected("default", "port-1", reconnect=True)
        await cloud.wait_until(lambda: len(presence(cloud.events, "port-1")) == 3)
        assert presence(cloud.events, "port-1") == ["connected", "disconnected", "connected"]

        text = agent.metrics.render()
        labels = 'adapter="loop-health",device="port-1",tenant="default"'
        assert f"fieldgate_device_connected{{{labels}}} 1.0" in text
        assert f"fieldgate_device_reconnects_total{{{labels}}} 1.0" in text
        errors = 'adapter="loop-health",device="port-1",kind="crc",tenant="default"'
        assert f"fieldgate_device_errors_total{{{errors}}} 2.0" in text


def test_board_is_bounded() -> None:
    board = HealthBoard(max_devices=2)
    for i in range(5):
        board.seen("default", f"d{i}")
    assert len(board.snapshot()) == 2 and board.untracked == 3
    for i in range(100):
        board.error("default", "d0", f"kind-{i}")
    errors = board.snapshot()[("default", "d0")].errors
    assert len(errors) <= 33 and errors["other"] > 0
