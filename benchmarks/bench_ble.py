"""BLE notifications/s through the simulated BlueZ: raw bleak beside the fieldgate BLE adapter.

The simulated BlueZ and its peripherals (``python -m fieldgate.sims.ble --rate 0``: notify as
fast as the event loop allows) run in their own process with their own dbus-daemon, so this
process's CPU time is the central's alone. Two phases against the same sim, same run:

1. **raw bleak**: one ``BleakClient`` per peripheral, ``start_notify`` on every characteristic
   with a counting callback — the ceiling of bleak + dbus-fast + dbus-daemon here;
2. **adapter**: :class:`fieldgate.edge.adapters.ble.BleAdapter` (scan, connect, decode, queue,
   sink), into a counting sink (``--agent``: a real EdgeAgent with an in-process test cloud).

Reported: notifications/s and this process's CPU share (CPU seconds / wall seconds, from
``resource.getrusage``). Bounded: each phase lasts ``--seconds`` (default 5).

    .venv/bin/python benchmarks/bench_ble.py [--seconds 5] [--agent]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bleak import BleakClient, BleakScanner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fieldgate.edge.adapters.ble import BleConfig, build_ble_adapter
from fieldgate.sims import ble_gatt as fw
from fieldgate.sims.ble import CUSTOM_1, CUSTOM_LAYOUT, ENV_1, ENV_2, HR_1
from fieldgate.v1 import events_pb2 as pb

NOTIFY = {
    ENV_1: [fw.TEMPERATURE, fw.HUMIDITY, fw.BATTERY_LEVEL],
    ENV_2: [fw.TEMPERATURE, fw.HUMIDITY, fw.BATTERY_LEVEL],
    HR_1: [fw.HEART_RATE_MEASUREMENT, fw.BATTERY_LEVEL],
    CUSTOM_1: [fw.CUSTOM_DATA],
}


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def start_sim(seconds: float) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fieldgate.sims.ble", "--rate", "0", "--duration", str(seconds)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise SystemExit("the BLE sim did not start")
    return proc, json.loads(line)["address"]


def stop_sim(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


async def raw_bleak(seconds: float) -> tuple[int, float, float]:
    count = 0

    def on_value(_c: Any, _d: bytearray) -> None:
        nonlocal count
        count += 1

    clients = []
    for address, uuids in NOTIFY.items():
        device = await BleakScanner.find_device_by_address(address, timeout=10)
        assert device is not None, address
        client = BleakClient(device)
        await client.connect()
        for uuid in uuids:
            await client.start_notify(uuid, on_value)
        clients.append(client)
    count = 0
    t0, c0 = time.monotonic(), cpu_s()
    await asyncio.sleep(seconds)
    n, wall, cpu = count, time.monotonic() - t0, cpu_s() - c0
    for client in clients:
        await client.disconnect()
    return n, wall, cpu


def adapter_config() -> BleConfig:
    return BleConfig.model_validate(
        {
            "enabled": True,
            "scan_interval_s": 5,
            "queue_size": 10_000,
            "devices": [
                {
                    "device": "env-1",
                    "address": ENV_1,
                    "characteristics": [{"uuid": "2a6e"}, {"uuid": "2a6f"}, {"uuid": "2a19"}],
                },
                {
                    "device": "env-2",
                    "address": ENV_2,
                    "characteristics": [{"uuid": "2a6e"}, {"uuid": "2a6f"}, {"uuid": "2a19"}],
                },
                {"device": "hr-1", "address": HR_1, "characteristics": [{"uuid": "2a37"}, {"uuid": "2a19"}]},
                {
                    "device": "custom-1",
                    "address": CUSTOM_1,
                    "characteristics": [{"uuid": fw.CUSTOM_DATA, "decoder": {"fields": CUSTOM_LAYOUT}}],
                },
            ],
        }
    )


class CountingSink:
    def __init__(self) -> None:
        self.events = 0

    async def accept(self, events: Sequence[pb.Event], *, source: str) -> None:
        self.events += len(events)

    async def reject(self, payload: bytes, *, source: str, reason: str, tenant: str = "") -> None:
        pass


async def _online() -> None: ...


async def through_adapter(seconds: float, with_agent: bool) -> tuple[int, float, float, dict[str, Any]]:
    adapter = build_ble_adapter(adapter_config(), tenants=["default"])

    async def on_online(_t: str, _d: str) -> None:
        return None

    async def wait_online() -> None:
        for _ in range(3000):
            if all(adapter.is_online("default", d) for d in ("env-1", "env-2", "hr-1", "custom-1")):
                return
            await asyncio.sleep(0.01)
        raise SystemExit("BLE devices did not come online within 30 s")

    if not with_agent:
        sink = CountingSink()
        await adapter.start(sink, on_online)
        try:
            await wait_online()
            n0 = adapter.stats.events_accepted
            t0, c0 = time.monotonic(), cpu_s()
            await asyncio.sleep(seconds)
            n, wall, cpu = adapter.stats.events_accepted - n0, time.monotonic() - t0, cpu_s() - c0
        finally:
            await adapter.stop()
        return n, wall, cpu, adapter.stats.as_dict()

    from fieldgate.edge.agent import EdgeAgent
    from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
    from tests.helpers.edge_cloud import TestCloud

    with tempfile.TemporaryDirectory() as tmp:
        async with TestCloud() as cloud:
            config = EdgeConfig(
                edge_id="bench-ble",
                data_dir=Path(tmp),
                mqtt=MqttConfig(enabled=False),
                uplink=UplinkConfig(target=cloud.target),
            )
            async with EdgeAgent(config, adapters=[adapter]):
                await wait_online()
                n0 = adapter.stats.events_accepted
                t0, c0 = time.monotonic(), cpu_s()
                await asyncio.sleep(seconds)
                n, wall, cpu = adapter.stats.events_accepted - n0, time.monotonic() - t0, cpu_s() - c0
    return n, wall, cpu, adapter.stats.as_dict()


async def main(seconds: float, with_agent: bool) -> None:
    proc, address = start_sim(4 * seconds + 60)
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address  # this benchmark process only
    try:
        raw = await raw_bleak(seconds)
        ada = await through_adapter(seconds, with_agent)
    finally:
        stop_sim(proc)
    print(
        f"BLE through the simulated BlueZ, 4 peripherals, 9 notifying characteristics, {seconds:.0f} s per phase"
    )
    print(f"{'path':<28}{'notifications/s':>18}{'CPU share':>12}")
    print(f"{'raw bleak (start_notify)':<28}{raw[0] / raw[1]:>18,.0f}{raw[2] / raw[1]:>11.0%}")
    label = "adapter + EdgeAgent" if with_agent else "fieldgate BLE adapter"
    print(f"{label:<28}{ada[0] / ada[1]:>18,.0f}{ada[2] / ada[1]:>11.0%}")
    stats = ada[3]
    print(
        f"adapter: decode_errors={stats['decode_errors']} dropped={stats['dropped']} connects={stats['connects']}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--agent", action="store_true", help="run the adapter inside a real EdgeAgent")
    ns = parser.parse_args()
    asyncio.run(main(ns.seconds, ns.agent))
