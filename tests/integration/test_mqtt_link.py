"""MQTT devices' link state through a real edge agent to a test cloud: the cloud hears
``connected`` when a device connects and ``disconnected`` within seconds when it goes away —
cleanly (DISCONNECT) or by missing its keepalive — on the embedded broker and on an external
Mosquitto. With Mosquitto the device tells its link on its link topic (birth message and will,
docs/protocols/mqtt.md); the embedded broker knows without help, and keeps one device connected
while any of its clients is (a gateway, a reconnect with a new client id, a takeover)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fieldgate.edge.adapters.mqtt import EmbeddedMqttAdapter, ExternalMqttAdapter
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.protocol import topics
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.edge_cloud import TestCloud
from tests.helpers.mosquitto import start_mosquitto
from tests.helpers.mqtt_devices import Device, measurement
from tests.helpers.waiting import free_port, not_yet

pytestmark = pytest.mark.integration


@dataclass
class Edge:
    mode: str
    agent: EdgeAgent
    cloud: TestCloud
    port: int

    def links(self, device: str) -> list[str]:
        """The link changes the cloud received for ``device``, in the order they happened."""
        changes = sorted(
            (e.event_time_ms, e.received_time_ms, e.state_change.current)
            for e in self.cloud.events.values()
            if e.device == device
            and e.HasField("state_change")
            and e.state_change.kind == pb.STATE_CHANGE_KIND_PRESENCE
        )
        return [c[2] for c in changes]

    async def wait_links(self, device: str, expected: list[str], timeout: float = 20.0) -> None:
        """Until the device's link changes are exactly ``expected``. Changes are written in the
        order they happen, so once the last one arrived, an unexpected earlier one (a flap)
        would be there too."""
        await self.cloud.wait_until(
            lambda: self.links(device)[-len(expected) :] == expected or not_yet(self.links(device)),
            timeout,
            f"{device}: links {expected}",
        )
        assert self.links(device) == expected

    def device(self, **kwargs: object) -> Device:
        return Device("127.0.0.1", self.port, **kwargs)  # type: ignore[arg-type]


async def _edge(tmp_path: Path, mode: str, mqtt_port: int, cloud: TestCloud) -> EdgeAgent:
    if mode == "embedded":
        mqtt = MqttConfig(port=mqtt_port)
    else:
        mqtt = MqttConfig(mode="external", port=mqtt_port, client_id="edge-link-test")
    config = EdgeConfig(
        data_dir=tmp_path / "edge",
        mqtt=mqtt,
        uplink=UplinkConfig(target=cloud.target, batch_max_delay_ms=2),
    )
    return EdgeAgent(config)


@pytest.fixture(params=["embedded", "mosquitto"])
async def edge(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Edge]:
    broker = start_mosquitto(tmp_path) if request.param == "mosquitto" else None
    try:
        port = broker.port if broker is not None else free_port()
        async with TestCloud() as cloud:
            async with await _edge(tmp_path, request.param, port, cloud) as agent:
                adapter = agent.adapters[0]
                if isinstance(adapter, ExternalMqttAdapter):
                    async with asyncio.timeout(10):
                        await adapter.wait_ready()
                yield Edge(request.param, agent, cloud, port)
    finally:
        if broker is not None:
            broker.stop()


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[Edge]:
    async with TestCloud() as cloud:
        port = free_port()
        async with await _edge(tmp_path, "embedded", port, cloud) as agent:
            yield Edge("embedded", agent, cloud, port)


async def _firmware(edge: Edge, device: str, *, keepalive: int = 30) -> Device:
    """A device as docs/protocols/mqtt.md recommends: its will on its link topic, a retained
    ``connected`` after connecting, then its commands subscription."""
    link = topics.link_topic("default", device)
    dev = await edge.device(keepalive=keepalive, will=(link, topics.LINK_DISCONNECTED)).connect()
    info = dev.client.publish(link, topics.LINK_CONNECTED, qos=1, retain=True)
    await asyncio.to_thread(info.wait_for_publish, 10)
    await dev.subscribe(topics.commands_topic("default", device))
    return dev


async def test_a_device_that_disconnects_is_reported_disconnected(edge: Edge) -> None:
    dev = await _firmware(edge, "door-1")
    await edge.wait_links("door-1", ["connected"])
    # Clean goodbye: the report first (MQTT 3.1.1 discards the will on DISCONNECT), then DISCONNECT.
    info = dev.client.publish(
        topics.link_topic("default", "door-1"), topics.LINK_DISCONNECTED, qos=1, retain=True
    )
    await asyncio.to_thread(info.wait_for_publish, 10)
    await dev.close()
    await edge.wait_links("door-1", ["connected", "disconnected"])


async def test_a_device_that_misses_its_keepalive_is_reported_disconnected(edge: Edge) -> None:
    dev = await _firmware(edge, "door-2", keepalive=2)
    await edge.wait_links("door-2", ["connected"])
    await dev.go_silent()  # no PINGREQ, no DISCONNECT, the socket stays open
    try:
        # The broker gives up after 1.5 x 2 s (and Mosquitto publishes the will).
        await edge.wait_links("door-2", ["connected", "disconnected"], timeout=15)
    finally:
        await dev.drop()


async def test_the_embedded_broker_knows_without_help(embedded: Edge) -> None:
    """No will, no link reports: a subscriber, a publisher, one that vanishes, one that stops
    sending — each is disconnected when its connection ends."""
    sub = await embedded.device().connect()
    await sub.subscribe(topics.commands_topic("default", "plain-sub"))
    pub = await embedded.device().connect()
    await pub.publish_acked(topics.events_topic("default", "plain-pub"), measurement(1))
    gone = await embedded.device().connect()
    await gone.subscribe(topics.commands_topic("default", "plain-gone"))
    quiet = await embedded.device(keepalive=1).connect()
    await quiet.subscribe(topics.commands_topic("default", "plain-quiet"))
    for device in ("plain-sub", "plain-pub", "plain-gone", "plain-quiet"):
        await embedded.wait_links(device, ["connected"])

    await sub.close()
    await pub.close()
    await gone.drop()  # the socket closes without DISCONNECT
    await quiet.go_silent()
    try:
        for device in ("plain-sub", "plain-pub", "plain-gone", "plain-quiet"):
            await embedded.wait_links(device, ["connected", "disconnected"], timeout=15)
    finally:
        await quiet.drop()
    adapter = embedded.agent.adapters[0]
    assert isinstance(adapter, EmbeddedMqttAdapter) and adapter.stats.keepalive_timeouts == 1


async def test_gateways_reconnects_and_takeovers_keep_devices_connected(embedded: Edge) -> None:
    # One client serving two devices; a monitor on '#' serves none.
    monitor = await embedded.device().connect()
    await monitor.subscribe("fieldgate/#")
    gateway = await embedded.device().connect()
    for device in ("gw-a", "gw-b"):
        await gateway.publish_acked(topics.events_topic("default", device), measurement(1))
    await embedded.wait_links("gw-a", ["connected"])
    await embedded.wait_links("gw-b", ["connected"])

    # A device reconnecting with a new client id before its old connection is gone.
    old = await embedded.device(client_id="pump-old").connect()
    await old.subscribe(topics.commands_topic("default", "pump-1"))
    await embedded.wait_links("pump-1", ["connected"])
    new = await embedded.device(client_id="pump-new").connect()
    await new.subscribe(topics.commands_topic("default", "pump-1"))
    await old.drop()

    # A takeover: the same client id connects again (persistent session), amqtt closes the old one.
    first = await embedded.device(client_id="valve-1", clean_session=False).connect()
    await first.subscribe(topics.commands_topic("default", "valve-1"))
    await embedded.wait_links("valve-1", ["connected"])
    await first.go_silent()  # (or paho would reconnect and take the id back)
    second = await embedded.device(client_id="valve-1", clean_session=False).connect()

    # Each goes away for good now; until then none of them was ever reported disconnected.
    await gateway.close()
    await new.close()
    await second.close()
    await first.drop()
    for device in ("gw-a", "gw-b", "pump-1", "valve-1"):
        await embedded.wait_links(device, ["connected", "disconnected"])
    await monitor.close()


async def test_a_device_can_report_its_own_link(embedded: Edge) -> None:
    """A gateway says which of its devices it serves, and which it no longer does."""
    gateway = await embedded.device().connect()
    link = topics.link_topic("default", "sensor-9")
    await gateway.publish_acked(link, topics.LINK_CONNECTED)
    await embedded.wait_links("sensor-9", ["connected"])
    await gateway.publish_acked(link, topics.LINK_DISCONNECTED)
    await embedded.wait_links("sensor-9", ["connected", "disconnected"])
    await gateway.publish_acked(link, "maybe")  # not a link state: the failed-decode lane
    failed = await embedded.agent.failed_decodes()
    assert failed and "link: expected 'connected' or 'disconnected'" in failed[0].reason
    await gateway.close()


async def test_links_the_agent_takes_down_reach_the_cloud_after_its_restart(tmp_path: Path) -> None:
    """Stopping the agent stops its broker: its devices are disconnected, and the cloud hears
    it when the agent is back (rather than keeping them connected for ever)."""
    async with TestCloud() as cloud:
        port = free_port()
        async with await _edge(tmp_path, "embedded", port, cloud) as agent:
            edge = Edge("embedded", agent, cloud, port)
            dev = await edge.device().connect()
            await dev.subscribe(topics.commands_topic("default", "lamp-1"))
            await edge.wait_links("lamp-1", ["connected"])
        await dev.drop()  # (paho would connect to the next broker by itself)
        async with await _edge(tmp_path, "embedded", port, cloud) as agent:
            await Edge("embedded", agent, cloud, port).wait_links("lamp-1", ["connected", "disconnected"])
