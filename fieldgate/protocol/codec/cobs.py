"""COBS (Consistent Overhead Byte Stuffing) and CRC-16/CCITT-FALSE: the two primitives of the
compact binary serial protocol (docs/protocols/serial.md). Pure functions, no I/O.

COBS rewrites a byte string so that it contains no 0x00; a 0x00 on the wire can then only
mean "end of frame", and a receiver that joins mid-stream (or lost bytes to noise) is back in
step at the next 0x00. The cost is at most one byte per 254 bytes.

The CRC is the common CCITT-FALSE variant (poly 0x1021, init 0xFFFF, no reflection, no final
XOR; check value 0x29B1 for b"123456789") that most MCU SDKs ship; Python computes it in C
with :func:`binascii.crc_hqx`.
"""

from __future__ import annotations

import binascii

from fieldgate.protocol.errors import DecodeError

__all__ = ["CobsError", "cobs_decode", "cobs_encode", "crc16_ccitt_false"]


class CobsError(DecodeError):
    """Not valid COBS: a code byte points past the end of the frame, or a 0x00 inside it."""


def crc16_ccitt_false(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (0..0xFFFF)."""
    return binascii.crc_hqx(data, 0xFFFF)


def cobs_encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode ``data`` (without the trailing 0x00 delimiter).

    Split at each zero byte; every block is written as (length + 1) followed by its bytes; a
    block of 254 non-zero bytes gets code 0xFF and no implied zero.
    """
    out = bytearray()
    view = bytes(data)
    start = 0
    n = len(view)
    while True:
        zero = view.find(0, start, min(n, start + 254))
        if zero >= 0:
            out.append(zero - start + 1)
            out += view[start:zero]
            start = zero + 1
            continue
        end = min(n, start + 254)
        if end - start == 254:
            out.append(0xFF)
            out += view[start:end]
            start = end
            if start == n:
                # A standard encoder ends with an empty block here; decoders accept both forms.
                out.append(0x01)
                break
            continue
        out.append(end - start + 1)
        out += view[start:end]
        break
    return bytes(out)


def cobs_decode(encoded: bytes | bytearray | memoryview) -> bytes:
    """Decode one COBS frame (delimiter already removed). Raises :class:`CobsError`."""
    data = bytes(encoded)
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise CobsError("0x00 inside a COBS frame")
        end = i + code
        if end > n:
            raise CobsError(f"COBS block at offset {i} needs {code - 1} bytes, {n - i - 1} left")
        block = data[i + 1 : end]
        if 0 in block:
            raise CobsError("0x00 inside a COBS frame")
        out += block
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)
