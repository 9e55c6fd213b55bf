"""SiteWhere devices against the embedded MQTT adapter on a real (in-process) amqtt broker:
SiteWhere's protobuf messages on SiteWhere/<tenant>/input/protobuf arrive as fieldgate events,
bad ones go to the failed-decode lane with their reason while good traffic continues.

The payloads are the golden vectors of tests/unit/golden/sitewhere_protobuf.json (assembled byte
by byte from SiteWhere's published proto definitions and framing).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fieldgate.edge.adapters.mqtt import EmbeddedMqttAdapter, build_mqtt_adapter
from fieldgate.edge.config import MqttConfig
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.mqtt_devices import Device
from tests.helpers.mqtt_sinks import OnlineRecorder, RecordingSink
from tests.helpers.waiting import free_port

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
    config = MqttConfig(port=port, **overrides)  # type: ignore[arg-type]
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
