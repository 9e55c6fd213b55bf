"""Framers of the serial protocol (docs/protocols/serial.md): bytes on a line → frames. No I/O.

Two framers, one per protocol mode, both in the pymodbus style: the owner keeps a receive
buffer, calls ``decode(buf)`` and drops the ``consumed`` bytes it returns; ``encode`` builds
what goes on the wire.

- :class:`LineFramer` (readable mode): newline-delimited lines, at most ``max_line`` bytes.
- :class:`BinaryFramer` (compact mode): ``COBS(body || CRC-16/CCITT-FALSE(body), big endian)``
  followed by 0x00, at most :data:`MAX_FRAME` decoded bytes (body + CRC).

``decode(buf) -> (consumed, frame | None)``:

- ``(0, None)``: no complete frame yet; read more and call again with the grown buffer;
- ``(n, None)`` with n > 0: ``n`` bytes carried nothing (an empty frame, the rest of an
  oversize frame being skipped): drop them and call again;
- ``(n, frame)``: one frame, ``n`` bytes long on the wire.

A bad frame raises :class:`FrameError` whose ``consumed`` (always > 0) says how many bytes to
drop and whose ``kind`` says what was wrong — the link-health error kind. Nothing else is ever
raised, whatever the input, and every error consumes at least one byte, so a reader always
makes progress and is back in step at the next delimiter.

The framers hold one bit of state: "skipping the rest of an oversize frame", so that a frame
longer than the limit is reported once and then discarded up to its delimiter without ever
buffering it.
"""

from __future__ import annotations

from fieldgate.protocol.codec.cobs import CobsError, cobs_decode, cobs_encode, crc16_ccitt_false
from fieldgate.protocol.errors import DecodeError

__all__ = [
    "MAX_FRAME",
    "MAX_LINE",
    "BinaryFramer",
    "FrameError",
    "LineFramer",
    "encode_frame",
]

# Decoded bytes of one binary frame (message body + 2 CRC bytes). Small MCUs use fixed buffers;
# the limit is what a firmware author may rely on.
MAX_FRAME = 512
# Worst case COBS overhead of MAX_FRAME bytes: one code byte per 254 bytes, plus one.
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 1
MAX_LINE = 4096

Buf = bytes | bytearray


class FrameError(DecodeError):
    """A bad frame on the line. ``kind`` is one of ``garbage``, ``truncated``, ``crc``,
    ``oversize``; ``consumed`` (> 0) bytes of the buffer belong to it."""

    def __init__(self, kind: str, reason: str, consumed: int) -> None:
        super().__init__(reason)
        self.kind = kind
        self.consumed = consumed


def encode_frame(body: bytes) -> bytes:
    """The wire bytes of one binary frame carrying ``body`` (1.. MAX_FRAME - 2 bytes)."""
    if not body or len(body) > MAX_FRAME - 2:
        raise ValueError(f"frame body must be 1..{MAX_FRAME - 2} bytes, not {len(body)}")
    crc = crc16_ccitt_false(body)
    return cobs_encode(body + crc.to_bytes(2, "big")) + b"\x00"


class BinaryFramer:
    """COBS + CRC-16 frames delimited by 0x00 (see the module docstring for the contract).

    Kinds of :class:`FrameError`: ``oversize`` (no delimiter within :data:`MAX_ENCODED`
    bytes; the rest up to the next 0x00 is skipped), ``garbage`` (fewer than 4 bytes between
    delimiters: too short to be a frame — line noise), ``truncated`` (the COBS structure says
    the frame goes on past its delimiter, or it decodes to fewer than 3 bytes: a frame that lost
    its tail), ``crc`` (a complete frame whose checksum does not match).
    """

    def __init__(self) -> None:
        self._skipping = False

    @staticmethod
    def encode(body: bytes) -> bytes:
        return encode_frame(body)

    def reset(self) -> None:
        """Forget a half-skipped oversize frame (after the port was reopened)."""
        self._skipping = False

    def decode(self, buf: Buf) -> tuple[int, bytes | None]:
        end = buf.find(b"\x00", 0, len(buf) if self._skipping else MAX_ENCODED + 1)
        if end < 0:
            if self._skipping:
                return len(buf), None
            if len(buf) > MAX_ENCODED:
                self._skipping = True
                # Only the bytes searched: a delimiter further on ends the skip at the next call.
                raise FrameError(
                    "oversize", f"no frame delimiter within {MAX_ENCODED} bytes", MAX_ENCODED + 1
                )
            return 0, None
        consumed = end + 1
        if self._skipping:
            self._skipping = False
            return consumed, None
        if end == 0:
            return consumed, None  # empty frame: a resync delimiter
        raw = bytes(buf[:end])
        if end < 4:
            raise FrameError("garbage", f"{end} stray byte(s) between delimiters", consumed)
        try:
            decoded = cobs_decode(raw)
        except CobsError as err:
            raise FrameError("truncated", f"frame cut short: {err.reason}", consumed) from None
        if len(decoded) < 3:
            raise FrameError("truncated", f"frame of {len(decoded)} bytes has no room for a CRC", consumed)
        if len(decoded) > MAX_FRAME:
            raise FrameError("oversize", f"frame of {len(decoded)} bytes (limit {MAX_FRAME})", consumed)
        body, crc = decoded[:-2], int.from_bytes(decoded[-2:], "big")
        expected = crc16_ccitt_false(body)
        if crc != expected:
            raise FrameError("crc", f"CRC 0x{crc:04X} does not match 0x{expected:04X}", consumed)
        return consumed, body


class LineFramer:
    """Newline-delimited lines of at most ``max_line`` bytes (``\\r\\n`` is accepted; blank
    lines are skipped). Lines are returned without their line ending, as bytes: UTF-8 and JSON
    are the next layer's business. Longer lines raise ``FrameError("oversize")`` once and
    are skipped up to their newline."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if max_line < 16:
            raise ValueError("max_line must be at least 16 bytes")
        self.max_line = max_line
        self._skipping = False

    @staticmethod
    def encode(line: bytes) -> bytes:
        if b"\n" in line:
            raise ValueError("a line must not contain a newline")
        return line + b"\n"

    def reset(self) -> None:
        self._skipping = False

    def decode(self, buf: Buf) -> tuple[int, bytes | None]:
        limit = len(buf) if self._skipping else self.max_line + 2
        end = buf.find(b"\n", 0, limit)
        if end < 0:
            if self._skipping:
                return len(buf), None
            if len(buf) >= limit:
                self._skipping = True
                raise FrameError("oversize", f"line longer than {self.max_line} bytes", limit)
            return 0, None
        consumed = end + 1
        if self._skipping:
            self._skipping = False
            return consumed, None
        line = bytes(buf[:end])
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line:
            raise FrameError("oversize", f"line of {len(line)} bytes (limit {self.max_line})", consumed)
        if not line.strip():
            return consumed, None
        return consumed, line
