"""The external MQTT adapter against a real Mosquitto (Debian's /usr/sbin/mosquitto) started from
fieldgate's shipped configuration, with real paho device clients.

Besides the basic flows these tests pin down the delivery guarantee: nothing the broker took
from a device is lost while the agent is away, slow, or fails before acknowledging — including
more messages than Mosquitto's default queue limit (1000), which would silently drop them.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fieldgate.edge.adapters.mqtt import ExternalMqttAdapter, build_mqtt_adapter
from fieldgate.edge.config import MqttConfig
from fieldgate.edge.errors import DeliveryError
from fieldgate.protocol import topics
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.mosquitto import Mosquitto, mosquitto, start_mosquitto
from tests.helpers.mqtt_devices import Device, measurement
from tests.helpers.mqtt_sinks import OnlineRecorder, RecordingSink
from tests.helpers.waiting import eventually, free_port, never

__all__ = ["mosquitto"]  # the fixture, imported for pytest

pytestmark = pytest.mark.integration

TENANTS = ("default", "acme")
# More than Mosquitto's default max_queued_messages (1000) plus our in-flight window (1000).
BACKLOG = 2500


@dataclass
class Agent:
    adapter: ExternalMqttAdapter
    sink: RecordingSink
    online: OnlineRecorder

    async def stop(self) -> None:
        await self.adapter.stop()


def _config(broker_port: int, client_id: str) -> MqttConfig:
    return MqttConfig(
        mode="external", host="127.0.0.1", port=broker_port, client_id=client_id, max_payload_bytes=4096
    )


async def _agent(
    port: int, client_id: str = "edge-test", sink: RecordingSink | None = None, *, ready: bool = True
) -> Agent:
    adapter = ExternalMqttAdapter(
        _config(port, client_id), tenants=TENANTS, backoff_initial_s=0.1, backoff_max_s=1.0
    )
    agent = Agent(adapter, sink or RecordingSink(), OnlineRecorder())
    await adapter.start(agent.sink, agent.online)
    if ready:
        async with asyncio.timeout(10):
            await adapter.wait_ready()
    return agent


@pytest.fixture
async def agent(mosquitto: Mosquitto) -> AsyncIterator[Agent]:
    running = await _agent(mosquitto.port)
    try:
        yield running
    finally:
        await running.stop()


async def _device(broker: Mosquitto, **kwargs: object) -> Device:
    return await Device(broker.host, broker.port, **kwargs).connect()  # type: ignore[arg-type]


async def _publish_all(dev: Device, device: str, count: int, prefix: str) -> None:
    """Publish ``count`` QoS 1 measurements and wait until the broker acknowledged every one."""
    topic = topics.events_topic("default", device)
    infos = [dev.publish(topic, measurement(i, f"{prefix}-{i}")) for i in range(count)]
    for info in infos:
        await asyncio.to_thread(info.wait_for_publish, 30)
        assert info.is_published()


def test_factory_builds_the_external_backend() -> None:
    adapter = build_mqtt_adapter(MqttConfig(mode="external"), tenants=TENANTS)
    assert isinstance(adapter, ExternalMqttAdapter)
    assert adapter.owns("default", "anyone") and not adapter.owns("other", "anyone")


async def test_json_protobuf_and_sitewhere_events_arrive(mosquitto: Mosquitto, agent: Agent) -> None:
    dev = await _device(mosquitto)
    try:
        await dev.publish_acked(topics.events_topic("default", "pump-1"), measurement(1.5, "j-1"))
        batch = pb.EventBatch(
            events=[pb.Event(alternate_id="p-1", measurement=pb.Measurement(values={"rpm": 3.0}))]
        )
        await dev.publish_acked("fieldgate/default/devices/pump-1/events/pb", batch.SerializeToString())
        await dev.publish_acked(
            "SiteWhere/acme/input/json",
            {
                "deviceToken": "sw-1",
                "type": "DeviceAlert",
                "request": {"type": "door", "level": "Error", "message": "open"},
            },
        )
        await dev.publish_acked(topics.events_topic("default", "pump-1"), b"{broken")
    finally:
        await dev.close()
    await eventually(lambda: len(agent.sink.events) == 3 and len(agent.sink.rejected) == 1, what="all events")
    by_id = {e.alternate_id: e for e in agent.sink.events if e.alternate_id}
    assert by_id["j-1"].measurement.values["n"] == 1.5 and by_id["j-1"].device == "pump-1"
    assert by_id["p-1"].measurement.values["rpm"] == 3.0
    alert = next(e for e in agent.sink.events if e.HasField("alert"))
    assert (alert.tenant, alert.device, alert.alert.alert_type) == ("acme", "sw-1", "door")
    assert agent.sink.rejected[0].reason
    assert ("default", "pump-1") in agent.adapter.devices and ("acme", "sw-1") in agent.adapter.devices


async def test_commands_are_published_to_the_device_topic(mosquitto: Mosquitto, agent: Agent) -> None:
    dev = await _device(mosquitto)
    try:
        await dev.subscribe(topics.commands_topic("default", "valve-1"))
        invocation = pb.CommandInvocation(invocation="inv-7", command="ping")
        await agent.adapter.send_command("default", "valve-1", invocation)
        topic, payload = await dev.next_message()
        assert topic == topics.commands_topic("default", "valve-1")
        assert json.loads(payload) == {"invocation": "inv-7", "command": "ping", "params": {}}
    finally:
        await dev.close()


async def test_messages_published_while_the_agent_is_away_all_arrive_after_it_returns(
    mosquitto: Mosquitto,
) -> None:
    first = await _agent(mosquitto.port, "edge-away")
    await first.stop()  # clean DISCONNECT; the persistent session stays on the broker

    dev = await _device(mosquitto)
    try:
        await _publish_all(dev, "d1", BACKLOG, "away")
    finally:
        await dev.close()

    second = await _agent(mosquitto.port, "edge-away")
    try:
        await eventually(lambda: len(second.sink.events) >= BACKLOG, timeout=60, what="backlog delivered")
        counts = Counter(second.sink.alternate_ids())
        assert set(counts) == {f"away-{i}" for i in range(BACKLOG)}
        assert set(counts.values()) == {1}
    finally:
        await second.stop()
    assert not mosquitto.dropped_messages_logged()


async def test_slow_agent_loses_nothing_beyond_mosquittos_default_queue_limit(mosquitto: Mosquitto) -> None:
    sink = RecordingSink(gate=asyncio.Event())
    agent = await _agent(mosquitto.port, "edge-slow", sink)
    dev = await _device(mosquitto)
    try:
        await _publish_all(dev, "d1", BACKLOG, "slow")
        # The agent is stuck in the sink with a full window; the broker holds the rest for it.
        assert sink.pending > 0 and not sink.events
        sink.gate.set()  # type: ignore[union-attr]
        await eventually(lambda: len(sink.events) >= BACKLOG, timeout=60, what="all delivered")
        assert Counter(sink.alternate_ids()) == Counter(f"slow-{i}" for i in range(BACKLOG))
        assert agent.adapter.stats.reads_paused >= 1 or agent.adapter.stats.messages_accepted == BACKLOG
    finally:
        await dev.close()
        await agent.stop()
    assert not mosquitto.dropped_messages_logged()


async def test_with_mosquittos_default_queue_limit_the_same_backlog_would_be_lost(tmp_path: Path) -> None:
    """Why the shipped config sets max_queued_messages 0: the default drops the overflow."""
    broker = start_mosquitto(
        tmp_path, overrides={"max_queued_messages": "1000", "max_inflight_messages": "20"}
    )
    try:
        first = await _agent(broker.port, "edge-default-conf")
        await first.stop()
        dev = await _device(broker)
        try:
            await _publish_all(dev, "d1", BACKLOG, "lost")
        finally:
            await dev.close()
        second = await _agent(broker.port, "edge-default-conf")
        try:
            await eventually(lambda: len(second.sink.events) >= 1000, timeout=30, what="queued part")
            await never(
                lambda: len(set(second.sink.alternate_ids())) >= BACKLOG,
                within=1.0,
                what="the whole backlog delivered (nothing dropped)",
            )
        finally:
            await second.stop()
        assert broker.dropped_messages_logged()
    finally:
        broker.stop()


@pytest.mark.parametrize("trouble", ["sink_crash", "buffer_full"])
async def test_messages_not_made_durable_are_redelivered_after_reconnect(
    mosquitto: Mosquitto, trouble: str
) -> None:
    sink = RecordingSink()
    if trouble == "sink_crash":
        sink.fail_next = 3
    else:
        sink.full = True
    agent = await _agent(mosquitto.port, f"edge-{trouble}", sink)
    dev = await _device(mosquitto)
    try:
        await _publish_all(dev, "d1", 10, trouble)
        stats = agent.adapter.stats
        await eventually(lambda: stats.connections_dropped >= 1, what="adapter dropped its connection")
        sink.full = False
        await eventually(lambda: len(set(sink.alternate_ids())) == 10, timeout=30, what="redelivery")
        assert set(sink.alternate_ids()) == {f"{trouble}-{i}" for i in range(10)}
        assert stats.messages_failed + stats.messages_held >= 1
    finally:
        await dev.close()
        await agent.stop()


async def test_reconnects_with_backoff_when_the_broker_restarts(mosquitto: Mosquitto, agent: Agent) -> None:
    assert agent.adapter.is_online("default", "d1")
    mosquitto.stop()
    await eventually(lambda: agent.adapter.stats.disconnects >= 1, what="disconnect noticed")
    # Broker gone: the device counts as offline, so the command router keeps its commands.
    assert not agent.adapter.is_online("default", "d1")
    with pytest.raises(DeliveryError):
        await agent.adapter.send_command(
            "default", "d1", pb.CommandInvocation(invocation="i", command="ping")
        )
    await eventually(lambda: agent.adapter.stats.connect_failures >= 2, what="failed attempts with backoff")
    mosquitto.start()
    async with asyncio.timeout(15):
        await agent.adapter.wait_ready()
    await eventually(lambda: ("default", "d1") in agent.online.seen, what="on_online after reconnect")
    assert agent.adapter.is_online("default", "d1")
    dev = await _device(mosquitto)
    try:
        await dev.publish_acked(topics.events_topic("default", "d1"), measurement(1, "after-restart"))
    finally:
        await dev.close()
    await eventually(lambda: "after-restart" in agent.sink.alternate_ids(), what="event after restart")


async def test_broker_not_there_at_start_is_retried(tmp_path: Path) -> None:
    port = free_port()
    agent = await _agent(port, "edge-early", ready=False)
    try:
        await eventually(lambda: agent.adapter.stats.connect_failures >= 2, what="failed attempts")
        broker = start_mosquitto(tmp_path, port=port)
        try:
            async with asyncio.timeout(15):
                await agent.adapter.wait_ready()
            dev = await _device(broker)
            try:
                await dev.publish_acked(topics.events_topic("default", "d1"), measurement(1, "late"))
            finally:
                await dev.close()
            await eventually(lambda: agent.sink.alternate_ids() == ["late"], what="event")
        finally:
            broker.stop()
    finally:
        await agent.stop()


async def test_sitewhere_tenants_get_commands_on_sitewhere_topics(mosquitto: Mosquitto) -> None:
    config = _config(mosquitto.port, "edge-sw").model_copy(update={"sitewhere_command_tenants": ["acme"]})
    adapter = ExternalMqttAdapter(config, tenants=TENANTS, backoff_initial_s=0.1, backoff_max_s=1.0)
    await adapter.start(RecordingSink(), OnlineRecorder())
    dev = await _device(mosquitto)
    try:
        async with asyncio.timeout(10):
            await adapter.wait_ready()
        await dev.subscribe(topics.sitewhere_command_topic("acme", "sw-1"))
        await dev.subscribe(topics.commands_topic("default", "fg-1"))
        invocation = pb.CommandInvocation(invocation="inv-sw", command="ping")
        await adapter.send_command("acme", "sw-1", invocation)
        topic, payload = await dev.next_message()
        assert topic == "SiteWhere/acme/command/sw-1"
        assert json.loads(payload)["command"]["invocation"]["id"] == "inv-sw"
        # Other tenants keep fieldgate's topic and format.
        await adapter.send_command("default", "fg-1", invocation)
        topic, payload = await dev.next_message()
        assert (topic, json.loads(payload)["invocation"]) == (
            "fieldgate/default/devices/fg-1/commands",
            "inv-sw",
        )
    finally:
        await dev.close()
        await adapter.stop()


def test_sitewhere_command_tenants_are_for_the_external_broker() -> None:
    with pytest.raises(ValueError, match="sitewhere_command_tenants"):
        MqttConfig(sitewhere_command_tenants=["acme"])
