"""The BLE adapter through bleak's real BlueZ backend against the simulated BlueZ.

No mock of bleak: the adapter scans, connects (bleak-retry-connector), subscribes and writes
over D-Bus to :mod:`fieldgate.sims.ble`, which plays bluetoothd and the peripherals.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fieldgate.edge.adapters.ble import BleConfig, build_ble_adapter
from fieldgate.edge.adapters.ble.adapter import BleAdapter
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import CommandsConfig, EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.edge.errors import DeliveryError
from fieldgate.sims import ble_gatt as fw
from fieldgate.sims.ble import CUSTOM_1, CUSTOM_LAYOUT, ENV_1, HR_1, BleSim
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.dbus_ble import ble_sim_env, needs_dbus_daemon
from tests.helpers.edge_cloud import TestCloud
from tests.helpers.mqtt_sinks import OnlineRecorder, RecordingSink
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.integration, needs_dbus_daemon]


def ble_config(**overrides: Any) -> BleConfig:
    doc: dict[str, Any] = {
        "enabled": True,
        "scan_interval_s": 2.0,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 1.0,
        "devices": [
            {
                "device": "env-1",
                "address": ENV_1,
                "characteristics": [{"uuid": "2a6e"}, {"uuid": "0x2A6F"}, {"uuid": "2a19"}],
            },
            # Allow-listed by advertised name instead of address.
            {
                "device": "env-2",
                "name": "fg-env-2",
                "characteristics": [{"uuid": "2a6e", "measurement": "t"}],
            },
            {"device": "hr-1", "address": HR_1, "characteristics": [{"uuid": "2a37"}]},
            {
                "device": "custom-1",
                "address": CUSTOM_1,
                "characteristics": [{"uuid": fw.CUSTOM_DATA, "decoder": {"fields": CUSTOM_LAYOUT}}],
                "command": {"uuid": fw.CUSTOM_COMMAND, "response_uuid": fw.CUSTOM_RESPONSE},
            },
        ],
    }
    doc.update(overrides)
    return BleConfig.model_validate(doc)


@pytest.fixture
async def ble_sim(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BleSim]:
    async with ble_sim_env(monkeypatch) as sim:
        yield sim


@pytest.fixture
async def running(ble_sim: BleSim) -> AsyncIterator[tuple[BleAdapter, RecordingSink, OnlineRecorder]]:
    adapter = build_ble_adapter(ble_config(), tenants=["default"])
    sink, online = RecordingSink(), OnlineRecorder()
    await adapter.start(sink, online)
    try:
        yield adapter, sink, online
    finally:
        await adapter.stop()


def values(sink: RecordingSink, device: str, name: str) -> list[float]:
    return [
        e.measurement.values[name] for e in sink.events if e.device == device and name in e.measurement.values
    ]


async def test_several_devices_notify_at_once_and_decode_with_units(
    ble_sim: BleSim, running: tuple[BleAdapter, RecordingSink, OnlineRecorder]
) -> None:
    adapter, sink, online = running
    await eventually(
        lambda: all(
            len(values(sink, d, n)) >= 5
            for d, n in [
                ("env-1", "temperature"),
                ("env-2", "t"),
                ("hr-1", "heart_rate"),
                ("custom-1", "co2"),
            ]
        ),
        30,
        "measurements from all four devices",
    )
    assert sorted(online.seen) == [("default", d) for d in ("custom-1", "env-1", "env-2", "hr-1")]
    # What was decoded is what the firmware sent.
    sent_t = [int.from_bytes(v, "little", signed=True) / 100 for v in ble_sim.sent[(ENV_1, fw.TEMPERATURE)]]
    got_t = values(sink, "env-1", "temperature")
    assert got_t == sent_t[: len(got_t)]
    env = next(e for e in sink.events if e.device == "env-1" and "humidity" in e.measurement.values)
    assert env.metadata["unit.humidity"] == "%" and env.metadata["source"] == "ble"
    assert env.tenant == "default" and env.event_time_ms > 0 and env.alternate_id == ""
    hr = [e for e in sink.events if e.device == "hr-1"]
    assert all(60 <= e.measurement.values["heart_rate"] < 100 for e in hr)
    assert any(e.measurement.values.get("rr_interval_0") == 0.75 for e in hr)
    assert hr[0].metadata["unit.heart_rate"] == "bpm"
    for d in ("env-1", "env-2", "hr-1", "custom-1"):
        assert adapter.is_online("default", d)
        assert adapter.health.snapshot()[("default", d)].connected


async def test_custom_layout_decodes_the_firmware_struct(
    ble_sim: BleSim, running: tuple[BleAdapter, RecordingSink, OnlineRecorder]
) -> None:
    _adapter, sink, _ = running
    await eventually(lambda: len(values(sink, "custom-1", "pressure")) >= 3, 30, "custom measurements")
    sent = [fw.CUSTOM_STRUCT.unpack(v) for v in ble_sim.sent[(CUSTOM_1, fw.CUSTOM_DATA)]]
    events = [e for e in sink.events if e.device == "custom-1"]
    for event, (t, p, co2, status) in zip(events, sent, strict=False):
        assert event.measurement.values["temperature"] == pytest.approx(t / 100)
        assert dict(event.measurement.values) | {"temperature": 0} == {
            "temperature": 0,
            "pressure": p,
            "co2": co2,
            "status": status,
        }
    assert events[0].metadata["unit.pressure"] == "Pa" and "unit.status" not in events[0].metadata


async def test_wrong_length_notification_is_counted_and_the_device_keeps_working(
    ble_sim: BleSim, running: tuple[BleAdapter, RecordingSink, OnlineRecorder]
) -> None:
    adapter, sink, _ = running
    await eventually(
        lambda: ble_sim.is_notifying(ENV_1, fw.TEMPERATURE) and adapter.is_online("default", "env-1"), 30
    )
    assert ble_sim.send_wrong_length(ENV_1, fw.TEMPERATURE)
    await eventually(lambda: adapter.stats.decode_errors == 1, 10, "decode error counted")
    assert adapter.health.snapshot()[("default", "env-1")].errors == {"decode": 1}
    await eventually(lambda: len(sink.rejected) == 1, 10, "payload in the failed-decode lane")
    assert "wrong length, expected 2 bytes, got 3" in sink.rejected[0].reason
    before = len(values(sink, "env-1", "temperature"))
    await eventually(lambda: len(values(sink, "env-1", "temperature")) >= before + 5, 10, "more temperatures")
    assert adapter.is_online("default", "env-1")


async def test_link_loss_reconnects_automatically_and_notifications_resume(
    ble_sim: BleSim, running: tuple[BleAdapter, RecordingSink, OnlineRecorder]
) -> None:
    adapter, sink, online = running
    await eventually(lambda: len(values(sink, "env-1", "temperature")) >= 3, 30, "first temperatures")
    ble_sim.drop_link(ENV_1)
    await eventually(
        lambda: adapter.health.snapshot()[("default", "env-1")].reconnects == 1, 30, "reconnected"
    )
    before = len(values(sink, "env-1", "temperature"))
    await eventually(
        lambda: len(values(sink, "env-1", "temperature")) >= before + 5, 15, "temperatures resume"
    )
    health = adapter.health.snapshot()[("default", "env-1")]
    assert health.connected and health.errors.get("disconnected") == 1
    assert online.seen.count(("default", "env-1")) == 2
    # The other devices never noticed.
    assert adapter.health.snapshot()[("default", "env-2")].reconnects == 0


async def test_power_loss_recovers_when_the_device_comes_back(
    ble_sim: BleSim, running: tuple[BleAdapter, RecordingSink, OnlineRecorder]
) -> None:
    adapter, sink, _ = running
    await eventually(lambda: adapter.is_online("default", "hr-1"), 30, "hr-1 online")
    ble_sim.power_off(HR_1)
    await eventually(lambda: not adapter.is_online("default", "hr-1"), 10, "hr-1 offline")
    with pytest.raises(DeliveryError):
        await adapter.send_command("default", "hr-1", pb.CommandInvocation(invocation="x", command="ping"))
    ble_sim.power_on(HR_1)
    await eventually(lambda: adapter.is_online("default", "hr-1"), 30, "hr-1 back")
    before = len(values(sink, "hr-1", "heart_rate"))
    await eventually(lambda: len(values(sink, "hr-1", "heart_rate")) > before, 10, "heart rate resumes")


async def test_command_is_written_and_answered_by_the_device(
    ble_sim: BleSim, running: tuple[BleAdapter, RecordingSink, OnlineRecorder]
) -> None:
    adapter, sink, _ = running
    await eventually(lambda: adapter.is_online("default", "custom-1"), 30, "custom-1 online")
    inv = pb.CommandInvocation(invocation="inv-42", command="ping", params_json='{"n": 1}')
    await adapter.send_command("default", "custom-1", inv)
    written = ble_sim.writes(CUSTOM_1)
    assert written and json.loads(written[-1][1]) == {
        "invocation": "inv-42",
        "command": "ping",
        "params": {"n": 1},
    }
    await eventually(
        lambda: any(e.command_response.invocation == "inv-42" for e in sink.events), 10, "command response"
    )
    resp = next(e for e in sink.events if e.command_response.invocation == "inv-42")
    assert json.loads(resp.command_response.response_json) == {"ok": True, "command": "ping", "pong": True}
    assert adapter.stats.command_responses == 1 and adapter.stats.command_responses_synthesized == 0


async def test_command_without_response_characteristic_reports_the_write(ble_sim: BleSim) -> None:
    cfg = ble_config(
        devices=[
            {
                "device": "custom-1",
                "address": CUSTOM_1,
                "command": {"uuid": fw.CUSTOM_COMMAND, "encoding": "utf8"},
            }
        ]
    )
    adapter = build_ble_adapter(cfg, tenants=["default"])
    sink = RecordingSink()
    await adapter.start(sink, OnlineRecorder())
    try:
        await eventually(lambda: adapter.is_online("default", "custom-1"), 30, "online")
        await adapter.send_command(
            "default", "custom-1", pb.CommandInvocation(invocation="i-1", command="reboot")
        )
        assert ble_sim.writes(CUSTOM_1)[-1] == (fw.CUSTOM_COMMAND, b"reboot")
        await eventually(lambda: any(e.command_response.invocation == "i-1" for e in sink.events), 10)
        resp = next(e for e in sink.events if e.command_response.invocation == "i-1")
        assert json.loads(resp.command_response.response_json) == {"written": True}
    finally:
        await adapter.stop()


async def test_through_a_real_edge_agent_events_and_commands_reach_the_cloud(
    tmp_path: Path, ble_sim: BleSim
) -> None:
    async with TestCloud() as cloud:
        config = EdgeConfig(
            edge_id="edge-ble",
            data_dir=tmp_path / "edge",
            mqtt=MqttConfig(enabled=False),
            uplink=UplinkConfig(
                target=cloud.target, batch_max_delay_ms=2, backoff_initial_s=0.05, backoff_max_s=0.5
            ),
            commands=CommandsConfig(response_timeout_s=5.0),
        )
        adapter = build_ble_adapter(ble_config(), tenants=["default"])
        async with EdgeAgent(config, adapters=[adapter]):
            await cloud.wait_until(
                lambda: {e.device for e in cloud.events.values()} >= {"env-1", "env-2", "hr-1", "custom-1"}
            )
            await cloud.wait_for_session()
            down = svc.CommandDown(
                tenant="default",
                device="custom-1",
                invocation=pb.CommandInvocation(invocation="inv-agent", command="ping"),
            )
            await cloud.send_command(down)
            await cloud.wait_until(
                lambda: any(e.command_response.invocation == "inv-agent" for e in cloud.events.values())
            )
            await cloud.wait_until(
                lambda: (
                    svc.COMMAND_STATUS_DELIVERED
                    in [s.status for s in cloud.statuses if s.invocation == "inv-agent"]
                )
            )
