"""The peripheral side of the BLE simulation: GATT services, characteristics and their values.

Plain data and value encoders, no D-Bus: :mod:`fieldgate.sims.ble_bluez` publishes these
objects on the bus the way bluetoothd would after discovering a real peripheral, and
:mod:`fieldgate.sims.ble` drives them (notification rate, faults). The encoders here are the
*firmware's* view of the Bluetooth GATT formats, written independently of the edge decoders in
:mod:`fieldgate.protocol.codec.gatt` so that a round trip through both checks one against the other.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field


def sig_uuid(short: int) -> str:
    """Full 128-bit form of a 16-bit Bluetooth SIG UUID, lower case as BlueZ reports it."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


ENVIRONMENTAL_SENSING = sig_uuid(0x181A)
TEMPERATURE = sig_uuid(0x2A6E)
HUMIDITY = sig_uuid(0x2A6F)
BATTERY_SERVICE = sig_uuid(0x180F)
BATTERY_LEVEL = sig_uuid(0x2A19)
HEART_RATE_SERVICE = sig_uuid(0x180D)
HEART_RATE_MEASUREMENT = sig_uuid(0x2A37)
BODY_SENSOR_LOCATION = sig_uuid(0x2A38)

# The custom "fieldgate sensor" service: one data characteristic laid out as CUSTOM_LAYOUT
# (little-endian), a writable command characteristic and a notifying response characteristic.
CUSTOM_SERVICE = "8d1f0001-4a3c-4f6e-9b2d-6c2a7f1e0b00"
CUSTOM_DATA = "8d1f0002-4a3c-4f6e-9b2d-6c2a7f1e0b00"
CUSTOM_COMMAND = "8d1f0003-4a3c-4f6e-9b2d-6c2a7f1e0b00"
CUSTOM_RESPONSE = "8d1f0004-4a3c-4f6e-9b2d-6c2a7f1e0b00"
# temperature i16 (0.01 °C), pressure u32 (Pa), co2 u16 (ppm), status u8.
CUSTOM_STRUCT = struct.Struct("<hIHB")


def encode_temperature(celsius: float) -> bytes:
    """0x2A6E: sint16, resolution 0.01 °C."""
    return struct.pack("<h", round(celsius * 100))


def encode_humidity(percent: float) -> bytes:
    """0x2A6F: uint16, resolution 0.01 %."""
    return struct.pack("<H", round(percent * 100))


def encode_battery(percent: int) -> bytes:
    """0x2A19: uint8, 0..100 %."""
    return bytes([percent])


def encode_heart_rate(
    bpm: int,
    *,
    energy_kj: int | None = None,
    rr_intervals_s: tuple[float, ...] = (),
    contact: bool | None = None,
    wide: bool = False,
) -> bytes:
    """0x2A37: flags, uint8 or uint16 bpm, optional energy expended and RR intervals (1/1024 s)."""
    flags = 0
    body = b""
    if wide or bpm > 0xFF:
        flags |= 0x01
        body += struct.pack("<H", bpm)
    else:
        body += bytes([bpm])
    if contact is not None:
        flags |= 0x04 | (0x02 if contact else 0)
    if energy_kj is not None:
        flags |= 0x08
        body += struct.pack("<H", energy_kj)
    if rr_intervals_s:
        flags |= 0x10
        body += b"".join(struct.pack("<H", round(rr * 1024)) for rr in rr_intervals_s)
    return bytes([flags]) + body


def encode_custom(temperature_c: float, pressure_pa: int, co2_ppm: int, status: int) -> bytes:
    return CUSTOM_STRUCT.pack(round(temperature_c * 100), pressure_pa, co2_ppm, status)


# Called with the bytes a central wrote; may return (response characteristic uuid, value) to notify.
WriteHandler = Callable[[bytes], tuple[str, bytes] | None]


@dataclass
class SimCharacteristic:
    uuid: str
    flags: tuple[str, ...]
    value: bytes = b""
    on_write: WriteHandler | None = None


@dataclass
class SimService:
    uuid: str
    characteristics: list[SimCharacteristic]


@dataclass
class SimPeripheral:
    """One simulated BLE peripheral (what bluetoothd would learn about it)."""

    address: str
    name: str
    services: list[SimService]
    # Produces the next notification values, {characteristic uuid: value}, at tick n.
    ticker: Callable[[int], dict[str, bytes]] = field(default=lambda n: {})
    rssi: int = -55
    # Every value written to a writable characteristic, in order (bounded by the caller).
    writes: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def service_uuids(self) -> list[str]:
        return [s.uuid for s in self.services]

    def characteristic(self, uuid: str) -> SimCharacteristic:
        for service in self.services:
            for char in service.characteristics:
                if char.uuid == uuid:
                    return char
        raise KeyError(uuid)


MAX_WRITES_KEPT = 10_000


def json_command_handler(peripheral: SimPeripheral, command_uuid: str, response_uuid: str) -> WriteHandler:
    """Firmware behaviour of the custom command characteristic.

    It accepts the fieldgate JSON command (``{"invocation", "command", "params"}``) and answers
    on the response characteristic with ``{"type": "command_response", "invocation", "response"}``. Anything else is
    recorded but not answered, like firmware that ignores garbage.
    """

    def handle(data: bytes) -> tuple[str, bytes] | None:
        if len(peripheral.writes) < MAX_WRITES_KEPT:
            peripheral.writes.append((command_uuid, bytes(data)))
        try:
            msg = json.loads(data)
        except ValueError:
            return None
        if not isinstance(msg, dict) or not isinstance(msg.get("invocation"), str):
            return None
        command = msg.get("command")
        response: dict[str, object] = {"ok": True, "command": command}
        if command == "ping":
            response["pong"] = True
        answer = {"type": "command_response", "invocation": msg["invocation"], "response": response}
        return response_uuid, json.dumps(answer, separators=(",", ":")).encode()

    return handle


def recording_handler(peripheral: SimPeripheral, uuid: str) -> WriteHandler:
    """A writable characteristic that only records what was written (no response)."""

    def handle(data: bytes) -> tuple[str, bytes] | None:
        if len(peripheral.writes) < MAX_WRITES_KEPT:
            peripheral.writes.append((uuid, bytes(data)))
        return None

    return handle
