"""Simulated serial, Modbus and BLE devices for ``fieldgate up --sims ...``, with the edge
configuration that points the agent at them.

Each kind starts its firmware sim (a pty pair for serial and Modbus, a private D-Bus with a
simulated BlueZ for BLE) and contributes a section of the edge agent's configuration; BLE also
contributes the environment the agent's process needs (``DBUS_SYSTEM_BUS_ADDRESS``), which is
only ever given to the edge agent, never to this process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fieldgate.cloud.errors import Conflict
from fieldgate.cloud.store.registry import Registry
from fieldgate.errors import ConfigError
from fieldgate.sims import ble_gatt
from fieldgate.sims.ble import CUSTOM_1, CUSTOM_LAYOUT, ENV_1, ENV_2, HR_1, BleSim
from fieldgate.sims.modbus import ModbusSlaveSim, command_map, register_map
from fieldgate.sims.serial import CHANNELS, SerialDeviceSim
from fieldgate.v1 import model_pb2 as model

KINDS = ("mqtt", "serial", "modbus", "ble")

# The simulated Modbus units' commands (fieldgate.sims.modbus.COMMAND_MAP) as a device type, so
# that they can be invoked through the REST API like any other command.
_MODBUS_TYPE = model.DeviceType(
    token="modbus-sim",
    name="Simulated Modbus RTU unit",
    commands=[
        model.DeviceCommand(
            name="set-setpoint",
            params=[model.CommandParam(name="value", type=model.PARAM_TYPE_FLOAT, required=True)],
        ),
        model.DeviceCommand(
            name="relay", params=[model.CommandParam(name="on", type=model.PARAM_TYPE_BOOL, required=True)]
        ),
        model.DeviceCommand(
            name="configure",
            params=[
                model.CommandParam(name="interval", type=model.PARAM_TYPE_INT, required=True),
                model.CommandParam(name="calibration", type=model.PARAM_TYPE_INT, required=True),
            ],
        ),
        model.DeviceCommand(name="blink"),
    ],
)


def parse_sims(spec: str) -> dict[str, int]:
    """``"3"`` → 3 MQTT devices; ``"mqtt:3,serial,modbus,ble"`` → those kinds (count 1 unless
    given). Raises ConfigError naming the bad part."""
    spec = spec.strip()
    if spec.isdigit():
        return {"mqtt": int(spec)}
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, _, count = part.partition(":")
        if kind not in KINDS:
            raise ConfigError(f"--sims: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        if count and not count.isdigit():
            raise ConfigError(f"--sims: {part!r}: the count must be a whole number")
        out[kind] = int(count) if count else 1
    if any(n > 1 for k, n in out.items() if k != "mqtt"):
        raise ConfigError("--sims: serial, modbus and ble take no count (one sim each)")
    return out


def _ble_devices() -> list[dict[str, Any]]:
    env = [{"uuid": "2a6e"}, {"uuid": "2a6f"}, {"uuid": "2a19"}]
    return [
        {"device": "sim-ble-env-1", "address": ENV_1, "characteristics": env},
        {"device": "sim-ble-env-2", "address": ENV_2, "characteristics": env},
        {"device": "sim-ble-hr-1", "address": HR_1, "characteristics": [{"uuid": "2a37"}]},
        {
            "device": "sim-ble-custom-1",
            "address": CUSTOM_1,
            "characteristics": [{"uuid": ble_gatt.CUSTOM_DATA, "decoder": {"fields": CUSTOM_LAYOUT}}],
            "command": {"uuid": ble_gatt.CUSTOM_COMMAND, "response_uuid": ble_gatt.CUSTOM_RESPONSE},
        },
    ]


class SouthboundSims:
    """The serial/Modbus/BLE sims of one ``fieldgate up``. ``start`` before the edge agent."""

    def __init__(self, kinds: Sequence[str], workdir: Path, *, rate_hz: float = 0.2) -> None:
        self.kinds = tuple(k for k in kinds if k != "mqtt")
        self.workdir = workdir
        self.rate_hz = rate_hz
        self.serial: SerialDeviceSim | None = None
        self.modbus: ModbusSlaveSim | None = None
        self.ble: BleSim | None = None

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if "serial" in self.kinds:
                self.serial = SerialDeviceSim(
                    self.workdir / "ttySIM0", mode="binary", device="sim-serial-1", rate_hz=self.rate_hz
                )
                await self.serial.start()
            if "modbus" in self.kinds:
                self.modbus = ModbusSlaveSim(units=(1, 2), link_dir=self.workdir)
                await self.modbus.start()
            if "ble" in self.kinds:
                self.ble = BleSim(rate_hz=self.rate_hz)
                await self.ble.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for sim in (self.ble, self.modbus, self.serial):
            if sim is not None:
                await sim.stop()
        self.serial = self.modbus = self.ble = None

    async def register(self, registry: Registry, tenant: str = "default") -> None:
        """Register the Modbus units with a device type that has their commands."""
        if self.modbus is None:
            return
        if await registry.get_device_type(tenant, _MODBUS_TYPE.token) is None:
            await registry.create_device_type(tenant, _MODBUS_TYPE)
        for unit in self.modbus.units:
            device = model.Device(token=f"sim-modbus-{unit}", tenant=tenant, device_type=_MODBUS_TYPE.token)
            try:
                await registry.create_device(device)
            except Conflict:
                pass  # registered by an earlier run

    def edge_sections(self) -> dict[str, Any]:
        """``serial``/``modbus``/``ble`` sections for the edge agent's configuration."""
        out: dict[str, Any] = {}
        if self.serial is not None:
            out["serial"] = {
                "enabled": True,
                "ports": [
                    {
                        "port": str(self.workdir / "ttySIM0"),
                        "device": "sim-serial-1",
                        "mode": "binary",
                        "channels": dict(CHANNELS),
                    }
                ],
            }
        if self.modbus is not None:
            out["modbus"] = {
                "enabled": True,
                "buses": [
                    {
                        "port": str(self.modbus.path),
                        "baudrate": 19200,
                        "devices": [
                            {
                                "device": f"sim-modbus-{unit}",
                                "unit": unit,
                                "poll_interval_s": 5.0,
                                "registers": register_map(),
                                "commands": command_map(),
                            }
                            for unit in self.modbus.units
                        ],
                    }
                ],
            }
        if self.ble is not None:
            out["ble"] = {"enabled": True, "scan_interval_s": 2.0, "devices": _ble_devices()}
        return out

    def edge_env(self) -> dict[str, str]:
        """Environment for the edge agent's process only."""
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.ble.address} if self.ble is not None else {}

    def describe(self) -> list[str]:
        lines = []
        if self.serial is not None:
            lines.append(f"serial sim-serial-1 (binary frames) on {self.workdir / 'ttySIM0'}")
        if self.modbus is not None:
            lines.append(
                f"Modbus RTU units {', '.join(map(str, self.modbus.units))} (sim-modbus-N) on {self.modbus.path}"
            )
        if self.ble is not None:
            lines.append("BLE sim-ble-env-1, -env-2, -hr-1, -custom-1 on a simulated BlueZ")
        return lines
