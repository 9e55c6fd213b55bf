"""The ``serial_target`` fixture: how the hil suite reaches serial (UART / USB-serial) devices.

Without ``--hw-profile`` it starts two :class:`fieldgate.sims.serial.SerialDeviceSim` devices on
pseudo-terminals — one speaking JSON lines, one the compact binary protocol — and offers their
fault controls. With a profile, the ``serial:`` section lists real boards (see
hil/README.md)::

    serial:
      - port: /dev/serial/by-id/usb-Espressif_ESP32-S3_7C:DF:A1-if00
        device: esp32-bench-1
        mode: binary                       # json | binary
        baudrate: 115200
        channels: {0: temperature, 1: humidity}
        ranges: {temperature: [-40, 85], humidity: [0, 100]}   # plausibility bounds
        command: {command: ping, params: {}, expect: [pong]}   # expected response keys

Faults (garbage, bad CRC, truncated frames, unplug/replug) need a sim — or a relay and a
human on hardware — so those tests are skipped with a profile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fieldgate.edge.adapters.serial import SerialConfig, SerialPortConfig, build_serial_adapter
from fieldgate.edge.adapters.serial.adapter import SerialAdapter
from fieldgate.sims.serial import CHANNELS, SerialDeviceSim

_PORT_KEYS = (
    "port",
    "device",
    "tenant",
    "mode",
    "baudrate",
    "channels",
    "ack_timeout_s",
    "reconnect_initial_s",
    "reconnect_max_s",
    "silence_timeout_s",
)


@dataclass
class SerialCommandCheck:
    device: str
    command: str
    params: dict[str, Any]
    expect: list[str]  # keys the response must have


@dataclass
class SerialTarget:
    """How to reach the devices, and the fault controls available for them (sims only)."""

    config: SerialConfig
    devices: list[str]
    ranges: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    command_checks: list[SerialCommandCheck] = field(default_factory=list)
    sims: dict[str, SerialDeviceSim] = field(default_factory=dict)

    def build_adapter(self) -> SerialAdapter:
        return build_serial_adapter(self.config, tenants={p.tenant for p in self.config.ports})

    def require_sims(self) -> dict[str, SerialDeviceSim]:
        if not self.sims:
            pytest.skip("fault injection needs the sims (or a relay and a human on hardware)")
        return self.sims


def _from_profile(entries: list[dict[str, Any]]) -> SerialTarget:
    ports = []
    ranges: dict[str, dict[str, tuple[float, float]]] = {}
    checks = []
    for entry in entries:
        unknown = set(entry) - set(_PORT_KEYS) - {"ranges", "command", "faults"}
        if unknown:
            raise pytest.UsageError(f"--hw-profile serial: unknown keys {sorted(unknown)}")
        port = SerialPortConfig.model_validate({k: v for k, v in entry.items() if k in _PORT_KEYS})
        ports.append(port)
        ranges[port.device] = {k: (float(v[0]), float(v[1])) for k, v in (entry.get("ranges") or {}).items()}
        command = entry.get("command") or {"command": "ping", "params": {}, "expect": []}
        checks.append(
            SerialCommandCheck(
                port.device,
                command["command"],
                dict(command.get("params") or {}),
                list(command.get("expect") or []),
            )
        )
    config = SerialConfig(enabled=True, ports=tuple(ports))
    return SerialTarget(config, [p.device for p in ports], ranges, checks)


@pytest.fixture
async def serial_target(hw_profile: dict[str, Any] | None, tmp_path: Path) -> AsyncIterator[SerialTarget]:
    if hw_profile is not None:
        entries = hw_profile.get("serial")
        if not entries:
            pytest.skip("no serial section in the hardware profile")
        yield _from_profile(entries)
        return
    async with AsyncExitStack() as stack:
        sims = {
            "sim-uart-json": SerialDeviceSim(
                tmp_path / "ttyJSON", mode="json", device="sim-uart-json", rate_hz=20
            ),
            "sim-uart-bin": SerialDeviceSim(
                tmp_path / "ttyBIN", mode="binary", device="sim-uart-bin", rate_hz=20
            ),
        }
        for sim in sims.values():
            await stack.enter_async_context(sim)
        ports = tuple(
            SerialPortConfig(
                port=str(sim.link),
                device=device,
                mode=sim.mode,
                channels=dict(CHANNELS),
                reconnect_initial_s=0.05,
                reconnect_max_s=0.5,
                ack_timeout_s=3.0,
            )
            for device, sim in sims.items()
        )
        yield SerialTarget(
            SerialConfig(enabled=True, ports=ports),
            list(sims),
            {d: {"temperature": (-20.0, 60.0), "humidity": (0.0, 100.0)} for d in sims},
            [SerialCommandCheck(d, "ping", {}, ["pong"]) for d in sims]
            + [SerialCommandCheck("sim-uart-bin", "set-interval", {"seconds": 1}, ["interval_s"])],
            sims,
        )
