"""The ``modbus_target`` fixture: how the hil suite reaches Modbus RTU devices.

Without ``--hw-profile`` it starts :class:`fieldgate.sims.modbus.ModbusSlaveSim` (units 1 and 2
on one pty bus, the sim's register map and commands) and offers its fault controls. With a
profile, the ``modbus:`` section lists real devices (see hil/README.md)::

    modbus:
      - port: /dev/ttyUSB0
        baudrate: 9600
        unit: 1
        device: plc-1
        registers: [{name: temperature, type: input, address: 0, data_type: int16, scale: 0.1, unit: "°C"}]
        ranges: {temperature: [-40, 85]}          # optional plausibility bounds
        commands: [{name: set-setpoint, writes: [{register: setpoint, from_param: value}]}]
        command_check: {command: set-setpoint, params: {value: 21.5}, expect: {setpoint: 21.5}}

Faults that need a human or a relay (unplug, a silent unit, CRC errors, exception responses)
are skipped on hardware unless the sims are in use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from fieldgate.edge.adapters.modbus import ModbusConfig, build_modbus_adapter
from fieldgate.edge.adapters.modbus.adapter import ModbusAdapter
from fieldgate.sims.modbus import ModbusSlaveSim, command_map, register_map
from fieldgate.v1 import events_pb2 as pb

SIM_UNITS = (1, 2)
_BUS_KEYS = ("baudrate", "parity", "stopbits", "bytesize", "timeout_s", "retries")
_DEVICE_KEYS = ("device", "tenant", "unit", "poll_interval_s", "registers", "commands")


@dataclass
class CommandCheck:
    device: str
    command: str
    params: dict[str, Any]
    expect: dict[str, float]


@dataclass
class ModbusTarget:
    """How to reach the devices, and the fault controls available for them."""

    config: ModbusConfig
    devices: list[str]
    ranges: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    command_checks: list[CommandCheck] = field(default_factory=list)
    sim: ModbusSlaveSim | None = None

    def build_adapter(self) -> ModbusAdapter:
        return build_modbus_adapter(
            self.config, tenants={d.tenant for b in self.config.buses for d in b.devices}
        )

    def require_sim(self, what: str) -> ModbusSlaveSim:
        if self.sim is None:
            pytest.skip(f"{what} needs the simulator (or a human) on hardware")
        return self.sim

    def unplug(self) -> None:
        if self.sim is None:
            pytest.skip("unplug needs a relay/human on hardware")
        self.sim.unplug()

    def replug(self) -> None:
        if self.sim is not None:
            self.sim.replug()


class RecordingSink:
    """Stands in for the agent: keeps every event the adapter hands over."""

    def __init__(self) -> None:
        self.events: list[pb.Event] = []
        self.online: list[tuple[str, str]] = []

    async def accept(self, events: Sequence[pb.Event], *, source: str) -> None:
        self.events.extend(events)

    async def reject(self, payload: bytes, *, source: str, reason: str, tenant: str = "") -> None:
        raise AssertionError(f"rejected: {reason}")

    async def on_online(self, tenant: str, device: str) -> None:
        self.online.append((tenant, device))

    def of(self, device: str, kind: str) -> list[pb.Event]:
        return [e for e in self.events if e.device == device and e.WhichOneof("payload") == kind]


def _from_profile(entries: list[dict[str, Any]]) -> ModbusTarget:
    buses: dict[str, dict[str, Any]] = {}
    ranges: dict[str, dict[str, tuple[float, float]]] = {}
    checks: list[CommandCheck] = []
    for entry in entries:
        bus = buses.setdefault(entry["port"], {"port": entry["port"], "devices": []})
        bus.update({k: entry[k] for k in _BUS_KEYS if k in entry})
        bus["devices"].append({k: entry[k] for k in _DEVICE_KEYS if k in entry})
        ranges[entry["device"]] = {k: (float(v[0]), float(v[1])) for k, v in entry.get("ranges", {}).items()}
        if "command_check" in entry:
            c = entry["command_check"]
            checks.append(
                CommandCheck(entry["device"], c["command"], c.get("params", {}), c.get("expect", {}))
            )
    config = ModbusConfig.model_validate({"enabled": True, "buses": list(buses.values())})
    return ModbusTarget(config, [e["device"] for e in entries], ranges, checks, None)


@pytest.fixture
async def modbus_target(hw_profile: dict[str, Any] | None) -> AsyncIterator[ModbusTarget]:
    if hw_profile is not None:
        entries = hw_profile.get("modbus")
        if not entries:
            pytest.skip("no modbus section in the hardware profile")
        yield _from_profile(entries)
        return
    async with ModbusSlaveSim(units=SIM_UNITS, tick_s=0.05) as sim:
        devices: list[dict[str, Any]] = [
            {
                "device": f"sim-meter-{u}",
                "unit": u,
                "poll_interval_s": 0.1,
                "registers": register_map(),
                "commands": command_map(),
            }
            for u in SIM_UNITS
        ]
        config = ModbusConfig.model_validate(
            {
                "enabled": True,
                "buses": [{"port": str(sim.path), "timeout_s": 0.2, "retries": 1, "devices": devices}],
            }
        )
        yield ModbusTarget(
            config,
            [d["device"] for d in devices],
            {d["device"]: {"temperature": (-20.0, 60.0), "humidity": (0.0, 100.0)} for d in devices},
            [CommandCheck("sim-meter-1", "set-setpoint", {"value": 22.5}, {"setpoint": 22.5})],
            sim,
        )
