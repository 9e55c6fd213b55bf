"""The ``ble_target`` fixture: which BLE devices the hil suite talks to, and how to hurt them.

Without ``--hw-profile`` (CI) it starts :class:`fieldgate.sims.ble.BleSim` (a private
dbus-daemon plus the simulated BlueZ), points ``DBUS_SYSTEM_BUS_ADDRESS`` at it for this test
only, and offers every fault. With a profile, the ``ble:`` entries name real peripherals reached
through the host's bluetoothd; faults that need a human (power loss, link loss) run only for
entries with ``faults: true`` — the test prints what to do and waits — and malformed
notifications cannot be provoked on hardware (those tests are skipped). Profile entry::

    ble:
      - address: "C0:FF:EE:00:00:01"      # or name: "my-sensor"
        device: env-1
        adapter: hci0                     # optional
        characteristics: [{uuid: "2a6e"}, {uuid: "2a6f"}]
        expect: {temperature: [-40, 85], humidity: [0, 100]}   # measurement → [min, max]
        units: {temperature: "°C"}                             # optional
        command: {uuid: "...", response_uuid: "..."}          # optional
        faults: false
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from fieldgate.edge.adapters.ble import BleConfig
from fieldgate.sims import ble_gatt as fw
from fieldgate.sims.ble import CUSTOM_LAYOUT, ENV_1, HR_1, BleSim
from fieldgate.sims.ble_dbus import DBUS_DAEMON

_ENTRY_KEYS = {
    "address",
    "name",
    "device",
    "adapter",
    "characteristics",
    "expect",
    "units",
    "command",
    "faults",
}


@dataclass
class BleHilDevice:
    device: str
    address: str | None
    name: str | None
    characteristics: list[dict[str, Any]]
    expect: dict[str, tuple[float, float]]
    units: dict[str, str] = field(default_factory=dict)
    command: dict[str, Any] | None = None
    faults: bool = False


@dataclass
class BleTarget:
    devices: list[BleHilDevice]
    sim: BleSim | None = None
    adapter: str | None = None

    @property
    def hardware(self) -> bool:
        return self.sim is None

    def config(self, **overrides: Any) -> BleConfig:
        doc: dict[str, Any] = {
            "enabled": True,
            "adapter": self.adapter,
            "scan_interval_s": 5.0 if self.hardware else 2.0,
            "backoff_initial_s": 0.5 if self.hardware else 0.1,
            "backoff_max_s": 10.0 if self.hardware else 1.0,
            "devices": [
                {
                    "device": d.device,
                    "address": d.address,
                    "name": d.name,
                    "characteristics": d.characteristics,
                    "command": d.command,
                }
                for d in self.devices
            ],
        }
        doc.update(overrides)
        return BleConfig.model_validate(doc)

    def with_command(self) -> BleHilDevice | None:
        return next((d for d in self.devices if d.command is not None), None)

    def can_fault(self, dev: BleHilDevice) -> bool:
        return self.sim is not None or dev.faults


def sim_devices() -> list[BleHilDevice]:
    return [
        BleHilDevice(
            "env-1",
            ENV_1,
            None,
            [{"uuid": "2a6e"}, {"uuid": "2a6f"}, {"uuid": "2a19"}],
            {"temperature": (20.0, 30.0), "humidity": (40.0, 65.0)},
            {"temperature": "°C", "humidity": "%"},
        ),
        BleHilDevice(
            "hr-1", HR_1, None, [{"uuid": "2a37"}], {"heart_rate": (60.0, 100.0)}, {"heart_rate": "bpm"}
        ),
        BleHilDevice(
            "custom-1",
            None,
            "fg-custom-1",
            [{"uuid": fw.CUSTOM_DATA, "decoder": {"fields": CUSTOM_LAYOUT}}],
            {"pressure": (101_325.0, 101_825.0), "co2": (400.0, 600.0)},
            {"pressure": "Pa", "co2": "ppm"},
            {"uuid": fw.CUSTOM_COMMAND, "response_uuid": fw.CUSTOM_RESPONSE},
        ),
    ]


def hardware_devices(entries: list[dict[str, Any]]) -> list[BleHilDevice]:
    out = []
    for i, e in enumerate(entries):
        unknown = set(e) - _ENTRY_KEYS
        if unknown or "device" not in e or not ({"address", "name"} & set(e)):
            raise pytest.UsageError(
                f"--hw-profile: ble[{i}]: needs device and address or name; unknown keys {sorted(unknown)}"
            )
        out.append(
            BleHilDevice(
                device=str(e["device"]),
                address=e.get("address"),
                name=e.get("name"),
                characteristics=list(e.get("characteristics", [])),
                expect={k: (float(v[0]), float(v[1])) for k, v in dict(e.get("expect", {})).items()},
                units=dict(e.get("units", {})),
                command=e.get("command"),
                faults=bool(e.get("faults", False)),
            )
        )
    return out


@pytest.fixture
async def ble_target(
    hw_profile: dict[str, Any] | None, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[BleTarget]:
    if hw_profile is not None:
        entries = hw_profile.get("ble")
        if not entries:
            pytest.skip("the hardware profile has no ble section")
        adapters = {e.get("adapter") for e in entries}
        if len(adapters) > 1:
            raise pytest.UsageError("--hw-profile: all ble entries must use the same adapter")
        yield BleTarget(hardware_devices(entries), adapter=adapters.pop())
        return
    if not os.access(DBUS_DAEMON, os.X_OK):
        pytest.skip(f"{DBUS_DAEMON} not installed (Debian package 'dbus')")
    sim = BleSim(rate_hz=20.0)
    await sim.start()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", sim.address)
    try:
        yield BleTarget(sim_devices(), sim=sim)
    finally:
        await sim.stop()
