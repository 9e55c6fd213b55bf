"""Modbus RTU polls per second through the adapter (inside a real EdgeAgent) and the agent's CPU
share, beside raw pymodbus client polls/s against the same simulator in the same run.

The slave simulator (:mod:`fieldgate.sims.modbus`, pymodbus's RTU server on a pty pair) runs in
its own process (``spawn``), so the CPU figures below are the measuring process only. A pty
has no baud-rate pacing: these are software ceilings (framing, pymodbus, the agent's buffer),
not line-rate figures — at 9600 baud a 4-register read and its answer take ~20 ms on a wire.

Phases, each bounded in count and time:
1. raw: ``AsyncModbusSerialClient`` reads in a loop (one request each);
2. adapter: an EdgeAgent with the Modbus adapter polls 2 units with a ~0 poll interval, events
   go into the agent's durable buffer (no cloud; they wait there), one poll = 4 requests
   (coils, discrete, holding, input blocks of the sim's register map).

Usage: ``.venv/bin/python benchmarks/bench_modbus.py [--seconds 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

SPAWN = mp.get_context("spawn")
MAX_RAW_REQUESTS = 200_000


def _sim_main(link_dir: str, ready: Connection) -> None:
    import signal

    from fieldgate.sims.modbus import ModbusSlaveSim

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with ModbusSlaveSim(units=(1, 2), link_dir=Path(link_dir), tick_s=0.1) as sim:
            ready.send(str(sim.path))
            await stop.wait()

    asyncio.run(serve())


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def raw_polls(path: str, seconds: float) -> tuple[int, float, float]:
    from pymodbus.client import AsyncModbusSerialClient
    from pymodbus.framer import FramerType

    client = AsyncModbusSerialClient(path, framer=FramerType.RTU, timeout=1.0, retries=0, reconnect_delay=0)
    if not await client.connect():
        raise SystemExit(f"cannot open {path}")
    n = 0
    cpu0, t0 = _cpu_s(), time.monotonic()
    deadline = t0 + seconds
    while time.monotonic() < deadline and n < MAX_RAW_REQUESTS:
        r = await client.read_input_registers(0, count=6, device_id=1 + n % 2)
        if r.isError():
            raise SystemExit(f"raw read failed: {r}")
        n += 1
    wall, cpu = time.monotonic() - t0, _cpu_s() - cpu0
    client.close()
    return n, wall, cpu


async def adapter_polls(path: str, seconds: float, workdir: Path) -> tuple[int, int, int, float, float]:
    from fieldgate.edge.adapters.modbus import ModbusConfig, build_modbus_adapter
    from fieldgate.edge.agent import EdgeAgent
    from fieldgate.edge.config import BufferConfig, EdgeConfig, MqttConfig, UplinkConfig
    from fieldgate.sims.modbus import register_map

    devices = [
        {"device": f"bench-{u}", "unit": u, "poll_interval_s": 0.0001, "registers": register_map()}
        for u in (1, 2)
    ]
    modbus = ModbusConfig.model_validate(
        {"enabled": True, "buses": [{"port": path, "timeout_s": 1.0, "retries": 0, "devices": devices}]}
    )
    config = EdgeConfig(
        data_dir=workdir,
        mqtt=MqttConfig(enabled=False),
        buffer=BufferConfig(synchronous="NORMAL"),
        uplink=UplinkConfig(target="127.0.0.1:1", backoff_initial_s=1.0, backoff_max_s=5.0),
    )
    adapter = build_modbus_adapter(modbus, tenants=config.tenants)
    async with EdgeAgent(config, adapters=[adapter]):
        for _ in range(500):  # both units online first (bounded wait)
            if adapter.is_online("default", "bench-1") and adapter.is_online("default", "bench-2"):
                break
            await asyncio.sleep(0.01)
        p0, r0, e0 = adapter.stats.polls, adapter.stats.requests, adapter.stats.measurements_accepted
        cpu0, t0 = _cpu_s(), time.monotonic()
        await asyncio.sleep(seconds)
        wall, cpu = time.monotonic() - t0, _cpu_s() - cpu0
        polls = adapter.stats.polls - p0
        requests = adapter.stats.requests - r0
        events = adapter.stats.measurements_accepted - e0
        errors = dict(adapter.stats.errors)
    if errors:
        print(f"  (adapter errors during the run: {errors})")
    return polls, requests, events, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each phase (max 60)")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 0.5), 60.0)
    with tempfile.TemporaryDirectory(prefix="fieldgate-bench-modbus-") as tmp:
        ours, theirs = SPAWN.Pipe()
        sim = SPAWN.Process(target=_sim_main, args=(tmp, theirs), daemon=True)
        sim.start()
        try:
            if not ours.poll(30):
                raise SystemExit("simulator did not start")
            path = ours.recv()
            n, wall, cpu = asyncio.run(raw_polls(path, seconds))
            polls, requests, events, awall, acpu = asyncio.run(
                adapter_polls(path, seconds, Path(tmp) / "edge")
            )
        finally:
            sim.terminate()
            sim.join(10)
    print(
        f"Modbus RTU over a pty pair, slave = pymodbus server in its own process, {seconds:.0f} s per phase"
    )
    print(f"{'':34}{'requests/s':>12}{'polls/s':>10}{'events/s':>10}{'CPU share':>11}")
    print(
        f"{'raw pymodbus client (1 req/poll)':34}{n / wall:>12.0f}{n / wall:>10.0f}{'-':>10}{cpu / wall:>10.0%}"
    )
    print(
        f"{'adapter in EdgeAgent (4 req/poll)':34}{requests / awall:>12.0f}{polls / awall:>10.0f}"
        f"{events / awall:>10.0f}{acpu / awall:>10.0%}"
    )
    print(
        "CPU share = CPU time of this process / wall time (one core = 100%); the adapter row includes "
        "the agent's buffer writes (SQLite, synchronous=NORMAL)."
    )


if __name__ == "__main__":
    main()
