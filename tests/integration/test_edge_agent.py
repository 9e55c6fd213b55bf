"""The assembled edge agent: in-memory adapter, real embedded MQTT with paho devices, kill -9.

The cloud is played by tests/helpers/edge_cloud.py (a real gRPC server on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import BufferConfig, CommandsConfig, EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.edge.errors import BufferFull
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.edge_adapters import LoopbackAdapter
from tests.helpers.edge_cloud import TestCloud
from tests.helpers.edge_mqtt import AckedPublisher, CommandDevice
from tests.helpers.waiting import eventually, free_port, never, wait_for_port

pytestmark = pytest.mark.integration

AGENT_PROC = Path(__file__).resolve().parents[1] / "helpers" / "edge_agent_proc.py"


def edge_config(tmp_path: Path, cloud: TestCloud, **overrides: Any) -> EdgeConfig:
    base: dict[str, Any] = {
        "edge_id": "edge-test",
        "data_dir": tmp_path / "edge",
        "mqtt": MqttConfig(enabled=False),
        "uplink": UplinkConfig(
            target=cloud.target, batch_max_delay_ms=2, backoff_initial_s=0.05, backoff_max_s=0.5
        ),
        "commands": CommandsConfig(response_timeout_s=1.0),
    }
    base.update(overrides)
    return EdgeConfig(**base)


def measurement(device: str, value: float, alt: str = "") -> pb.Event:
    e = pb.Event(tenant="default", device=device, alternate_id=alt, event_time_ms=1_700_000_000_000)
    e.measurement.values["temperature"] = value
    return e


@pytest.fixture
async def cloud() -> AsyncIterator[TestCloud]:
    async with TestCloud() as c:
        yield c


async def test_events_get_alternate_ids_and_reach_the_cloud(tmp_path: Path, cloud: TestCloud) -> None:
    adapter = LoopbackAdapter()
    async with EdgeAgent(edge_config(tmp_path, cloud), [adapter]) as agent:
        await adapter.publish([measurement("dev-1", float(i)) for i in range(50)])
        await adapter.publish([measurement("dev-2", 1.0, alt="from-device")])
        await cloud.wait_until(lambda: len(cloud.events) == 51)
        ids = cloud.unique_ids()
        assert "from-device" in ids
        generated = ids - {"from-device"}
        assert len(generated) == 50 and all(len(a) == 32 for a in generated)
        await eventually(lambda: agent.buffer.depth == 0, 10)
        assert "fieldgate_edge_events_accepted_total 51.0" in agent.metrics.render()


async def test_bad_payloads_are_kept_counted_and_harm_nothing(tmp_path: Path, cloud: TestCloud) -> None:
    adapter = LoopbackAdapter()
    async with EdgeAgent(edge_config(tmp_path, cloud), [adapter]) as agent:
        await adapter.publish_bad(b"{not json", "invalid JSON: Expecting property name")
        await adapter.publish_bad(b'{"type":"nope"}', "unknown event type 'nope'")
        await adapter.publish([measurement("dev-1", 2.0)])
        # An event of a tenant this edge does not serve goes to the lane as well.
        foreign = measurement("dev-9", 1.0)
        foreign.tenant = "other"
        await adapter.publish([foreign])
        await cloud.wait_until(lambda: len(cloud.events) == 1)
        failed = await agent.failed_decodes(10)
        assert [f.reason for f in failed] == [
            "tenant 'other' is not served by this edge",
            "unknown event type 'nope'",
            "invalid JSON: Expecting property name",
        ]
        assert failed[2].payload == b"{not json"
        text = agent.metrics.render()
        assert 'fieldgate_edge_payloads_rejected_total{reason="invalid json"} 1.0' in text
        assert 'fieldgate_edge_payloads_rejected_total{reason="unknown event type"} 1.0' in text
        assert "fieldgate_failed_decodes 3.0" in text


async def test_command_round_trip_through_the_agent(tmp_path: Path, cloud: TestCloud) -> None:
    adapter = LoopbackAdapter(auto_respond=True)
    async with EdgeAgent(edge_config(tmp_path, cloud), [adapter]) as agent:
        await cloud.wait_for_session()
        await adapter.set_online("default", "dev-1")
        down = svc.CommandDown(
            tenant="default",
            device="dev-1",
            invocation=pb.CommandInvocation(invocation="inv-1", command="ping"),
        )
        await cloud.send_command(down)
        # The device's answer travels up as an ordinary event.
        await cloud.wait_until(
            lambda: any(e.command_response.invocation == "inv-1" for e in cloud.events.values())
        )
        await cloud.wait_until(
            lambda: (
                [s.status for s in cloud.statuses if s.invocation == "inv-1"]
                == [svc.COMMAND_STATUS_QUEUED, svc.COMMAND_STATUS_DELIVERED]
            )
        )
        assert agent.router.pending == 0
        # Answered, so the response timeout (1 s) passes without a FAILED.
        await never(
            lambda: svc.COMMAND_STATUS_FAILED in [s.status for s in cloud.statuses],
            within=1.5,
            what="FAILED for an answered command",
        )
        text = agent.metrics.render()
        assert 'fieldgate_commands_total{status="delivered"} 1.0' in text
        assert "fieldgate_uplink_connected 1.0" in text


async def test_reject_new_policy_reaches_the_adapter(tmp_path: Path) -> None:
    # No cloud at all: the buffer fills up and the adapter is told (so it does not PUBACK).
    config = EdgeConfig(
        data_dir=tmp_path / "edge",
        mqtt=MqttConfig(enabled=False),
        buffer=BufferConfig(max_events=10, overflow="reject_new"),
        uplink=UplinkConfig(target=f"127.0.0.1:{free_port()}", backoff_initial_s=0.05, backoff_max_s=0.2),
    )
    adapter = LoopbackAdapter()
    async with EdgeAgent(config, [adapter]) as agent:
        await adapter.publish([measurement("dev-1", float(i)) for i in range(10)])
        with pytest.raises(BufferFull):
            await adapter.publish([measurement("dev-1", 99.0)])
        assert agent.buffer.depth == 10
        assert "fieldgate_buffer_rejected_total 1.0" in agent.metrics.render()


async def test_stop_is_idempotent_and_restart_resumes(tmp_path: Path, cloud: TestCloud) -> None:
    adapter = LoopbackAdapter()
    config = edge_config(tmp_path, cloud, uplink=UplinkConfig(target="127.0.0.1:1", backoff_max_s=0.2))
    agent = EdgeAgent(config, [adapter])
    await agent.start()
    await agent.start()
    await adapter.publish([measurement("dev-1", float(i)) for i in range(20)])
    await agent.stop()
    await agent.stop()
    assert not agent.running
    # Same data dir, now pointing at the cloud: the 20 buffered events go up.
    again = EdgeAgent(edge_config(tmp_path, cloud), [LoopbackAdapter()])
    async with again:
        assert again.buffer.depth == 20
        await cloud.wait_until(lambda: len(cloud.events) == 20)


async def test_metrics_endpoint_serves_on_localhost(tmp_path: Path, cloud: TestCloud) -> None:
    port = free_port()
    adapter = LoopbackAdapter()
    async with EdgeAgent(edge_config(tmp_path, cloud, metrics_port=port), [adapter]):
        await adapter.publish([measurement("dev-1", 1.0)])
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
        assert "fieldgate_edge_events_accepted_total 1.0" in body
        assert "fieldgate_buffer_depth" in body


async def test_real_embedded_mqtt_devices_events_and_commands(tmp_path: Path, cloud: TestCloud) -> None:
    port = free_port()
    config = edge_config(tmp_path, cloud, mqtt=MqttConfig(port=port))
    async with EdgeAgent(config) as agent:
        assert [a.name for a in agent.adapters] == ["mqtt-embedded"]
        publisher = AckedPublisher(port, "pub-1")
        device = CommandDevice(port, "default", "dev-cmd")
        await asyncio.to_thread(publisher.connect)
        await asyncio.to_thread(device.start)
        try:
            for i in range(200):
                assert publisher.publish("default", f"dev-{i % 4}", f"m-{i}", float(i))
            await eventually(lambda: len(publisher.acked) == 200, 30, "PUBACKs")
            await cloud.wait_until(lambda: {f"m-{i}" for i in range(200)} <= cloud.unique_ids())

            await cloud.send_command(
                svc.CommandDown(
                    tenant="default",
                    device="dev-cmd",
                    invocation=pb.CommandInvocation(invocation="inv-7", command="ping", params_json="{}"),
                )
            )
            await cloud.wait_until(
                lambda: any(e.command_response.invocation == "inv-7" for e in cloud.events.values())
            )
            assert device.received[0]["invocation"] == "inv-7"
            response = next(e for e in cloud.events.values() if e.command_response.invocation == "inv-7")
            assert json.loads(response.command_response.response_json) == {"pong": True}
            await cloud.wait_until(
                lambda: (
                    svc.COMMAND_STATUS_DELIVERED
                    in [s.status for s in cloud.statuses if s.invocation == "inv-7"]
                )
            )
        finally:
            await asyncio.to_thread(publisher.close)
            await asyncio.to_thread(device.stop)


def _publish_until_killed(publisher: AckedPublisher, proc: subprocess.Popen[str], kill_after: int) -> None:
    """Publish (bounded window) until ``kill_after`` PUBACKs, then SIGKILL the agent mid-stream."""
    import time

    n = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(publisher.acked) >= kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            return
        if publisher.in_flight() >= 100:
            time.sleep(0.001)
            continue
        if not publisher.publish("default", f"dev-{n % 8}", f"k-{n}", float(n)):
            raise AssertionError("publisher lost its connection before the kill")
        n += 1
    raise AssertionError("not enough PUBACKs within 120 s")


def _spawn_agent(config_file: Path, log_file: Path) -> subprocess.Popen[str]:
    log = log_file.open("a")
    proc = subprocess.Popen(
        [sys.executable, str(AGENT_PROC), str(config_file)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    log.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        proc.wait(30)
        raise AssertionError(f"agent did not start: {log_file.read_text()[-3000:]}")
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


async def test_kill_9_mid_stream_loses_nothing_that_was_acknowledged(
    tmp_path: Path, cloud: TestCloud
) -> None:
    mqtt_port = free_port()
    config_file = tmp_path / "edge.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "edge_id": "edge-kill",
                "data_dir": str(tmp_path / "edge"),
                "mqtt": {"port": mqtt_port},
                "uplink": {"target": cloud.target, "backoff_initial_s": 0.05, "backoff_max_s": 0.5},
            }
        )
    )
    log_file = tmp_path / "agent.log"
    proc = await asyncio.to_thread(_spawn_agent, config_file, log_file)
    try:
        await asyncio.to_thread(wait_for_port, mqtt_port, proc=proc)
        publisher = AckedPublisher(mqtt_port, "pub-kill")
        await asyncio.to_thread(publisher.connect)
        # The cloud is up and acknowledging while the agent is killed.
        await asyncio.to_thread(_publish_until_killed, publisher, proc, 3000)
        await asyncio.to_thread(proc.wait, 30)
        assert proc.returncode == -signal.SIGKILL
        await asyncio.to_thread(publisher.disconnected.wait, 10)
        publisher.client.loop_stop()
        acknowledged = publisher.acked
        assert len(acknowledged) >= 3000
        received_before_restart = len(cloud.events)

        proc = await asyncio.to_thread(_spawn_agent, config_file, log_file)
        await cloud.wait_until(lambda: acknowledged <= cloud.unique_ids(), within_s=60)
    finally:
        await asyncio.to_thread(_stop, proc)
    missing = acknowledged - cloud.unique_ids()
    assert not missing, f"{len(missing)} acknowledged events lost"
    assert received_before_restart > 0  # it really was mid-stream
