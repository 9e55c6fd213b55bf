"""A microcontroller on a serial line, simulated on a pseudo-terminal (docs/protocols/serial.md).

The sim owns the *master* side of a pty pair and publishes the *slave* side under a stable
path of your choice — a symlink, like ``/dev/serial/by-id/...`` on real hardware. The agent
opens that path with pyserial exactly as it would open a USB-serial adapter.

- **Plug / unplug**: ``unplug()`` removes the symlink and closes the pty (the agent's next read
  fails with EIO, reopening fails with ENOENT); ``plug()`` makes a new pty and points the
  symlink at it. ``start()`` plugs; ``stop()`` unplugs.
- **Both protocol modes**: ``mode="json"`` writes JSON lines, ``mode="binary"`` COBS frames
  with CRC-16 (HELLO after each plug; MEASUREMENT by channel: 0 seq, 1 temperature,
  2 humidity).
- **Measurements** at ``rate_hz`` (0 = as fast as the line takes them), each carrying a
  ``seq`` value counting up from 1 across the whole run, so a test can tell exactly which
  ones arrived. ``baud`` paces the bytes as a real UART would (10 bits per byte).
- **Commands**: ``ping`` → ``{"pong": true}`` (binary: ``pong=1``); ``set-interval
  {"seconds": n}`` → sends every n seconds; anything else is refused in the ack. The ack
  goes first, then the command_response. ``ack_commands`` / ``respond`` switch either off.
- **Faults**: ``inject("garbage" | "crc" | "truncated" | "oversize" | "decode")`` writes one bad
  frame (binary has all five; JSON lines have garbage, decode, oversize, truncated); ``silent``
  stops all output (a hung MCU).

Run standalone: ``python -m fieldgate.sims.serial --link /tmp/ttyFG0 --mode binary --rate 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import tty
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, Literal

import orjson

from fieldgate.protocol.codec.cobs import cobs_decode, cobs_encode, crc16_ccitt_false
from fieldgate.protocol.codec.serial_binary import (
    Ack,
    Command,
    CommandResponse,
    Hello,
    Measurement,
    encode_message,
    parse_message,
)
from fieldgate.protocol.codec.serial_frames import BinaryFramer, FrameError, LineFramer, encode_frame
from fieldgate.protocol.errors import DecodeError
from fieldgate.sims.device import Sensors, encode_command_response, handle_command, measurement
from fieldgate.sims.errors import SimConfigError, SimError
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms

Mode = Literal["json", "binary"]
Fault = Literal["garbage", "crc", "truncated", "oversize", "decode"]

# Channel ids of the simulated firmware's MEASUREMENT frames (configure the port with these).
CHANNELS: Mapping[int, str] = {0: "seq", 1: "temperature", 2: "humidity"}


class SerialDeviceSim:
    def __init__(
        self,
        link: Path | str,
        *,
        mode: Mode = "json",
        device: str = "serial-1",
        rate_hz: float = 10.0,
        baud: int | None = None,
        seed: int | None = None,
        count: int | None = None,
    ) -> None:
        if mode not in ("json", "binary"):
            raise SimConfigError(f"mode must be json or binary, not {mode!r}")
        if rate_hz < 0:
            raise SimConfigError("rate must be >= 0")
        self.link = Path(link)
        self.mode: Mode = mode
        self.device = device
        self.interval_s = 0.0 if rate_hz == 0 else 1.0 / rate_hz
        self.baud = baud
        self.count = count  # stop sending measurements after this many
        self.sending = True  # measurements on/off (commands are still answered)
        self.silent = False  # no output at all, commands ignored: a hung MCU
        self.ack_commands = True
        self.respond = True
        self.seq = 0  # last measurement seq written to the line
        self.lost = 0  # measurements generated while unplugged
        self.commands: list[tuple[str, dict[str, object]]] = []
        self.plugs = 0
        self._rng = random.Random(seed)
        self._sensors = Sensors.initial(self._rng)
        self._master: int | None = None
        self._slave: int | None = None
        self._rx = bytearray()
        self._lines = LineFramer()
        self._frames = BinaryFramer()
        self._write_lock = asyncio.Lock()
        self._resync = True
        self._sender: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pace_next = 0.0

    # ------------------------------------------------------------------ lifecycle

    @property
    def plugged(self) -> bool:
        return self._master is not None

    async def start(self) -> None:
        self.plug()
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name=f"serial sim {self.device}")

    async def stop(self) -> None:
        sender, self._sender = self._sender, None
        await cancel_and_wait(sender, *self._tasks)
        self.unplug()

    async def __aenter__(self) -> SerialDeviceSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def plug(self) -> None:
        """A new pty behind the same path (a replugged USB adapter gets a new device node)."""
        if self._master is not None:
            return
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing even before the agent configures the port
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.link.with_name(self.link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.link)
        asyncio.get_running_loop().add_reader(master, self._on_readable)
        self._rx.clear()
        self._lines.reset()
        self._frames.reset()
        self._resync = True
        self.plugs += 1
        if self.mode == "binary":
            self._spawn(self._write(encode_frame(encode_message(Hello(self.device)))))

    def unplug(self) -> None:
        """Remove the path and close the pty: the agent sees EIO, then ENOENT."""
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        master, slave = self._master, self._slave
        self._master = self._slave = None
        if master is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(master)
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_writer(master)
            os.close(master)
        if slave is not None:
            os.close(slave)

    # ------------------------------------------------------------------ output

    def measurement_bytes(self, seq: int) -> bytes:
        values = self._sensors.read(self._rng)
        if self.mode == "json":
            doc = measurement({"seq": seq, **values}, now_ms())
            return orjson.dumps(doc) + b"\n"
        msg = Measurement(((0, float(seq)), (1, values["temperature"]), (2, values["humidity"])))
        return encode_frame(encode_message(msg))

    async def send_measurement(self) -> int:
        """Write one measurement now; returns its seq (counted as lost while unplugged)."""
        self.seq += 1
        seq = self.seq
        if not self.plugged:
            self.lost += 1
            return seq
        await self._write(self.measurement_bytes(seq))
        return seq

    async def inject(self, fault: Fault) -> None:
        """Write one bad frame of the given kind (see the module docstring)."""
        await self._write(self.fault_bytes(fault))
        self._resync = True

    def fault_bytes(self, fault: Fault) -> bytes:
        rng = self._rng
        if self.mode == "json":
            if fault == "garbage":
                return b"\xff\xfe" + bytes(rng.randrange(128, 256) for _ in range(12)) + b"\n"
            if fault == "decode":
                return b'{"type":"measurement","values":{"temperature":"hot"}}\n'
            if fault == "oversize":
                return b'{"type":"measurement","pad":"' + b"x" * 8192 + b'"}\n'
            if fault == "truncated":
                return self.measurement_bytes(0)[:20] + b"\n"
            raise SimConfigError(f"fault {fault!r} does not exist in json mode")
        if fault == "garbage":
            return b"\x00" + bytes(rng.randrange(1, 256) for _ in range(2)) + b"\x00"
        if fault == "oversize":
            return bytes(rng.randrange(1, 256) for _ in range(800)) + b"\x00"
        body = encode_message(Measurement(((1, 20.0), (2, 50.0))))
        if fault == "decode":
            return encode_frame(bytes([0x7E]) + body[1:])  # unknown message type, good CRC
        crc = crc16_ccitt_false(body)
        if fault == "crc":
            return cobs_encode(body + (crc ^ 0x5A5A).to_bytes(2, "big")) + b"\x00"
        if fault == "truncated":
            encoded = cobs_encode(body + crc.to_bytes(2, "big"))
            for cut in range(len(encoded) - 1, 3, -1):
                try:
                    cobs_decode(encoded[:cut])
                except DecodeError:
                    return encoded[:cut] + b"\x00"
            return encoded[:4] + b"\x00"
        raise SimConfigError(f"unknown fault {fault!r}")

    async def _write(self, data: bytes) -> None:
        if self.silent:
            return
        async with self._write_lock:
            master = self._master
            if master is None:
                return
            if self._resync and self.mode == "binary":
                data = b"\x00" + data
            self._resync = False
            view = memoryview(data)
            loop = asyncio.get_running_loop()
            while view:
                if self._master != master:
                    return  # unplugged meanwhile
                try:
                    n = os.write(master, view)
                except BlockingIOError:
                    ready: asyncio.Future[None] = loop.create_future()
                    loop.add_writer(master, _wake, ready)
                    try:
                        await ready
                    finally:
                        if self._master == master:
                            loop.remove_writer(master)
                    continue
                except OSError:
                    return  # the pty went away
                view = view[n:]
            await self._pace(len(data))

    async def _pace(self, nbytes: int) -> None:
        """Hold the line as long as ``nbytes`` take at ``baud`` (8N1: 10 bits per byte)."""
        if not self.baud:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._pace_next = max(self._pace_next, now) + nbytes * 10 / self.baud
        if self._pace_next > now:
            await asyncio.sleep(self._pace_next - now)

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if self.count is not None and self.seq >= self.count:
                self.sending = False
            if self.sending and not self.silent:
                await self.send_measurement()
            if self.interval_s > 0:
                next_at = max(next_at + self.interval_s, loop.time() - self.interval_s)
                await asyncio.sleep(max(0.0, next_at - loop.time()))
            elif not self.sending or self.silent:
                await asyncio.sleep(0.01)
            else:
                await asyncio.sleep(0)

    # ------------------------------------------------------------------ commands

    def _on_readable(self) -> None:
        master = self._master
        if master is None:
            return
        try:
            data = os.read(master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        self._rx += data
        framer = self._lines if self.mode == "json" else self._frames
        while True:
            try:
                consumed, frame = framer.decode(self._rx)
            except FrameError as err:
                del self._rx[: err.consumed]
                continue
            if consumed == 0:
                return
            del self._rx[:consumed]
            if frame is not None and not self.silent:
                self._spawn(self._handle(frame))

    async def _handle(self, frame: bytes) -> None:
        if self.mode == "json":
            await self._handle_json(frame)
        else:
            await self._handle_binary(frame)

    async def _handle_json(self, line: bytes) -> None:
        try:
            doc = orjson.loads(line)
            reply = handle_command(line)
        except (orjson.JSONDecodeError, SimError):
            return  # nothing to answer to
        params = doc.get("params") if isinstance(doc, dict) else None
        self.commands.append((reply.command, params if isinstance(params, dict) else {}))
        unknown = reply.response.get("error") == "unknown command"
        if self.ack_commands:
            ack: dict[str, object] = {"type": "ack", "invocation": reply.invocation}
            if unknown:
                ack.update(ok=False, reason="unknown command")
            await self._write(orjson.dumps(ack) + b"\n")
        if self.respond and not unknown:
            if reply.interval_s is not None:
                self.interval_s = float(reply.interval_s)
            await self._write(encode_command_response(reply, now_ms()) + b"\n")

    async def _handle_binary(self, body: bytes) -> None:
        try:
            msg = parse_message(body)
        except DecodeError:
            return
        if not isinstance(msg, Command):
            return
        params = dict(msg.params)
        self.commands.append((msg.command, dict(params)))
        values: tuple[tuple[str, float], ...]
        if msg.command == "ping":
            values = (("pong", 1.0),)
        elif msg.command == "set-interval" and params.get("seconds", 0) >= 1:
            values = (("interval_s", params["seconds"]),)
        else:
            if self.ack_commands:
                await self._write(
                    encode_frame(encode_message(Ack(msg.tag, 1 if msg.command != "set-interval" else 2)))
                )
            return
        if self.ack_commands:
            await self._write(encode_frame(encode_message(Ack(msg.tag))))
        if self.respond:
            if msg.command == "set-interval":
                self.interval_s = params["seconds"]
            await self._write(encode_frame(encode_message(CommandResponse(msg.tag, values))))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# ---------------------------------------------------------------------- standalone


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--link", required=True, help="path of the symlink to the pty (the port)")
    parser.add_argument("--mode", choices=("json", "binary"), default="json")
    parser.add_argument("--device", default="serial-1")
    parser.add_argument("--rate", type=float, default=1.0, help="measurements per second, 0 = flat out")
    parser.add_argument("--baud", type=int, default=0, help="pace bytes like a UART at this baud rate")
    parser.add_argument("--count", type=int, default=0, help="stop after this many measurements")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    parser.add_argument(
        "--start-on-sigusr1",
        action="store_true",
        help="send nothing until SIGUSR1 (benchmarks: start once the reader has the port open)",
    )


async def run_from_args(args: argparse.Namespace) -> None:
    sim = SerialDeviceSim(
        args.link,
        mode=args.mode,
        device=args.device,
        rate_hz=args.rate,
        baud=args.baud or None,
        count=args.count or None,
    )
    if args.start_on_sigusr1:
        sim.sending = False
    async with sim:
        loop = asyncio.get_running_loop()
        if args.start_on_sigusr1:
            loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(sim, "sending", True))
        deadline = loop.time() + args.duration if args.duration else None
        while True:
            if args.count and sim.seq >= args.count:
                print(f"sent {sim.seq}", flush=True)
                await asyncio.sleep(3600 if deadline is None else max(0.0, deadline - loop.time()))
                return
            if deadline is not None and loop.time() >= deadline:
                return
            await asyncio.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_cli_arguments(parser)
    asyncio.run(run_from_args(parser.parse_args()))


if __name__ == "__main__":
    main()
