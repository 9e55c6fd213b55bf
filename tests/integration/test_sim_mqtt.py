"""The MQTT device simulator against a real amqtt broker and a real paho subscriber.

What a user of the simulator relies on: its messages have the documented topics and shapes,
every acknowledged event arrives, commands on a device's commands topic get the right
command_response, ``set-interval`` changes that device's rate, and the in-flight window holds.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from amqtt.broker import Broker
from paho.mqtt.enums import CallbackAPIVersion

from fieldgate.sims.errors import SimConfigError, SimConnectError
from fieldgate.sims.mqtt import MqttDeviceSim, add_cli_arguments, run_from_args
from fieldgate.timeutil import now_ms
from tests.helpers.waiting import eventually, free_port, never

pytestmark = pytest.mark.integration


@pytest.fixture
async def broker_port() -> AsyncIterator[int]:
    """An amqtt broker on a free 127.0.0.1 port, anonymous access, in this test's event loop."""
    port = free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    try:
        yield port
    finally:
        await broker.shutdown()


class Listener:
    """A paho subscriber that records what it receives (its network thread appends)."""

    def __init__(self, port: int, *filters: str) -> None:
        self._lock = threading.Lock()
        self._messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"listener-{port}-{id(self)}")
        self.client.on_connect = lambda c, *a: c.subscribe([(f, 1) for f in filters])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.port = port

    def _on_message(self, client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append((message.topic, bytes(message.payload)))

    async def __aenter__(self) -> Listener:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not await asyncio.to_thread(self._subscribed.wait, 10):
            raise AssertionError("listener not subscribed within 10 s")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    def messages(self, topic: str | None = None) -> list[tuple[str, bytes]]:
        with self._lock:
            return [m for m in self._messages if topic is None or m[0] == topic]

    def events(self, topic: str | None = None) -> list[dict[str, Any]]:
        """Every event object received (arrays flattened)."""
        out: list[dict[str, Any]] = []
        for _, payload in self.messages(topic):
            doc = orjson.loads(payload)
            out.extend(doc if isinstance(doc, list) else [doc])
        return out

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)


def _responses(listener: Listener, device: str) -> dict[str, dict[str, Any]]:
    """invocation id → command_response event, as the gateway would see them."""
    return {
        e["invocation"]: e
        for e in listener.events(f"fieldgate/default/devices/{device}/events")
        if e.get("type") == "command_response"
    }


def _command(invocation: str, command: str, params: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps({"invocation": invocation, "command": command, "params": params or {}})


async def test_measurements_have_documented_shape_and_all_acked_events_arrive(broker_port: int) -> None:
    before = now_ms()
    async with Listener(broker_port, "fieldgate/+/devices/+/events") as listener:
        async with MqttDeviceSim(port=broker_port, devices=3, rate_hz=20, count=60, with_ids=True) as sim:
            assert await sim.wait_done(30)
            assert await sim.wait_acked(30)
            acked = sim.acked_ids()
        await eventually(lambda: len(listener.events()) >= 60, what="60 events at the subscriber")

    stats = sim.stats()
    assert (stats.sent, stats.acked, stats.events_acked, stats.publish_errors) == (60, 60, 60, 0)
    assert sim.devices == ("sim-0001", "sim-0002", "sim-0003")
    topics = {topic for topic, _ in listener.messages()}
    assert topics == {f"fieldgate/default/devices/sim-000{i}/events" for i in (1, 2, 3)}
    for _, payload in listener.messages():
        event = orjson.loads(payload)
        assert isinstance(event, dict), "one event per message is a JSON object"
        assert event["type"] == "measurement"
        assert set(event["values"]) == {"temperature", "humidity"}
        assert all(isinstance(v, float) for v in event["values"].values())
        assert -20 <= event["values"]["temperature"] <= 60 and 0 <= event["values"]["humidity"] <= 100
        assert isinstance(event["ts"], int) and before <= event["ts"] <= now_ms()
        assert event["id"].startswith(sim.run_id)
        assert event["metadata"] == {"unit.temperature": "°C", "unit.humidity": "%"}
    received = [e["id"] for e in listener.events()]
    assert sorted(received) == sorted(acked) and len(set(acked)) == 60


async def test_distinct_ts_gives_every_message_of_a_device_its_own_timestamp(broker_port: int) -> None:
    # Flat out, 2 devices: several messages of one device go out within a millisecond, which
    # ThingsBoard-style stores (keyed by device, key, ts) would merge.
    before = now_ms()
    async with Listener(broker_port, "fieldgate/+/devices/+/events") as listener:
        async with MqttDeviceSim(
            port=broker_port, devices=2, rate_hz=0, count=400, with_ids=True, distinct_ts=True
        ) as sim:
            assert await sim.wait_done(30)
            assert await sim.wait_acked(30)
        await eventually(lambda: len(listener.messages()) >= 400, what="400 messages at the subscriber")

    stamps = [(topic, orjson.loads(payload)["ts"]) for topic, payload in listener.messages()]
    assert len(set(stamps)) == 400, "two messages of one device share a ts"
    assert all(before <= ts for _, ts in stamps)


async def test_batches_are_json_arrays(broker_port: int) -> None:
    async with Listener(broker_port, "fieldgate/+/devices/+/events") as listener:
        async with MqttDeviceSim(
            port=broker_port, devices=2, rate_hz=0, batch=25, count=8, with_ids=True
        ) as sim:
            assert await sim.wait_done(30) and await sim.wait_acked(30)
        await eventually(lambda: len(listener.messages()) >= 8, what="8 messages")
    for _, payload in listener.messages():
        batch = orjson.loads(payload)
        assert isinstance(batch, list) and len(batch) == 25
        assert {e["type"] for e in batch} == {"measurement"}
    assert sim.stats().events_acked == 200
    assert len({e["id"] for e in listener.events()}) == 200


async def test_sitewhere_flavour_publishes_device_measurements(broker_port: int) -> None:
    async with Listener(broker_port, "SiteWhere/#") as listener:
        async with MqttDeviceSim(
            port=broker_port, tenant="acme", devices=["boiler-1"], rate_hz=0, fmt="sitewhere", count=4
        ) as sim:
            assert await sim.wait_done(30) and await sim.wait_acked(30)
        await eventually(lambda: len(listener.messages()) >= 4, what="4 SiteWhere messages")
    assert {t for t, _ in listener.messages()} == {"SiteWhere/acme/input/json"}
    names = []
    for event in listener.events():
        assert event["deviceToken"] == "boiler-1" and event["type"] == "DeviceMeasurement"
        assert isinstance(event["request"]["value"], float) and isinstance(event["request"]["eventDate"], int)
        names.append(event["request"]["name"])
        units = {"temperature": {"unit.temperature": "°C"}, "humidity": {"unit.humidity": "%"}}
        assert event["request"]["metadata"] == units[names[-1]]
    assert names == ["temperature", "humidity", "temperature", "humidity"]


async def test_commands_get_command_responses(broker_port: int) -> None:
    device = "sim-0002"
    async with Listener(broker_port, "fieldgate/+/devices/+/events") as listener:
        async with MqttDeviceSim(port=broker_port, devices=3, rate_hz=0.2, connections=2) as sim:
            commands = f"fieldgate/default/devices/{device}/commands"
            listener.publish(commands, _command("inv-ping", "ping"))
            listener.publish(commands, _command("inv-bad", "set-interval", {"seconds": "soon"}))
            listener.publish(commands, _command("inv-what", "self-destruct"))
            listener.publish(commands, b"not json at all")
            listener.publish(commands, orjson.dumps({"command": "ping"}))  # no invocation id

            answered = await eventually(
                lambda: _responses(listener, device) if len(_responses(listener, device)) == 3 else None,
                what="three command responses",
            )
            await eventually(lambda: sim.stats().commands_invalid == 2, what="two unusable commands")
            stats = sim.stats()
    assert answered["inv-ping"]["response"] == {"pong": True}
    assert answered["inv-what"]["response"] == {"error": "unknown command"}
    assert "error" in answered["inv-bad"]["response"]
    assert all(isinstance(r["ts"], int) for r in answered.values())
    assert (stats.commands_received, stats.responses_sent, stats.commands_invalid) == (5, 3, 2)
    assert sim.interval_of(device) == 5.0, "a rejected set-interval leaves the interval alone"
    # Responses go out on the commanded device's own events topic only.
    assert _responses(listener, "sim-0001") == {} and _responses(listener, "sim-0003") == {}


async def test_set_interval_changes_that_devices_rate(broker_port: int) -> None:
    fast, slow = "sim-0001", "sim-0002"
    async with Listener(broker_port, "fieldgate/+/devices/+/events") as listener:
        # One message per minute each: without the command the test would see at most one each.
        async with MqttDeviceSim(port=broker_port, devices=2, rate_hz=1 / 60) as sim:
            listener.publish(
                f"fieldgate/default/devices/{fast}/commands",
                _command("inv-1", "set-interval", {"seconds": 1}),
            )
            response = await eventually(lambda: _responses(listener, fast).get("inv-1"), what="response")
            assert response["response"] == {"interval_s": 1}
            assert sim.interval_of(fast) == 1.0 and sim.interval_of(slow) == 60.0

            def measurements(device: str) -> int:
                events = listener.events(f"fieldgate/default/devices/{device}/events")
                return sum(1 for e in events if e["type"] == "measurement")

            base = measurements(fast)
            await eventually(
                lambda: measurements(fast) >= base + 3,
                timeout=30,
                what="3 more measurements from fast",
            )
            assert measurements(slow) <= 1
            # And back: a long interval silences the device (allow for one already due).
            listener.publish(
                f"fieldgate/default/devices/{fast}/commands",
                _command("inv-2", "set-interval", {"seconds": 3600}),
            )
            await eventually(lambda: _responses(listener, fast).get("inv-2"), what="second response")
            settled = measurements(fast)
            await never(lambda: measurements(fast) > settled + 1, within=3, what="fast still publishing")


async def test_inflight_window_is_bounded_and_nothing_is_lost(broker_port: int) -> None:
    async with Listener(broker_port, "fieldgate/+/devices/+/events") as listener:
        async with MqttDeviceSim(
            port=broker_port, devices=4, connections=1, rate_hz=0, count=2000, max_inflight=16, with_ids=True
        ) as sim:
            assert await sim.wait_done(120) and await sim.wait_acked(60)
        await eventually(lambda: len(listener.messages()) >= 2000, timeout=60, what="2000 messages")
    stats = sim.stats()
    assert stats.acked == 2000 and stats.inflight == 0
    assert 1 <= stats.inflight_peak <= 16
    assert {e["id"] for e in listener.events()} == set(sim.acked_ids())


async def test_qos0_and_duration_bound(broker_port: int) -> None:
    async with MqttDeviceSim(port=broker_port, devices=2, rate_hz=5, qos=0, duration_s=1.0) as sim:
        assert await sim.wait_done(20)
    stats = sim.stats()
    assert stats.sent > 0 and stats.acked == stats.sent and stats.inflight == 0


async def test_cli_runs_bounded_and_prints_a_summary(
    broker_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    ns = parser.parse_args(
        [
            "--port",
            str(broker_port),
            "--devices",
            "3",
            "--rate",
            "0",
            "--batch",
            "10",
            "--count",
            "30",
            "--progress",
            "0",
        ]
    )
    async with Listener(broker_port, "fieldgate/+/devices/+/events") as listener:
        assert await asyncio.to_thread(run_from_args, ns) == 0
        await eventually(lambda: len(listener.events()) >= 300, what="300 events")
    out = capsys.readouterr().out
    assert "sent 30 messages (300 events" in out and "acknowledged 30" in out


async def test_unreachable_broker_and_bad_options_fail_clearly() -> None:
    with pytest.raises(SimConnectError, match="cannot connect"):
        await MqttDeviceSim(port=free_port(), devices=1).start()
    for bad in ({"batch": 0}, {"rate_hz": -1.0}, {"qos": 2}, {"devices": ["a/b"]}, {"max_inflight": 70_000}):
        with pytest.raises(SimConfigError):
            MqttDeviceSim(**bad)
    with pytest.raises(SimConfigError, match="SiteWhere"):
        MqttDeviceSim(fmt="sitewhere", batch=5)
