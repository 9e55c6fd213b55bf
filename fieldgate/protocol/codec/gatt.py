"""Decoders for GATT characteristic values: pure functions from notified bytes to readings.

Standard characteristics follow the Bluetooth GATT Specification Supplement:

- Temperature 0x2A6E: sint16, 0.01 °C; 0x8000 means "value is not known" (no reading).
- Humidity 0x2A6F: uint16, 0.01 %; 0xFFFF means "value is not known"; above 100 % is invalid.
- Battery Level 0x2A19: uint8, 0..100 %.
- Heart Rate Measurement 0x2A37: flags (bit 0 = uint16 heart rate, bits 1-2 = sensor contact
  status, bit 3 = energy expended present, bit 4 = RR intervals present), heart rate in bpm,
  energy expended uint16 kJ, RR intervals uint16 in 1/1024 s.

A custom characteristic is described in configuration by a struct-like field layout
(:class:`FieldSpec`: name, type ``u8|i8|u16|i16|u32|i32|f32``, scale, offset, unit), decoded by
:class:`StructDecoder` with :mod:`struct` — no eval. Every decoder checks the length exactly and
raises :class:`DecodeError` with the reason, so a malformed notification is counted and the
device keeps working. The adapter turns readings into ``pb.Measurement`` values.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from fieldgate.protocol.errors import DecodeError

__all__ = [
    "STANDARD_DECODERS",
    "FieldSpec",
    "FieldType",
    "GattDecoder",
    "Reading",
    "StructDecoder",
    "decode_battery_level",
    "decode_heart_rate",
    "decode_humidity",
    "decode_temperature",
    "normalize_uuid",
    "standard_decoder",
]

SIG_BASE = "-0000-1000-8000-00805f9b34fb"


@dataclass(frozen=True, slots=True)
class Reading:
    """One decoded value: a measurement name, its value and its unit ("" if none)."""

    name: str
    value: float
    unit: str = ""


GattDecoder = Callable[[bytes], list[Reading]]


def normalize_uuid(uuid: str) -> str:
    """``"0x2A6E"``, ``"2a6e"`` or a 128-bit UUID → the lower-case 128-bit form BlueZ reports."""
    u = uuid.strip().lower()
    if u.startswith("0x"):
        u = u[2:]
    if len(u) == 4 and all(c in "0123456789abcdef" for c in u):
        return f"0000{u}{SIG_BASE}"
    if len(u) == 8 and all(c in "0123456789abcdef" for c in u):
        return f"{u}{SIG_BASE}"
    parts = u.split("-")
    if [len(p) for p in parts] != [8, 4, 4, 4, 12] or not all(
        c in "0123456789abcdef" for c in u.replace("-", "")
    ):
        raise ValueError(f"not a Bluetooth UUID: {uuid!r}")
    return u


def _expect_len(data: bytes, n: int, what: str) -> None:
    if len(data) != n:
        raise DecodeError(f"{what}: wrong length, expected {n} bytes, got {len(data)}")


def decode_temperature(data: bytes) -> list[Reading]:
    """0x2A6E Temperature."""
    _expect_len(data, 2, "temperature 0x2A6E")
    (raw,) = struct.unpack("<h", data)
    if raw == -0x8000:  # "value is not known"
        return []
    return [Reading("temperature", raw / 100, "°C")]


def decode_humidity(data: bytes) -> list[Reading]:
    """0x2A6F Humidity."""
    _expect_len(data, 2, "humidity 0x2A6F")
    (raw,) = struct.unpack("<H", data)
    if raw == 0xFFFF:  # "value is not known"
        return []
    if raw > 10_000:
        raise DecodeError(f"humidity 0x2A6F: {raw / 100} % is out of range")
    return [Reading("humidity", raw / 100, "%")]


def decode_battery_level(data: bytes) -> list[Reading]:
    """0x2A19 Battery Level."""
    _expect_len(data, 1, "battery level 0x2A19")
    if data[0] > 100:
        raise DecodeError(f"battery level 0x2A19: {data[0]} % is out of range")
    return [Reading("battery_level", float(data[0]), "%")]


# At most this many RR intervals are reported per notification (a 20-byte ATT payload holds 9).
MAX_RR_INTERVALS = 16


def decode_heart_rate(data: bytes) -> list[Reading]:
    """0x2A37 Heart Rate Measurement.

    Readings: ``heart_rate`` (bpm); ``sensor_contact`` (1/0) when the sensor supports contact
    detection; ``energy_expended`` (kJ) when present; ``rr_interval_<i>`` (s) for each RR
    interval, in order of arrival.
    """
    if not data:
        raise DecodeError("heart rate 0x2A37: wrong length, empty")
    flags = data[0]
    wide = bool(flags & 0x01)
    contact_supported = bool(flags & 0x04)
    has_energy = bool(flags & 0x08)
    has_rr = bool(flags & 0x10)
    fixed = 1 + (2 if wide else 1) + (2 if has_energy else 0)
    rest = len(data) - fixed
    if rest < 0 or rest % 2 or (rest and not has_rr) or (has_rr and rest == 0):
        raise DecodeError(
            f"heart rate 0x2A37: wrong length {len(data)} for flags 0x{flags:02x} "
            f"(expected {fixed}{' + 2n, n >= 1' if has_rr else ''})"
        )
    if rest // 2 > MAX_RR_INTERVALS:
        raise DecodeError(f"heart rate 0x2A37: more than {MAX_RR_INTERVALS} RR intervals")
    pos = 1
    if wide:
        (bpm,) = struct.unpack_from("<H", data, pos)
        pos += 2
    else:
        bpm = data[pos]
        pos += 1
    out = [Reading("heart_rate", float(bpm), "bpm")]
    if contact_supported:
        out.append(Reading("sensor_contact", 1.0 if flags & 0x02 else 0.0))
    if has_energy:
        (energy,) = struct.unpack_from("<H", data, pos)
        pos += 2
        out.append(Reading("energy_expended", float(energy), "kJ"))
    for i in range(rest // 2):
        (rr,) = struct.unpack_from("<H", data, pos)
        pos += 2
        out.append(Reading(f"rr_interval_{i}", rr / 1024, "s"))
    return out


STANDARD_DECODERS: dict[str, GattDecoder] = {
    normalize_uuid("2a6e"): decode_temperature,
    normalize_uuid("2a6f"): decode_humidity,
    normalize_uuid("2a19"): decode_battery_level,
    normalize_uuid("2a37"): decode_heart_rate,
}


def standard_decoder(uuid: str) -> GattDecoder:
    """The decoder of a standard characteristic; KeyError if fieldgate does not know it."""
    return STANDARD_DECODERS[normalize_uuid(uuid)]


FieldType = Literal["u8", "i8", "u16", "i16", "u32", "i32", "f32"]
_FORMATS: dict[str, str] = {"u8": "B", "i8": "b", "u16": "H", "i16": "h", "u32": "I", "i32": "i", "f32": "f"}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a custom characteristic: ``value = raw * scale + offset``."""

    name: str
    type: FieldType
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""


class StructDecoder:
    """Decodes a custom characteristic from a declarative field layout (no eval)."""

    def __init__(
        self, fields: Sequence[FieldSpec], *, byte_order: Literal["little", "big"] = "little"
    ) -> None:
        if not fields:
            raise ValueError("a custom layout needs at least one field")
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate field names in custom layout: {names}")
        for f in fields:
            if f.type not in _FORMATS:
                raise ValueError(f"field {f.name!r}: unknown type {f.type!r}")
        self.fields = tuple(fields)
        prefix = "<" if byte_order == "little" else ">"
        self._struct = struct.Struct(prefix + "".join(_FORMATS[f.type] for f in fields))

    @property
    def size(self) -> int:
        return self._struct.size

    def __call__(self, data: bytes) -> list[Reading]:
        if len(data) != self._struct.size:
            raise DecodeError(
                f"custom layout: wrong length, expected {self._struct.size} bytes, got {len(data)}"
            )
        out = []
        for spec, raw in zip(self.fields, self._struct.unpack(data), strict=True):
            value = raw * spec.scale + spec.offset
            if not math.isfinite(value):
                raise DecodeError(f"custom layout: field {spec.name!r} is not a finite number")
            out.append(Reading(spec.name, float(value), spec.unit))
        return out
