"""Device-level BLE tests, against the simulated BlueZ (CI) or real peripherals (--hw-profile).

Each test runs the real BLE adapter (bleak's BlueZ backend) with a recording sink and checks
what a user would notice: values and units arrive, commands are answered, a link or power loss
recovers by itself, a malformed notification is counted and harms nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from fieldgate.edge.adapters.ble import build_ble_adapter
from fieldgate.edge.adapters.ble.adapter import BleAdapter
from fieldgate.sims import ble_gatt as fw
from fieldgate.v1 import events_pb2 as pb
from hil import targets_ble
from hil.targets_ble import BleTarget
from tests.helpers.mqtt_sinks import OnlineRecorder, RecordingSink
from tests.helpers.waiting import eventually

ble_target = targets_ble.ble_target


@pytest.fixture
async def running(ble_target: BleTarget) -> AsyncIterator[tuple[BleAdapter, RecordingSink]]:
    adapter = build_ble_adapter(ble_target.config(), tenants=["default"])
    sink = RecordingSink()
    await adapter.start(sink, OnlineRecorder())
    try:
        yield adapter, sink
    finally:
        await adapter.stop()


def count(sink: RecordingSink, device: str, name: str) -> int:
    return sum(1 for e in sink.events if e.device == device and name in e.measurement.values)


async def test_events_arrive_with_the_right_values_and_units(
    ble_target: BleTarget, running: tuple[BleAdapter, RecordingSink]
) -> None:
    _adapter, sink = running
    wait = 60 if ble_target.hardware else 30
    for dev in ble_target.devices:
        for name, (low, high) in dev.expect.items():
            await eventually(
                lambda d=dev.device, n=name: count(sink, d, n) >= 3, wait, f"{dev.device} {name}"
            )
            for e in (e for e in sink.events if e.device == dev.device and name in e.measurement.values):
                assert low <= e.measurement.values[name] <= high, (
                    dev.device,
                    name,
                    e.measurement.values[name],
                )
                if name in dev.units:
                    assert e.metadata[f"unit.{name}"] == dev.units[name]


async def test_commands_are_answered(
    ble_target: BleTarget, running: tuple[BleAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    dev = ble_target.with_command()
    if dev is None:
        pytest.skip("no BLE device with a command characteristic in the profile")
    await eventually(lambda: adapter.is_online("default", dev.device), 60, f"{dev.device} online")
    await adapter.send_command(
        "default", dev.device, pb.CommandInvocation(invocation="hil-ble-1", command="ping")
    )
    await eventually(
        lambda: any(e.command_response.invocation == "hil-ble-1" for e in sink.events), 30, "command response"
    )
    resp = next(e for e in sink.events if e.command_response.invocation == "hil-ble-1")
    assert json.loads(resp.command_response.response_json)


async def test_link_loss_recovers(ble_target: BleTarget, running: tuple[BleAdapter, RecordingSink]) -> None:
    adapter, sink = running
    dev = ble_target.devices[0]
    if not ble_target.can_fault(dev):
        pytest.skip("link loss needs the sim or a bench with faults: true")
    name = next(iter(dev.expect))
    await eventually(lambda: count(sink, dev.device, name) >= 2, 60, "first events")
    await eventually(lambda: adapter.is_online("default", dev.device), 60, "online")
    if ble_target.sim is not None:
        assert dev.address is not None
        ble_target.sim.drop_link(dev.address)
    else:
        print(f"\n>>> move {dev.device} out of range (or shield it) until it disconnects, then back")
    await eventually(
        lambda: adapter.health.snapshot()[("default", dev.device)].reconnects >= 1, 180, "reconnected"
    )
    before = count(sink, dev.device, name)
    await eventually(lambda: count(sink, dev.device, name) > before + 2, 60, "events resume")


async def test_power_loss_recovers(ble_target: BleTarget, running: tuple[BleAdapter, RecordingSink]) -> None:
    adapter, sink = running
    dev = ble_target.devices[1] if len(ble_target.devices) > 1 else ble_target.devices[0]
    if not ble_target.can_fault(dev):
        pytest.skip("power loss needs the sim or a bench with faults: true")
    await eventually(lambda: adapter.is_online("default", dev.device), 60, "online")
    if ble_target.sim is not None:
        assert dev.address is not None
        ble_target.sim.power_off(dev.address)
        await eventually(lambda: not adapter.is_online("default", dev.device), 30, "offline")
        ble_target.sim.power_on(dev.address)
    else:
        print(f"\n>>> switch {dev.device} off, wait 5 s, switch it on again")
        await eventually(lambda: not adapter.is_online("default", dev.device), 120, "offline")
    await eventually(lambda: adapter.is_online("default", dev.device), 120, "back online")
    name = next(iter(dev.expect))
    before = count(sink, dev.device, name)
    await eventually(lambda: count(sink, dev.device, name) > before, 60, "events resume")


async def test_bad_notification_is_counted_and_harms_nothing(
    ble_target: BleTarget, running: tuple[BleAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    if ble_target.sim is None:
        pytest.skip("a malformed notification cannot be provoked on real hardware")
    dev = ble_target.devices[0]
    assert dev.address is not None
    # Online = every characteristic subscribed and the link's health entry created; the sim's
    # "notifying" alone turns true after the first subscription, before that.
    await eventually(lambda: adapter.is_online("default", dev.device), 30, "online")
    await eventually(
        lambda: ble_target.sim is not None and ble_target.sim.is_notifying(dev.address or "", fw.TEMPERATURE),
        30,
    )
    assert ble_target.sim.send_wrong_length(dev.address, fw.TEMPERATURE)

    def decode_errors() -> int | None:
        health = adapter.health.snapshot().get(("default", dev.device))
        return None if health is None else health.errors.get("decode")

    await eventually(lambda: decode_errors() == 1, 30)
    await eventually(lambda: len(sink.rejected) == 1, 10)
    before = count(sink, dev.device, "temperature")
    await eventually(lambda: count(sink, dev.device, "temperature") > before + 2, 30, "events continue")
    assert all(adapter.is_online("default", d.device) for d in ble_target.devices)
