"""The embedded MQTT adapter against real paho device clients on a real (in-process) amqtt broker.

The sink is a recording stand-in for the edge agent; what is under test is the adapter: what
devices publish arrives as the right events, QoS 1 acknowledgements wait for durability, bad
payloads go to the failed-decode lane without disturbing good traffic, commands reach devices.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from fieldgate.edge.adapters.mqtt import EmbeddedMqttAdapter, build_mqtt_adapter
from fieldgate.edge.config import MqttConfig
from fieldgate.edge.errors import DeliveryError
from fieldgate.protocol import topics
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.mqtt_devices import Device, measurement
from tests.helpers.mqtt_sinks import OnlineRecorder, RecordingSink
from tests.helpers.waiting import eventually, free_port, never

pytestmark = pytest.mark.integration

TENANTS = ("default", "acme")
MAX_PAYLOAD = 4096


@dataclass
class Embedded:
    adapter: EmbeddedMqttAdapter
    sink: RecordingSink
    online: OnlineRecorder
    host: str
    port: int

    async def device(self, **kwargs: object) -> Device:
        return await Device(self.host, self.port, **kwargs).connect()  # type: ignore[arg-type]


async def _start(max_inflight: int | None = None, **overrides: object) -> Embedded:
    port = free_port()
    config = MqttConfig(port=port, max_payload_bytes=MAX_PAYLOAD, **overrides)
    if max_inflight is None:
        adapter = build_mqtt_adapter(config, tenants=TENANTS)
    else:
        adapter = EmbeddedMqttAdapter(config, tenants=TENANTS, max_inflight_per_connection=max_inflight)
    assert isinstance(adapter, EmbeddedMqttAdapter)
    sink, online = RecordingSink(), OnlineRecorder()
    await adapter.start(sink, online)
    return Embedded(adapter, sink, online, "127.0.0.1", port)


@pytest.fixture
async def embedded() -> AsyncIterator[Embedded]:
    harness = await _start()
    try:
        yield harness
    finally:
        await harness.adapter.stop()


async def test_json_events_arrive_with_tenant_device_and_values(embedded: Embedded) -> None:
    dev = await embedded.device()
    try:
        topic = topics.events_topic("default", "pump-1")
        await dev.publish_acked(topic, measurement(21.5, "m-1", ts="2024-05-01T12:00:00Z"))
        await dev.publish_acked(
            topic,
            [
                {"type": "location", "lat": 52.5, "lon": 13.4, "ele": 34.0},
                {"type": "alert", "alert_type": "overheat", "level": "warning", "message": "hot"},
            ],
        )
    finally:
        await dev.close()
    events = embedded.sink.events
    assert [e.WhichOneof("payload") for e in events] == ["measurement", "location", "alert"]
    assert {(e.tenant, e.device) for e in events} == {("default", "pump-1")}
    assert events[0].measurement.values["n"] == 21.5
    assert events[0].alternate_id == "m-1"
    assert events[0].event_time_ms == 1714564800000
    assert events[1].location.latitude == 52.5
    assert events[2].alert.level == pb.ALERT_LEVEL_WARNING
    assert embedded.sink.sources[0] == topic
    assert embedded.adapter.owns("default", "pump-1")
    assert not embedded.adapter.owns("nobody", "pump-1")


async def test_protobuf_batch_on_pb_topic(embedded: Embedded) -> None:
    batch = pb.EventBatch(
        events=[
            pb.Event(alternate_id="p-1", measurement=pb.Measurement(values={"rpm": 1200.0})),
            pb.Event(
                alternate_id="p-2",
                command_response=pb.CommandResponse(invocation="inv-9", response_json='{"ok": true}'),
            ),
            # A device cannot write into another tenant or device: the topic decides.
            pb.Event(
                alternate_id="p-3",
                tenant="acme",
                device="other",
                location=pb.Location(latitude=1.0, longitude=2.0),
            ),
        ]
    )
    dev = await embedded.device()
    try:
        await dev.publish_acked("fieldgate/default/devices/motor-7/events/pb", batch.SerializeToString())
    finally:
        await dev.close()
    events = embedded.sink.events
    assert [e.alternate_id for e in events] == ["p-1", "p-2", "p-3"]
    assert {(e.tenant, e.device) for e in events} == {("default", "motor-7")}
    assert events[0].measurement.values["rpm"] == 1200.0
    assert events[1].command_response.invocation == "inv-9"


async def test_sitewhere_messages_name_their_device(embedded: Embedded) -> None:
    dev = await embedded.device()
    try:
        topic = "SiteWhere/acme/input/json"
        await dev.publish_acked(
            topic,
            {"deviceToken": "sw-1", "type": "DeviceMeasurement", "request": {"name": "temp", "value": 19.5}},
        )
        await dev.publish_acked(
            topic,
            {"deviceToken": "sw-2", "type": "RegisterDevice", "request": {"deviceTypeToken": "thermostat"}},
        )
    finally:
        await dev.close()
    first, second = embedded.sink.events
    assert (first.tenant, first.device, first.measurement.values["temp"]) == ("acme", "sw-1", 19.5)
    assert (second.tenant, second.device) == ("acme", "sw-2")
    assert second.state_change.kind == pb.STATE_CHANGE_KIND_REGISTRATION
    assert second.state_change.current == "thermostat"
    assert embedded.adapter.owns("acme", "sw-1")


async def test_sitewhere_topics_are_plain_topics_when_compat_is_off() -> None:
    harness = await _start(sitewhere_compat=False)
    try:
        dev = await harness.device()
        try:
            await dev.publish_acked(
                "SiteWhere/acme/input/json",
                {"deviceToken": "sw-1", "type": "DeviceMeasurement", "request": {"name": "t", "value": 1}},
            )
            await dev.publish_acked(topics.events_topic("acme", "d"), measurement(1))
        finally:
            await dev.close()
        assert [e.device for e in harness.sink.events] == ["d"]
        assert harness.sink.rejected == []
        assert harness.adapter.stats.messages_ignored == 1
    finally:
        await harness.adapter.stop()


async def test_qos1_puback_only_after_the_sink_made_events_durable(embedded: Embedded) -> None:
    embedded.sink.gate = asyncio.Event()
    dev = await embedded.device()
    try:
        info = dev.publish(topics.events_topic("default", "slow"), measurement(1, "held-1"))
        await eventually(lambda: embedded.sink.pending == 1, what="message handed to the sink")
        # The sink has the message but has not returned: the device must not have its PUBACK.
        await asyncio.to_thread(info.wait_for_publish, 1.5)
        assert not info.is_published()
        assert embedded.sink.events == []

        embedded.sink.gate.set()
        await asyncio.to_thread(info.wait_for_publish, 10)
        assert info.is_published()
        assert embedded.sink.alternate_ids() == ["held-1"]
    finally:
        await dev.close()


async def test_malformed_payloads_are_rejected_with_reasons_while_good_traffic_continues(
    embedded: Embedded,
) -> None:
    dev = await embedded.device()
    topic = topics.events_topic("default", "d1")
    bad: list[tuple[str, bytes | str, str]] = [
        (topic, b"{not json", "bad JSON"),
        (topic, json.dumps({"type": "measurement", "values": {"t": "hot"}}), "wrong type"),
        (topic, json.dumps({"type": "teleport", "to": "mars"}), "unknown type"),
        (topic, json.dumps(measurement(1, pad="x" * MAX_PAYLOAD)), "oversized"),
        (topics.events_topic("nobody", "d1"), json.dumps(measurement(1)), "unknown tenant"),
        (topic + "/pb", b"\xff\xff\xff", "bad protobuf"),
        ("SiteWhere/default/input/json", json.dumps({"deviceToken": "x", "type": "Nope"}), "bad SiteWhere"),
    ]
    try:
        for i, (bad_topic, payload, _) in enumerate(bad):
            await dev.publish_acked(topic, measurement(i, f"good-{i}"))
            # Rejected payloads are acknowledged too: redelivering them would never help.
            await dev.publish_acked(bad_topic, payload)
        await dev.publish_acked(topic, measurement(99, "good-last"))
    finally:
        await dev.close()

    assert embedded.sink.alternate_ids() == [f"good-{i}" for i in range(len(bad))] + ["good-last"]
    rejected = embedded.sink.rejected
    assert len(rejected) == len(bad)
    for (bad_topic, payload, what), got in zip(bad, rejected, strict=True):
        assert got.source == bad_topic, what
        assert got.reason, what
        if what != "oversized":
            assert got.payload == (payload.encode() if isinstance(payload, str) else payload), what
    oversized = rejected[3]
    assert "max_payload_bytes" in oversized.reason
    assert len(oversized.payload) == MAX_PAYLOAD
    assert "tenant" in rejected[4].reason and rejected[4].tenant == "nobody"
    assert len({r.reason for r in rejected}) == len(rejected), "each failure has its own reason"
    stats = embedded.adapter.stats
    assert sum(stats.messages_rejected.values()) == len(bad)
    assert stats.messages_rejected["oversize"] == 1 and stats.messages_rejected["tenant"] == 1


async def test_invalid_device_token_in_topic_is_rejected_not_ignored(embedded: Embedded) -> None:
    dev = await embedded.device()
    try:
        await dev.publish_acked("fieldgate/default/devices/bad$name/events", measurement(1))
        await dev.publish_acked("some/other/topic", b"anything")
    finally:
        await dev.close()
    assert [r.source for r in embedded.sink.rejected] == ["fieldgate/default/devices/bad$name/events"]
    assert embedded.adapter.stats.messages_ignored == 1


async def test_broker_still_relays_device_messages_to_other_subscribers(embedded: Embedded) -> None:
    watcher = await embedded.device()
    dev = await embedded.device()
    try:
        await watcher.subscribe("fieldgate/#")
        topic = topics.events_topic("default", "d1")
        infos = [dev.publish(topic, measurement(i, f"relayed-{i}")) for i in range(300)]
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, 30)
        relayed = [json.loads((await watcher.next_message())[1])["id"] for _ in range(300)]
        assert sorted(relayed) == sorted(f"relayed-{i}" for i in range(300))
    finally:
        await dev.close()
        await watcher.close()
    assert sorted(embedded.sink.alternate_ids()) == sorted(relayed)


async def test_qos0_flood_pauses_reading_and_loses_nothing_once_the_sink_resumes() -> None:
    harness = await _start(max_inflight=50)
    harness.sink.gate = asyncio.Event()
    dev = await harness.device()
    try:
        topic = topics.events_topic("default", "chatty")
        for i in range(400):
            dev.publish(topic, measurement(i, f"q0-{i}"), qos=0)
        await eventually(lambda: harness.sink.pending >= 50, what="window filled")
        await eventually(lambda: harness.adapter.stats.reads_paused >= 1, what="reading paused")
        # Reading stopped at the window: no more than 50 messages are being handed over.
        await never(lambda: harness.sink.pending > 50, within=0.3, what="more than the window handed over")
        harness.sink.gate.set()
        await eventually(lambda: len(harness.sink.events) == 400, what="all QoS 0 messages")
        assert sorted(harness.sink.alternate_ids()) == sorted(f"q0-{i}" for i in range(400))
    finally:
        await dev.close()
        await harness.adapter.stop()


async def test_commands_reach_subscribed_device_and_subscribing_makes_it_online(embedded: Embedded) -> None:
    adapter = embedded.adapter
    assert not adapter.is_online("default", "valve-3")
    invocation = pb.CommandInvocation(
        invocation="inv-1", command="set-interval", params_json='{"seconds": 5}'
    )
    with pytest.raises(DeliveryError):
        await adapter.send_command("default", "valve-3", invocation)

    dev = await embedded.device()
    try:
        await dev.subscribe(topics.commands_topic("default", "valve-3"))
        await eventually(lambda: ("default", "valve-3") in embedded.online.seen, what="on_online")
        assert adapter.is_online("default", "valve-3")
        assert adapter.owns("default", "valve-3")
        assert not adapter.is_online("default", "valve-4")

        await adapter.send_command("default", "valve-3", invocation)
        topic, payload = await dev.next_message()
        assert topic == "fieldgate/default/devices/valve-3/commands"
        assert json.loads(payload) == {
            "invocation": "inv-1",
            "command": "set-interval",
            "params": {"seconds": 5},
        }
        assert adapter.stats.commands_sent == 1
    finally:
        await dev.close()
    await eventually(lambda: not adapter.is_online("default", "valve-3"), what="offline after disconnect")
    with pytest.raises(DeliveryError):
        await adapter.send_command("default", "valve-3", invocation)


async def test_wildcard_command_subscription_announces_known_devices(embedded: Embedded) -> None:
    dev = await embedded.device()
    watcher = await embedded.device()
    try:
        await dev.publish_acked(topics.events_topic("default", "known-1"), measurement(1))
        await watcher.subscribe("fieldgate/default/devices/+/commands")
        await eventually(lambda: ("default", "known-1") in embedded.online.seen, what="on_online")
        assert embedded.adapter.is_online("default", "anyone")
        await embedded.adapter.send_command(
            "default", "known-1", pb.CommandInvocation(invocation="i", command="ping")
        )
        topic, _ = await watcher.next_message()
        assert topic == topics.commands_topic("default", "known-1")
    finally:
        await dev.close()
        await watcher.close()


async def test_five_devices_times_200_messages_all_arrive_exactly_once(embedded: Embedded) -> None:
    devices = [await embedded.device() for _ in range(5)]
    try:
        infos = []
        for round_ in range(200):
            for d, dev in enumerate(devices):
                infos.append(
                    dev.publish(
                        topics.events_topic("default", f"dev-{d}"), measurement(round_, f"{d}-{round_}")
                    )
                )
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, 30)
            assert info.is_published()
    finally:
        for dev in devices:
            await dev.close()
    counts = Counter(embedded.sink.alternate_ids())
    assert len(counts) == 1000
    assert set(counts.values()) == {1}
    per_device = Counter(e.device for e in embedded.sink.events)
    assert per_device == {f"dev-{d}": 200 for d in range(5)}
    assert embedded.adapter.stats.messages_accepted == 1000


@pytest.mark.parametrize("trouble", ["buffer_full", "sink_crash"])
async def test_unacknowledged_message_is_sent_again_after_reconnect(embedded: Embedded, trouble: str) -> None:
    sink = embedded.sink
    if trouble == "buffer_full":
        sink.full = True
    else:
        sink.fail_next = 1
    dev = await embedded.device()
    try:
        info = dev.publish(topics.events_topic("default", "d1"), measurement(1, "kept-by-device"))
        stats = embedded.adapter.stats
        await eventually(
            lambda: stats.messages_held + stats.messages_failed >= 1, what="message not made durable"
        )
        assert not info.is_published()
        assert stats.connections_dropped >= 1
        sink.full = False
        # paho reconnects (1 s backoff) and sends the unacknowledged message again.
        await asyncio.to_thread(info.wait_for_publish, 20)
        assert info.is_published()
        assert sink.alternate_ids() == ["kept-by-device"]
    finally:
        await dev.close()


async def test_port_in_use_is_a_clear_error(embedded: Embedded) -> None:
    from fieldgate.edge.errors import EdgeError

    clash = EmbeddedMqttAdapter(MqttConfig(port=embedded.port), tenants=TENANTS)
    with pytest.raises(EdgeError, match=str(embedded.port)):
        await clash.start(RecordingSink(), OnlineRecorder())
