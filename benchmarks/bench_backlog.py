"""Backlog after a cloud outage: how fast the edge's durable buffer drains once the cloud is back,
compared with the rate at which it filled (PERFORMANCE.md goal: drains ≥ 10x faster).

Runs the suite as ``fieldgate up`` does (cloud in this process, the edge agent in its own
process with the embedded amqtt broker). Then:

1. **outage**: the cloud stops (its gRPC endpoint goes away; the edge keeps accepting);
2. **fill**: a publisher process sends N QoS 1 messages (1 event each) at a fixed rate across
   10 devices; every PUBACK means the event is on the edge's disk. Fill rate = events
   acknowledged / (last PUBACK - first publish);
3. **drain**: the cloud starts again; the edge's uplink reconnects (its backoff is capped at a
   few seconds) and sends the backlog. Drain rate = N / (the moment the last event is stored
   in the cloud's event store - the moment the cloud accepted connections again), so the
   reconnect delay counts against fieldgate.

Also checked: every acknowledged event stored exactly once. Usage:
``python benchmarks/bench_backlog.py [--events 30000] [--fill-rate 1000]``; bounded in count and
time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import Publisher, PublisherSpec, machine_line, table

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.store.events import EventQuery
from fieldgate.suite import Suite, SuiteOptions, free_port

DEVICES = 10


async def stored(cloud: CloudApp, prefix: str) -> int:
    total = 0
    for n in range(1, DEVICES + 1):
        page = await cloud.parts.event_store.list_device_events(
            EventQuery("default", f"{prefix}-{n:04d}", kind="measurement", page_size=1)
        )
        total += page.total
    return total


async def run(ns: argparse.Namespace) -> int:
    print(f"fieldgate backlog drain benchmark — {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fg-bench-backlog-") as tmp:
        opts = SuiteOptions(
            data_dir=Path(tmp) / "fg",
            grpc_port=free_port(),
            admin_password="bench-only-password",
            edge_process=True,
            log_level="WARNING",
        )
        async with Suite(opts) as suite:
            config = suite.cloud.config
            await suite.cloud.stop()
            print(
                f"cloud stopped; filling the edge buffer: {ns.events} events at {ns.fill_rate:.0f}/s",
                flush=True,
            )
            spec = PublisherSpec(
                port=suite.mqtt_port,
                messages=ns.events,
                batch=1,
                qos=1,
                rate_hz=ns.fill_rate / DEVICES,
                devices=DEVICES,
                run_id="backlog",
                device_prefix="backlog",
                timeout_s=ns.timeout,
            )
            pub = Publisher(spec)
            pub.go()
            result = await asyncio.to_thread(pub.result)
            if result.error:
                print(f"publisher: {result.error}")
                return 1
            fill_s = result.last_ack - result.first_publish
            fill_rate = result.events / fill_s
            print(f"filled: {result.events} events acknowledged in {fill_s:.1f} s", flush=True)

            suite.cloud = CloudApp(config)
            await suite.cloud.start()
            t0 = time.monotonic()
            deadline = t0 + ns.timeout
            count = 0
            t_first: float | None = None
            while time.monotonic() < deadline:
                count = await stored(suite.cloud, "backlog")
                if count and t_first is None:
                    t_first = time.monotonic()
                if count >= result.events:
                    break
                await asyncio.sleep(0.05)
            drain_s = time.monotonic() - t0
            reconnect_s = (t_first or t0) - t0
            await asyncio.sleep(1.0)  # a late duplicate would show now
            final = await stored(suite.cloud, "backlog")
    if count < result.events:
        print(f"NOT DRAINED: {count} of {result.events} stored within {ns.timeout:.0f} s")
        return 1
    drain_rate = result.events / drain_s
    pure_s = max(drain_s - reconnect_s, 1e-3)
    pure_rate = result.events / pure_s
    n = f"{result.events:,}"
    rows = [
        ["fill (devices → edge buffer, cloud down)", n, f"{fill_s:.1f}", f"{fill_rate:,.0f}"],
        ["drain, cloud back → all stored", n, f"{drain_s:.1f}", f"{drain_rate:,.0f}"],
        ["  of which: until the edge reconnected", "", f"{reconnect_s:.1f}", ""],
        ["  of which: first → last event stored", n, f"{pure_s:.1f}", f"{pure_rate:,.0f}"],
    ]
    print(table(["phase", "events", "seconds", "events/s"], rows))
    print(
        f"drain / fill = {drain_rate / fill_rate:.1f}x including the reconnect, "
        f"{pure_rate / fill_rate:.1f}x once connected (goal ≥ 10x); "
        f"stored {final} of {result.events} acknowledged ({final - result.events} extra)"
    )
    return 0 if final == result.events else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=30_000, help="events published during the outage")
    ap.add_argument("--fill-rate", type=float, default=1000.0, help="events per second while filling")
    ap.add_argument("--timeout", type=float, default=300.0, help="bound of each phase in seconds")
    ns = ap.parse_args(argv)
    if ns.events < DEVICES or ns.fill_rate <= 0:
        ap.error("--events must be at least 10 and --fill-rate positive")
    return asyncio.run(run(ns))


if __name__ == "__main__":
    sys.exit(main())
