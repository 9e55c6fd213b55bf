#!/usr/bin/env python3
"""Events/s through a pty serial link: the serial adapter (alone, and inside an EdgeAgent with its
durable buffer) beside raw pyserial reads over the same kind of link, in both protocol modes,
unthrottled and paced like a 115200-baud UART (11,520 bytes/s, 8N1).

The simulated firmware (fieldgate.sims.serial) runs in its own process, so the CPU share printed
(user + system time of this process / wall time, from getrusage) is the receiving side's alone:
the adapter, the codecs, and for the "agent" rows the SQLite buffer with its fsyncs. The uplink
of the agent rows points at a closed port: events stay in the buffer (nothing is forwarded), so
the figure is ingest, not cloud throughput.

    .venv/bin/python benchmarks/bench_serial.py [--events 20000] [--paced-seconds 4] [--modes json binary]

The sim starts sending on SIGUSR1, once the reader has the port open (pyserial flushes the
input on open). Rates are events received / (last receive - start signal). Every run is bounded: it ends when
the sim's last event arrived or nothing came for 5 s. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import serial

from fieldgate.edge.adapters.serial import SerialConfig, SerialPortConfig, build_serial_adapter
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.sims.serial import CHANNELS
from fieldgate.suite import free_port
from fieldgate.v1 import events_pb2 as pb

IDLE_END_S = 5.0
BAUD = 115200


@dataclass
class Result:
    what: str
    events: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def sim_process(link: Path, mode: str, count: int, baud: int | None):
    cmd = [
        sys.executable, "-m", "fieldgate.sims.serial", "--link", str(link), "--mode", mode,
        "--rate", "0", "--count", str(count), "--duration", "600", "--start-on-sigusr1",
    ]  # fmt: skip
    if baud:
        cmd += ["--baud", str(baud)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not link.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the serial sim did not create its pty")
            time.sleep(0.02)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class CountingSink:
    def __init__(self, last_seq: int) -> None:
        self.last_seq = last_seq
        self.online = asyncio.Event()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    def saw(self, events: Sequence[pb.Event]) -> None:
        now = time.monotonic()
        if not self.count:
            self.first = now
        self.count += len(events)
        self.last = now
        for e in events:
            if e.HasField("measurement") and e.measurement.values.get("seq") == self.last_seq:
                self.done.set()

    async def accept(self, events: Sequence[pb.Event], *, source: str) -> None:
        self.saw(events)

    async def reject(self, payload: bytes, *, source: str, reason: str, tenant: str = "") -> None:
        pass

    async def on_online(self, tenant: str, device: str) -> None:
        self.online.set()


async def wait_done(sink: CountingSink) -> None:
    seen = -1
    while not sink.done.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IDLE_END_S):
                await sink.done.wait()
        if sink.count == seen:
            return  # idle: the sim is done or stuck
        seen = sink.count


async def run_adapter(link: Path, mode: str, count: int, baud: int | None, agent_dir: Path | None) -> Result:
    port = SerialPortConfig(port=str(link), device="bench-1", mode=mode, channels=dict(CHANNELS))
    adapter = build_serial_adapter(SerialConfig(enabled=True, ports=(port,)), tenants=["default"])
    sink = CountingSink(count)
    with sim_process(link, mode, count, baud) as proc:

        async def go() -> tuple[float, float]:
            for _ in range(1000):  # up to 20 s for the port to open
                if adapter.is_online("default", "bench-1"):
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            os.kill(proc.pid, signal.SIGUSR1)
            c0, t0 = cpu_s(), time.monotonic()
            await wait_done(sink)
            return c0, t0

        if agent_dir is None:
            await adapter.start(sink, sink.on_online)
            try:
                c0, t0 = await go()
            finally:
                await adapter.stop()
        else:
            config = EdgeConfig(
                edge_id="bench-serial",
                data_dir=agent_dir,
                mqtt=MqttConfig(enabled=False),
                uplink=UplinkConfig(target=f"127.0.0.1:{free_port()}", backoff_initial_s=5, backoff_max_s=5),
            )
            agent = EdgeAgent(config, adapters=[adapter])
            original = agent.accept

            async def accept(events: Sequence[pb.Event], *, source: str) -> None:
                await original(events, source=source)
                sink.saw(events)

            agent.accept = accept  # type: ignore[method-assign]
            async with agent:
                c0, t0 = await go()
        c1 = cpu_s()
    seconds = sink.last - t0
    return Result("", sink.count, seconds, (c1 - c0) / max(1e-9, seconds))


def run_raw(link: Path, mode: str, count: int, baud: int | None) -> Result:
    """Raw pyserial: blocking reads of 4096 bytes, counting delimiters — no decoding at all."""
    delimiter = b"\n" if mode == "json" else b"\x00"
    with sim_process(link, mode, count, baud) as proc:
        port = serial.Serial(str(link), baudrate=BAUD, timeout=0.2)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGUSR1)
        frames = 0
        last = 0.0
        c0, t0 = cpu_s(), time.monotonic()
        idle_since = t0
        try:
            while True:
                data = port.read(4096)
                now = time.monotonic()
                if not data:
                    if now - idle_since > IDLE_END_S or (
                        frames and frames >= count * 0.999 and now - idle_since > 0.5
                    ):
                        break
                    continue
                idle_since = now
                frames += data.count(delimiter)
                last = now
        finally:
            port.close()
        c1 = cpu_s()
    return Result("", frames, last - t0, (c1 - c0) / max(1e-9, last - t0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=20_000, help="events per unthrottled run")
    p.add_argument("--paced-seconds", type=float, default=4.0, help="length of each 115200-baud run")
    p.add_argument("--modes", nargs="+", choices=["json", "binary"], default=["json", "binary"])
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the agent rows' uplink has no cloud on purpose
    frame_bytes = {"json": 92, "binary": 21}  # typical measurement on the wire
    rows: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-serial-") as tmp:
        tmpdir = Path(tmp)
        for mode in ns.modes:
            for paced in (False, True):
                baud = BAUD if paced else None
                count = int(ns.paced_seconds * BAUD / 10 / frame_bytes[mode]) if paced else ns.events
                label = f"{mode:6} {'115200 baud' if paced else 'unthrottled':12}"
                for kind in ("raw pyserial", "adapter", "agent"):
                    link = tmpdir / f"tty-{mode}-{int(paced)}-{kind.replace(' ', '_')}"
                    if kind == "raw pyserial":
                        r = run_raw(link, mode, count, baud)
                    else:
                        agent_dir = tmpdir / f"agent-{link.name}" if kind == "agent" else None
                        r = asyncio.run(run_adapter(link, mode, count, baud, agent_dir))
                    r.what = f"{label} {kind:13}"
                    rows.append(r)
                    print(
                        f"{r.what} {r.rate:10,.0f} events/s  ({r.events} in {r.seconds:.2f} s)  "
                        f"CPU {r.cpu * 100:5.1f} %",
                        flush=True,
                    )
    print(f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; sim in its own process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
