"""Register maps ↔ values: pure functions, no I/O (tested with golden vectors).

- :func:`plan_reads` groups a device's configured registers into as few Modbus read requests
  as possible (contiguous addresses of one register type, at most 125 registers / 2000 bits
  per request, the protocol's limits).
- :func:`decode_block` turns the words (or bits) one read returned into named, scaled values.
- :func:`encode_value` is the way back for command writes: scaled value → raw words or a bit,
  range-checked for the data type.
- :func:`check_rtu_response` classifies a received RTU byte stream (complete? CRC right?) so the
  adapter can count CRC errors per device; pymodbus discards such frames silently.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from fieldgate.edge.adapters.modbus.config import BIT_TYPES, RegisterConfig, words_of
from fieldgate.edge.errors import EdgeError

MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000

_FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}


class RegisterValueError(EdgeError):
    """A value does not fit its register (out of range, not finite, wrong type)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers/bits of ``type`` from ``address``."""

    type: str
    address: int
    count: int
    members: tuple[RegisterConfig, ...]


def plan_reads(registers: Sequence[RegisterConfig]) -> list[ReadBlock]:
    """Group registers into read requests; overlapping or adjacent points share a request."""
    blocks: list[ReadBlock] = []
    by_type: dict[str, list[RegisterConfig]] = {}
    for reg in registers:
        by_type.setdefault(reg.type, []).append(reg)
    for kind in ("coil", "discrete", "holding", "input"):
        regs = sorted(by_type.get(kind, ()), key=lambda r: r.address)
        limit = MAX_READ_BITS if kind in BIT_TYPES else MAX_READ_REGISTERS
        start = end = -1
        members: list[RegisterConfig] = []
        for reg in regs:
            reg_end = reg.address + words_of(reg.data_type)
            if members and reg.address <= end and max(end, reg_end) - start <= limit:
                end = max(end, reg_end)
                members.append(reg)
                continue
            if members:
                blocks.append(ReadBlock(kind, start, end - start, tuple(members)))
            start, end, members = reg.address, reg_end, [reg]
        if members:
            blocks.append(ReadBlock(kind, start, end - start, tuple(members)))
    return blocks


def raw_from_words(data_type: str, word_order: str, words: Sequence[int]) -> int | float:
    """The unscaled number held in ``words`` (16-bit register values)."""
    fmt = _FORMATS[data_type]
    n = words_of(data_type)
    if len(words) != n:
        raise RegisterValueError(f"{data_type} needs {n} registers, got {len(words)}")
    if any(not 0 <= w <= 0xFFFF for w in words):
        raise RegisterValueError("register value outside 0..65535")
    ordered = list(words) if word_order == "big" or n == 1 else list(reversed(words))
    raw: int | float = struct.unpack(">" + fmt, struct.pack(f">{n}H", *ordered))[0]
    return raw


def words_from_raw(data_type: str, word_order: str, raw: int | float) -> list[int]:
    fmt = _FORMATS[data_type]
    n = words_of(data_type)
    try:
        packed = struct.pack(">" + fmt, raw)
    except struct.error as err:
        raise RegisterValueError(f"{raw!r} does not fit {data_type}") from err
    words = list(struct.unpack(f">{n}H", packed))
    return words if word_order == "big" or n == 1 else list(reversed(words))


def decode_point(reg: RegisterConfig, words: Sequence[int] | None = None, bit: bool | None = None) -> float:
    """The scaled value of one register: ``raw * scale + offset``; raises RegisterValueError."""
    if reg.data_type == "bool":
        if bit is None:
            raise RegisterValueError(f"{reg.name}: no bit")
        return 1.0 if bit else 0.0
    raw = raw_from_words(reg.data_type, reg.word_order, words or ())
    value = float(raw) * reg.scale + reg.offset
    if not math.isfinite(value):
        raise RegisterValueError(f"{reg.name}: not a finite number ({value})")
    return value


@dataclass(slots=True)
class Decoded:
    values: dict[str, float]
    # (register name, reason) of the points that could not be decoded.
    errors: list[tuple[str, str]]


def decode_block(block: ReadBlock, data: Sequence[int] | Sequence[bool]) -> Decoded:
    """Values of every member of ``block`` from the words/bits its read returned.

    One bad point (a NaN float, a short answer) does not spoil the others.
    """
    out = Decoded({}, [])
    for reg in block.members:
        i = reg.address - block.address
        n = words_of(reg.data_type)
        try:
            if i + n > len(data):
                raise RegisterValueError(f"answer too short ({len(data)} of {block.count})")
            if reg.data_type == "bool":
                out.values[reg.name] = decode_point(reg, bit=bool(data[i]))
            else:
                out.values[reg.name] = decode_point(reg, words=[int(w) for w in data[i : i + n]])
        except RegisterValueError as err:
            out.errors.append((reg.name, err.reason))
    return out


def encode_value(
    data_type: str, word_order: str, scale: float, offset: float, value: object
) -> list[int] | bool:
    """Scaled ``value`` → raw register words (or a coil's bit), for a command write."""
    if data_type == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise RegisterValueError(f"{value!r} is not a boolean")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RegisterValueError(f"{value!r} is not a number")
    if not math.isfinite(value):
        raise RegisterValueError(f"{value!r} is not finite")
    raw = (value - offset) / scale
    if data_type == "float32":
        return words_from_raw(data_type, word_order, raw)
    rounded = round(raw)
    if abs(rounded - raw) > 1e-6 * max(1.0, abs(raw)):
        raise RegisterValueError(f"{value!r} is not a multiple of the scale {scale}")
    return words_from_raw(data_type, word_order, int(rounded))


# --------------------------------------------------------------------------- RTU frames


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body).to_bytes(2, "little")


class FrameCheck(Enum):
    INCOMPLETE = "incomplete"
    OK = "ok"
    BAD_CRC = "bad_crc"
    UNKNOWN = "unknown"  # not a response function this adapter sends


def _response_size(data: bytes) -> int | None:
    """Length of the RTU response starting at ``data[0]``, or None if not known yet."""
    if len(data) < 2:
        return None
    fc = data[1]
    if fc & 0x80:
        return 5
    if fc in (1, 2, 3, 4):
        return None if len(data) < 3 else 3 + data[2] + 2
    if fc in (5, 6, 15, 16):
        return 8
    return -1


def check_rtu_response(data: bytes) -> FrameCheck:
    """Classify the response at the start of ``data`` (a master's receive buffer)."""
    size = _response_size(data)
    if size is None:
        return FrameCheck.INCOMPLETE
    if size < 0:
        return FrameCheck.UNKNOWN
    if len(data) < size:
        return FrameCheck.INCOMPLETE
    body, crc = data[: size - 2], data[size - 2 : size]
    return FrameCheck.OK if crc16(body).to_bytes(2, "little") == crc else FrameCheck.BAD_CRC
