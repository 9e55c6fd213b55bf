"""SiteWhere devices against the embedded MQTT adapter on a real (in-process) amqtt broker:
SiteWhere's protobuf messages on SiteWhere/<tenant>/input/protobuf arrive as fieldgate events,
bad ones go to the failed-decode lane with their reason while good traffic continues; a
simulated SiteWhere agent (fieldgate.sims.sitewhere_agent) registers, reports, takes commands on
SiteWhere's command topic through the real command router and acknowledges them, and only the
addressed device's acknowledgement answers a command.

The payloads are the golden vectors of tests/unit/golden/sitewhere_protobuf.json (assembled byte
by byte from SiteWhere's published proto definitions and framing).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fieldgate.edge.adapters.mqtt import EmbeddedMqttAdapter, build_mqtt_adapter
from fieldgate.edge.commands import CommandRouter
from fieldgate.edge.config import CommandsConfig, MqttConfig
from fieldgate.sims.sitewhere_agent import SiteWhereAgentSim
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.mqtt_devices import Device
from tests.helpers.mqtt_sinks import OnlineRecorder, RecordingSink
from tests.helpers.waiting import eventually, free_port

pytestmark = pytest.mark.integration

GOLDEN = json.loads(
    (Path(__file__).parents[1] / "unit" / "golden" / "sitewhere_protobuf.json").read_text(encoding="utf-8")
)


def _vector(kind: str, name_starts: str) -> bytes:
    case: dict[str, Any] = next(c for c in GOLDEN[kind] if c["name"].startswith(name_starts))
    return bytes.fromhex(case["payload_hex"])


class Harness:
    def __init__(self, adapter: EmbeddedMqttAdapter, sink: RecordingSink, port: int) -> None:
        self.adapter, self.sink, self.port = adapter, sink, port

    async def device(self) -> Device:
        return await Device("127.0.0.1", self.port).connect()


async def _start(**overrides: object) -> Harness:
    port = free_port()
    config = MqttConfig(port=port, **overrides)
    adapter = build_mqtt_adapter(config, tenants=("default", "acme"))
    assert isinstance(adapter, EmbeddedMqttAdapter)
    sink = RecordingSink()
    await adapter.start(sink, OnlineRecorder())
    return Harness(adapter, sink, port)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await _start()
    try:
        yield h
    finally:
        await h.adapter.stop()


async def test_sitewhere_protobuf_messages_of_both_generations_arrive_as_events(harness: Harness) -> None:
    dev = await harness.device()
    try:
        topic = "SiteWhere/acme/input/protobuf"
        await dev.publish_acked(topic, _vector("good", "3.x SEND_REGISTRATION"))
        await dev.publish_acked(topic, _vector("good", "3.x SEND_MEASUREMENT"))
        await dev.publish_acked(topic, _vector("good", "3.x SEND_ACK"))
        await dev.publish_acked(topic, _vector("good", "1.x DEVICEMEASUREMENT"))
    finally:
        await dev.close()
    reg, meas, ack, ard = harness.sink.events
    assert {e.tenant for e in harness.sink.events} == {"acme"}
    assert (reg.device, reg.state_change.kind, reg.state_change.current) == (
        "sw-pb-1",
        pb.STATE_CHANGE_KIND_REGISTRATION,
        "default",
    )
    assert dict(meas.measurement.values) == {"temp": 21.5, "hum": 40.0}
    assert ack.command_response.invocation == "5b7a8d1c-4b0e-4c7e-9a57-3c2f7d1e0a11"
    assert (ard.device, dict(ard.measurement.values)) == ("ard-1", {"engine.temp": 170.0, "fuel.level": 0.65})
    # The payload family is "sitewhere" for both encodings (a tenant's decoders name families).
    assert {e.metadata["fieldgate.format"] for e in harness.sink.events} == {"sitewhere"}
    assert harness.adapter.owns("acme", "sw-pb-1") and harness.adapter.owns("acme", "ard-1")


async def test_bad_sitewhere_protobuf_is_refused_with_its_reason_and_harms_nothing(harness: Harness) -> None:
    topic = "SiteWhere/default/input/protobuf"
    bad = [
        (b"\xff\xff\xff\xff", "header"),
        (_vector("bad", "3.x Stream"), "not supported"),
        (_vector("bad", "3.x body shorter"), "length prefix"),
        (_vector("bad", "3.x SEND_ACK without"), "originator"),
        (_vector("bad", "3.x header with command 9"), "unknown command 9"),
    ]
    good = _vector("good", "3.x SEND_LOCATION")
    dev = await harness.device()
    try:
        for payload, _ in bad:
            await dev.publish_acked(topic, payload)
            await dev.publish_acked(topic, good)
    finally:
        await dev.close()
    assert len(harness.sink.events) == len(bad)
    assert all(e.location.latitude == 52.52 for e in harness.sink.events)
    rejected = harness.sink.rejected
    assert [r.payload for r in rejected] == [p for p, _ in bad]
    for (_, reason), got in zip(bad, rejected, strict=True):
        assert reason in got.reason
        assert got.source == topic
    assert harness.adapter.stats.messages_rejected["decode"] == len(bad)


async def test_sitewhere_protobuf_topic_is_a_plain_topic_when_compat_is_off() -> None:
    harness = await _start(sitewhere_compat=False)
    try:
        dev = await harness.device()
        try:
            await dev.publish_acked("SiteWhere/acme/input/protobuf", _vector("good", "3.x SEND_MEASUREMENT"))
        finally:
            await dev.close()
        assert harness.sink.events == [] and harness.sink.rejected == []
        assert harness.adapter.stats.messages_ignored == 1
    finally:
        await harness.adapter.stop()


# ---------------------------------------------------------------------- commands both ways


class RouterSink(RecordingSink):
    """Records events and, as the edge agent does once they are durable, tells the command
    router about every command_response (edge/agent.py)."""

    router: CommandRouter | None = None

    async def accept(self, events: Sequence[pb.Event], *, source: str) -> None:
        await super().accept(events, source=source)
        assert self.router is not None
        for event in events:
            if event.WhichOneof("payload") == "command_response":
                await self.router.on_response(event.tenant, event.device, event.command_response.invocation)


class Statuses:
    def __init__(self) -> None:
        self.updates: list[svc.CommandStatusUpdate] = []

    async def __call__(self, update: svc.CommandStatusUpdate) -> None:
        self.updates.append(update)

    def of(self, invocation: str) -> list[int]:
        return [u.status for u in self.updates if u.invocation == invocation]

    def reason(self, invocation: str) -> str:
        return [u.reason for u in self.updates if u.invocation == invocation][-1]


@dataclass
class Edge:
    adapter: EmbeddedMqttAdapter
    router: CommandRouter
    sink: RouterSink
    statuses: Statuses
    port: int

    def agent(self, device: str, **kwargs: Any) -> SiteWhereAgentSim:
        return SiteWhereAgentSim("127.0.0.1", self.port, "acme", device, **kwargs)

    async def command(self, device: str, invocation: str, name: str, params: str = "{}") -> None:
        down = svc.CommandDown(
            tenant="acme",
            device=device,
            invocation=pb.CommandInvocation(invocation=invocation, command=name, params_json=params),
        )
        await self.router.on_command(down)


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    port = free_port()
    adapter = build_mqtt_adapter(MqttConfig(port=port), tenants=("default", "acme"))
    assert isinstance(adapter, EmbeddedMqttAdapter)
    statuses = Statuses()
    router = CommandRouter(
        CommandsConfig(response_timeout_s=30), [adapter], tmp_path / "commands.db", statuses
    )
    sink = RouterSink()
    sink.router = router
    await router.start()
    await adapter.start(sink, router.on_online)
    try:
        yield Edge(adapter, router, sink, statuses, port)
    finally:
        await adapter.stop()
        await router.stop()


async def test_a_sitewhere_agent_registers_reports_and_acknowledges_commands_unchanged(edge: Edge) -> None:
    agent = edge.agent("sw-agent-1", device_type="thermostat")
    await asyncio.to_thread(agent.start)
    try:
        # Subscribing to SiteWhere's command topic makes the device online for commands.
        await eventually(
            lambda: edge.adapter.is_online("acme", "sw-agent-1"), what="online via SiteWhere topic"
        )
        await asyncio.to_thread(agent.send_registration, "area-1")
        await asyncio.to_thread(agent.send_measurement, "temp", 21.5)
        await eventually(lambda: len(edge.sink.events) == 2, what="registration and measurement")
        reg, meas = edge.sink.events
        assert (reg.device, reg.state_change.current, reg.metadata["areaToken"]) == (
            "sw-agent-1",
            "thermostat",
            "area-1",
        )
        assert dict(meas.measurement.values) == {"temp": 21.5}

        await edge.command("sw-agent-1", "inv-sw-1", "set-interval", '{"seconds": 30}')
        received = await asyncio.to_thread(agent.commands.get, True, 10)
        assert (received.invocation, received.name, received.parameters) == (
            "inv-sw-1",
            "set-interval",
            {"seconds": 30},
        )
        await eventually(
            lambda: edge.router.stats["answered"] == 1, what="the acknowledgement answers the command"
        )
        # The agent may answer before the router has recorded the delivery (answered early).
        await eventually(
            lambda: edge.statuses.of("inv-sw-1") == [svc.COMMAND_STATUS_QUEUED, svc.COMMAND_STATUS_DELIVERED],
            what="delivered reported",
        )
        await eventually(lambda: edge.router.pending == 0, what="nothing pending")
        ack = edge.sink.events[-1]
        assert (ack.device, ack.command_response.invocation) == ("sw-agent-1", "inv-sw-1")
        assert json.loads(ack.command_response.response_json) == {"message": "Acknowledged set-interval"}
        assert agent.undecodable == []
    finally:
        await asyncio.to_thread(agent.stop)


async def test_only_the_addressed_device_can_acknowledge_a_command(edge: Edge) -> None:
    target = edge.agent("sw-target", auto_ack=False)
    other = edge.agent("sw-other", auto_ack=False)
    await asyncio.to_thread(target.start)
    await asyncio.to_thread(other.start)
    try:
        await eventually(lambda: edge.adapter.is_online("acme", "sw-target"), what="online")
        await edge.command("sw-target", "inv-x", "ping")
        received = await asyncio.to_thread(target.commands.get, True, 10)
        assert received.invocation == "inv-x"
        # Another device acknowledges the target's invocation: stored as its event, answers nothing.
        await asyncio.to_thread(other.send_ack, "inv-x", "not mine")
        await eventually(lambda: edge.router.stats["responses_refused"] == 1, what="foreign answer refused")
        assert edge.router.pending == 1 and edge.router.stats["answered"] == 0
        await asyncio.to_thread(target.send_ack, "inv-x", "pong")
        await eventually(lambda: edge.router.stats["answered"] == 1, what="the target's answer counts")
        await eventually(lambda: edge.router.pending == 0, what="nothing pending")
        assert other.commands.empty()
    finally:
        await asyncio.to_thread(target.stop)
        await asyncio.to_thread(other.stop)


async def test_a_command_that_cannot_be_encoded_fails_with_its_reason(edge: Edge) -> None:
    agent = edge.agent("sw-agent-2")
    await asyncio.to_thread(agent.start)
    try:
        await eventually(lambda: edge.adapter.is_online("acme", "sw-agent-2"), what="online")
        await edge.command("sw-agent-2", "inv-bad", "set-interval", "[30]")
        await eventually(lambda: svc.COMMAND_STATUS_FAILED in edge.statuses.of("inv-bad"), what="failed")
        assert "params must be a JSON object" in edge.statuses.reason("inv-bad")
        # The device got nothing and keeps working.
        await edge.command("sw-agent-2", "inv-good", "ping")
        received = await asyncio.to_thread(agent.commands.get, True, 10)
        assert received.invocation == "inv-good"
    finally:
        await asyncio.to_thread(agent.stop)


# ------------------------------------------------------------- SiteWhere 1.x tenant-less topics


async def test_sitewhere_1x_topics_serve_the_configured_tenant() -> None:
    harness = await _start(sitewhere_1x_tenant="acme")
    try:
        dev = await harness.device()
        try:
            await dev.publish_acked("SiteWhere/input/protobuf", _vector("good", "1.x DEVICEMEASUREMENT"))
            await dev.publish_acked(
                "SiteWhere/input/json",
                {
                    "hardwareId": "ard-2",
                    "type": "DeviceMeasurements",
                    "request": {"measurements": {"t": 1.5}},
                },
            )
            assert not harness.adapter.is_online("acme", "ard-1")
            await dev.subscribe("SiteWhere/commands/ard-1")
            await eventually(lambda: harness.adapter.is_online("acme", "ard-1"), what="online via 1.x topic")
            await harness.adapter.send_command(
                "acme", "ard-1", pb.CommandInvocation(invocation="inv-1x", command="ping")
            )
            topic, payload = await dev.next_message()
        finally:
            await dev.close()
        assert topic == "SiteWhere/commands/ard-1"
        assert json.loads(payload)["command"]["invocation"]["id"] == "inv-1x"
        assert [(e.tenant, e.device) for e in harness.sink.events] == [("acme", "ard-1"), ("acme", "ard-2")]
        # The 1.x topics belong to the configured tenant only: not to another tenant's device.
        assert not harness.adapter.is_online("default", "ard-1")
    finally:
        await harness.adapter.stop()


async def test_sitewhere_1x_topics_are_plain_topics_unless_configured(harness: Harness) -> None:
    dev = await harness.device()
    try:
        await dev.publish_acked("SiteWhere/input/protobuf", _vector("good", "1.x DEVICEMEASUREMENT"))
        await dev.subscribe("SiteWhere/commands/ard-1")
    finally:
        await dev.close()
    assert harness.sink.events == [] and harness.sink.rejected == []
    assert harness.adapter.stats.messages_ignored == 1
    assert not harness.adapter.is_online("default", "ard-1")


def test_sitewhere_1x_tenant_needs_a_broker_without_auth(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tenant-less topics"):
        MqttConfig(
            sitewhere_1x_tenant="acme",
            auth={"mode": "password", "credentials_file": tmp_path / "c.json"},
        )
