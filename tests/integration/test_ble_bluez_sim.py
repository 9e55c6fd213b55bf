"""bleak's real BlueZ backend against the simulated BlueZ: scan, connect, notify, read, write.

These tests pin down the simulation itself (the edge adapter's tests build on it): if bleak
changes what it expects from bluetoothd, they fail here first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from bleak import BleakClient, BleakScanner

from fieldgate.sims import ble_gatt as gatt
from fieldgate.sims.ble import CUSTOM_1, ENV_1, ENV_2, BleSim
from tests.helpers.dbus_ble import ble_sim_env, needs_dbus_daemon
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.integration, needs_dbus_daemon]


@pytest.fixture
async def ble_sim(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BleSim]:
    async with ble_sim_env(monkeypatch) as sim:
        yield sim


async def test_scan_finds_advertising_peripherals(ble_sim: BleSim) -> None:
    devices = await BleakScanner.discover(timeout=1.0)
    found = {d.address: d.name for d in devices}
    assert found[ENV_1] == "fg-env-1"
    assert found[CUSTOM_1] == "fg-custom-1"


async def test_connect_discover_services_notify_and_read(ble_sim: BleSim) -> None:
    device = await BleakScanner.find_device_by_address(ENV_1, timeout=5.0)
    assert device is not None
    received: list[bytes] = []
    async with BleakClient(device) as client:
        uuids = {s.uuid for s in client.services}
        assert gatt.ENVIRONMENTAL_SENSING in uuids and gatt.BATTERY_SERVICE in uuids
        await client.start_notify(gatt.TEMPERATURE, lambda _c, data: received.append(bytes(data)))
        await eventually(lambda: len(received) >= 5, 10, "5 temperature notifications")
        # What bleak delivered is exactly what the firmware notified, in order.
        sent = list(ble_sim.sent[(ENV_1, gatt.TEMPERATURE)])
        assert received[:5] == sent[:5]
        value = await client.read_gatt_char(gatt.BATTERY_LEVEL)
        assert 0 <= value[0] <= 100


async def test_two_clients_notify_concurrently(ble_sim: BleSim) -> None:
    counts = {ENV_1: 0, ENV_2: 0}

    async def run(address: str) -> None:
        def on_value(_c: object, _d: bytearray) -> None:
            counts[address] += 1

        device = await BleakScanner.find_device_by_address(address, timeout=5.0)
        assert device is not None
        async with BleakClient(device) as client:
            await client.start_notify(gatt.HUMIDITY, on_value)
            await eventually(lambda: counts[address] >= 5, 10, f"notifications from {address}")

    await asyncio.gather(run(ENV_1), run(ENV_2))


async def test_write_with_response_reaches_the_firmware_which_answers(ble_sim: BleSim) -> None:
    device = await BleakScanner.find_device_by_address(CUSTOM_1, timeout=5.0)
    assert device is not None
    answers: list[bytes] = []
    async with BleakClient(device) as client:
        await client.start_notify(gatt.CUSTOM_RESPONSE, lambda _c, d: answers.append(bytes(d)))
        cmd = {"invocation": "inv-1", "command": "ping", "params": {}}
        await client.write_gatt_char(gatt.CUSTOM_COMMAND, json.dumps(cmd).encode(), response=True)
        await eventually(lambda: bool(answers), 10, "command response notification")
    assert ble_sim.writes(CUSTOM_1)[0][1] == json.dumps(cmd).encode()
    assert json.loads(answers[0]) == {
        "type": "command_response",
        "invocation": "inv-1",
        "response": {"ok": True, "command": "ping", "pong": True},
    }


async def test_link_loss_reaches_bleak_as_a_disconnect(ble_sim: BleSim) -> None:
    device = await BleakScanner.find_device_by_address(ENV_1, timeout=5.0)
    assert device is not None
    gone = asyncio.Event()
    client = BleakClient(device, disconnected_callback=lambda _c: gone.set())
    await client.connect()
    try:
        ble_sim.drop_link(ENV_1)
        await asyncio.wait_for(gone.wait(), 10)
        assert not client.is_connected
        # It advertises again and can be found and connected anew.
        again = await BleakScanner.find_device_by_address(ENV_1, timeout=5.0)
        assert again is not None
        async with BleakClient(again) as second:
            assert second.is_connected
    finally:
        await client.disconnect()
