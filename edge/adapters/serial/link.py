"""One open serial port as asyncio I/O: pyserial opens and configures it, the event loop
watches its file descriptor.

Why not a thread per port doing blocking ``Serial.read``? Because the loop can already wait on
a tty's descriptor (``loop.add_reader``), which costs no thread, no cross-thread hand-off per
chunk, and makes backpressure free: while the port's task awaits the sink it simply does not
read, the kernel's tty buffer fills and, with flow control, the device is held back. pyserial
does what it is good at — opening the device, termios (baud rate, raw mode, 8N1), exclusive
access — and the reads and writes are plain non-blocking ``os.read``/``os.write`` on the
descriptor pyserial opened. POSIX only (Linux gateways); Windows would need a thread backend
behind the same three calls.

An unplugged USB adapter or a closed pty shows up as a readable descriptor whose read fails
(EIO) or returns nothing: both raise :class:`LinkLost`.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import Any

import serial

from fieldgate.edge.errors import EdgeError

READ_CHUNK = 4096


class LinkError(EdgeError):
    """A port could not be opened (missing, busy, no permission)."""


class LinkLost(EdgeError):
    """An open port failed (device unplugged, I/O error)."""


class SerialLink:
    def __init__(self, port: Any, path: str) -> None:
        self._serial = port
        self._fd: int = port.fileno()
        self.path = path
        self.closed = False

    @classmethod
    def open(cls, path: str, baudrate: int) -> SerialLink:
        """Open and configure ``path`` (8N1, raw, no flow control, non-blocking)."""
        try:
            port = serial.Serial(path, baudrate=baudrate, timeout=0, write_timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as err:
            raise LinkError(f"{path}: {err}") from err
        return cls(port, path)

    def _read_now(self, ready: bool) -> bytes:
        """Read what is there. pyserial sets VMIN=VTIME=0, so an idle tty reads as b"" just
        like a dead one; b"" means "gone" only after the loop reported the descriptor ready."""
        try:
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return b""
        except InterruptedError:
            return b""
        except OSError as err:
            raise LinkLost(f"{self.path}: read failed: {os.strerror(err.errno or errno.EIO)}") from err
        if not data and ready:
            raise LinkLost(f"{self.path}: device disconnected (end of file)")
        return data

    async def read(self) -> bytes:
        """The bytes available now, waiting for the first one. Never returns empty; safe to
        cancel (e.g. by ``asyncio.timeout``): nothing is read before the wait is over."""
        if self.closed:
            raise LinkLost(f"{self.path}: closed")
        data = self._read_now(False)
        if data:
            return data
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self._fd, _wake, ready)
        try:
            while True:
                await ready
                data = self._read_now(True)
                if data:
                    return data
                ready = loop.create_future()  # woken, nothing to read (EAGAIN): wait again
                loop.add_reader(self._fd, _wake, ready)
        finally:
            if not self.closed:
                loop.remove_reader(self._fd)

    async def write(self, data: bytes) -> None:
        """Write all of ``data``, waiting while the tty's output buffer is full (bound it with
        ``asyncio.timeout``)."""
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        while view:
            if self.closed:
                raise LinkLost(f"{self.path}: closed")
            try:
                n = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self._fd, _wake, ready)
                try:
                    await ready
                finally:
                    if not self.closed:
                        loop.remove_writer(self._fd)
                continue
            except OSError as err:
                raise LinkLost(f"{self.path}: write failed: {os.strerror(err.errno or errno.EIO)}") from err
            view = view[n:]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            loop.remove_reader(self._fd)
            loop.remove_writer(self._fd)
        try:
            self._serial.close()
        except (serial.SerialException, OSError):
            pass  # the device is gone already; the descriptor is released either way


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
