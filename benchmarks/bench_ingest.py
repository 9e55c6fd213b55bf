#!/usr/bin/env python3
"""Edge ingest benchmark: MQTT publish → edge agent → cloud → stored, beside bare MQTT pub→sub.

For each scenario (one event per QoS 1 message; ``--batch-size`` events per message) it measures,
in the same run and with the same publisher code (:class:`fieldgate.sims.mqtt.MqttDeviceSim`
in its own process, as fast as its in-flight window of 1000 allows):

1. **baseline** — bare MQTT pub→sub through the same broker software with the same payloads:
   a paho subscriber process counting messages (benchlib.measure_pubsub);
2. **fieldgate** — the whole suite (fieldgate.suite.Suite: cloud + edge agent, embedded amqtt
   broker or ``--broker mosquitto`` with the edge's external adapter) ingesting the same load.
   Every event carries an id ``<run>-<n>``; the load process records the time it handed each
   message to paho, and this process reads the cloud's ``[persisted]`` bus stage with its own
   consumer group and records when each event shows up there. Latency per event = seen on
   [persisted] - handed to paho (both CLOCK_MONOTONIC, one clock for the machine). Throughput =
   events persisted / (last one seen - first publish).

Devices are registered by a short warm-up run first (auto-registration is not what is measured).
Every phase is bounded in count and time. Prints a table; docs/benchmarks.md explains it.

    make bench                       # = .venv/bin/python benchmarks/bench_ingest.py
    .venv/bin/python benchmarks/bench_ingest.py --broker mosquitto
    .venv/bin/python benchmarks/bench_ingest.py --messages 5000 --batch-messages 200   # quick
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from benchlib import (
    BrokerKind,
    Publisher,
    PublisherResult,
    PublisherSpec,
    RssSampler,
    broker_process,
    machine_line,
    measure_pubsub,
    percentile,
    proc_status_kb,
    table,
)

# Goals from PERFORMANCE.md, printed beside the figures.
GOAL_RATIO = {"amqtt": 1.0, "mosquitto": 0.8}
GOAL_BATCHED_EVENTS_S = 50_000


@dataclass(frozen=True)
class Scenario:
    name: str
    batch: int
    messages: int

    @property
    def events(self) -> int:
        return self.batch * self.messages


@dataclass
class IngestResult:
    events: int
    acked: int  # events whose message the broker acknowledged to the publisher
    persisted: int
    duplicates: int
    seconds: float
    p50_ms: float
    p99_ms: float
    rss_idle_mb: float
    rss_peak_mb: float
    publisher_error: str | None

    @property
    def events_per_s(self) -> float:
        return self.persisted / self.seconds if self.seconds > 0 else 0.0


async def run_fieldgate(
    scenario: Scenario, broker: BrokerKind, port: int | None, ns: argparse.Namespace
) -> IngestResult:
    """One scenario through a fresh suite (fresh data directory)."""
    from fieldgate.suite import Suite, SuiteOptions
    from fieldgate.v1 import events_pb2 as pb

    spec = PublisherSpec(
        port=0,
        messages=scenario.messages,
        batch=scenario.batch,
        qos=1,
        devices=ns.devices,
        connections=ns.connections,
        run_id="run",
        record_times=True,
        timeout_s=ns.timeout,
    )
    with tempfile.TemporaryDirectory(prefix="fieldgate-bench-") as tmp:
        options = SuiteOptions(
            data_dir=Path(tmp),
            mqtt_mode="external" if broker == "mosquitto" else "embedded",
            mqtt_port=port or 0,
            admin_password="bench-only-password",
        )
        async with Suite(options) as suite:
            spec = dataclasses.replace(spec, port=suite.mqtt_port)
            bus = suite.cloud.bus
            async with bus.consumer("bench", "persisted") as consumer:
                seen = array.array("d", [math.nan]) * scenario.events
                counters = {"run": 0, "warmup": 0, "dup": 0}
                pattern = re.compile(r"^(run|warmup)-(\d+)$")

                async def drain(until: int, what: str, deadline: float) -> None:
                    """Read [persisted] until ``until`` events of ``what`` were seen or the deadline."""
                    idle_since = time.monotonic()
                    while counters[what] < until and time.monotonic() < deadline:
                        records = await consumer.poll(max_records=5000, timeout_s=0.5)
                        now = time.monotonic()
                        if not records:
                            if time.monotonic() - idle_since > ns.idle:
                                return
                            continue
                        idle_since = now
                        for record in records:
                            for event in pb.EventBatch.FromString(record.value).events:
                                m = pattern.match(event.alternate_id)
                                if m is None:
                                    continue
                                kind, n = m.group(1), int(m.group(2))
                                if kind == "warmup":
                                    counters["warmup"] += 1
                                elif math.isnan(seen[n - 1]):
                                    seen[n - 1] = now
                                    counters["run"] += 1
                                else:
                                    counters["dup"] += 1

                # Warm-up: one message per device registers the devices (auto-registration).
                warm = Publisher(
                    dataclasses.replace(
                        spec, messages=ns.devices, batch=1, run_id="warmup", record_times=False
                    )
                )
                load = Publisher(spec)  # spawned now: its imports overlap the warm-up
                warm.go()
                warm_result = await asyncio.to_thread(warm.result)
                if warm_result.error:
                    raise SystemExit(f"warm-up failed: {warm_result.error}")
                await drain(ns.devices, "warmup", time.monotonic() + 60)
                if counters["warmup"] < ns.devices:
                    load.close()
                    raise SystemExit(
                        f"warm-up: only {counters['warmup']}/{ns.devices} events reached [persisted] in 60 s"
                    )
                rss_idle = proc_status_kb(os.getpid(), "VmRSS") / 1024

                with RssSampler(os.getpid()) as rss:
                    load.go()
                    publishing = asyncio.ensure_future(asyncio.to_thread(load.result))
                    await drain(scenario.events, "run", time.monotonic() + ns.timeout)
                    published: PublisherResult = await publishing

    observed = [
        (seen[i], published.publish_times[i]) for i in range(min(len(seen), len(published.publish_times)))
    ]
    latencies = sorted((s - p) * 1000 for s, p in observed if not math.isnan(s))
    last_seen = max((s for s, _ in observed if not math.isnan(s)), default=math.nan)
    return IngestResult(
        events=scenario.events,
        acked=published.events,
        persisted=counters["run"],
        duplicates=counters["dup"],
        seconds=last_seen - published.first_publish if latencies else 0.0,
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        rss_idle_mb=rss_idle,
        rss_peak_mb=rss.peak_mb,
        publisher_error=published.error,
    )


@contextlib.contextmanager
def maybe_broker(kind: BrokerKind, needed: bool) -> Iterator[int | None]:
    if not needed:
        yield None
        return
    with broker_process(kind) as broker:
        yield broker.port


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="events/s and latency MQTT → stored in the cloud, beside bare MQTT"
    )
    p.add_argument(
        "--broker",
        choices=["amqtt", "mosquitto"],
        default="amqtt",
        help="amqtt: the edge's embedded broker (default); mosquitto: /usr/sbin/mosquitto, external adapter",
    )
    p.add_argument("--messages", type=int, default=20_000, help="messages in the single-event scenario")
    p.add_argument("--batch-size", type=int, default=100, help="events per message in the batched scenario")
    p.add_argument("--batch-messages", type=int, default=2_000, help="messages in the batched scenario")
    p.add_argument("--scenario", choices=["single", "batched", "both"], default="both")
    p.add_argument("--devices", type=int, default=10, help="simulated devices (topics) the load spreads over")
    p.add_argument("--connections", type=int, default=1, help="publisher MQTT connections")
    p.add_argument("--timeout", type=float, default=300.0, help="time bound of each measured phase, seconds")
    p.add_argument(
        "--idle", type=float, default=30.0, help="give up after this long without new stored events"
    )
    p.add_argument("--skip-baseline", action="store_true", help="measure fieldgate only")
    ns = p.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    broker = cast(BrokerKind, ns.broker)
    scenarios = []
    if ns.scenario in ("single", "both"):
        scenarios.append(Scenario("1 event/msg", 1, ns.messages))
    if ns.scenario in ("batched", "both"):
        scenarios.append(Scenario(f"{ns.batch_size} events/msg", ns.batch_size, ns.batch_messages))

    print(f"fieldgate ingest benchmark, broker {broker}, QoS 1 — {machine_line()}", flush=True)
    rows = []
    for sc in scenarios:
        # A fresh broker per scenario: nothing queued from one phase leaks into the next.
        # amqtt: the baseline runs on a bare amqtt process, the suite embeds its own amqtt.
        # mosquitto: the baseline and then the suite's edge use the same Mosquitto.
        baseline = math.nan
        with maybe_broker(broker, broker == "mosquitto" or not ns.skip_baseline) as port:
            if not ns.skip_baseline:
                with maybe_broker("amqtt", broker == "amqtt") as amqtt_port:
                    pubsub_port = amqtt_port if broker == "amqtt" else port
                    assert pubsub_port is not None
                    print(f"- {sc.name}: baseline, bare pub→sub through {broker} ...", flush=True)
                    b = measure_pubsub(
                        pubsub_port,
                        qos=1,
                        batch=sc.batch,
                        messages=sc.messages,
                        devices=ns.devices,
                        connections=ns.connections,
                    )
                    baseline = b.msg_per_s
                    print(f"  {baseline:,.0f} msg/s ({b.received}/{b.messages} received)", flush=True)
            print(f"- {sc.name}: fieldgate, {sc.events:,} events ...", flush=True)
            r = asyncio.run(run_fieldgate(sc, broker, port if broker == "mosquitto" else None, ns))
        msg_s = r.events_per_s / sc.batch
        ratio = msg_s / baseline if baseline > 0 else math.nan
        print(
            f"  {r.events_per_s:,.0f} events/s, {r.persisted}/{r.events} stored, p50 {r.p50_ms:.1f} ms, "
            f"p99 {r.p99_ms:.1f} ms" + (f"  [publisher: {r.publisher_error}]" if r.publisher_error else ""),
            flush=True,
        )
        rows.append(
            [
                sc.name,
                broker,
                f"{baseline:,.0f}",
                f"{r.events_per_s:,.0f}",
                f"{ratio:.2f}",
                f"{r.p50_ms:.1f}",
                f"{r.p99_ms:.1f}",
                f"{r.rss_idle_mb:.0f} / {r.rss_peak_mb:.0f}",
                str(max(0, r.acked - r.persisted)),
                str(r.duplicates),
            ]
        )
    print()
    print(
        table(
            [
                "scenario",
                "broker",
                "baseline msg/s",
                "fieldgate events/s",
                "ratio",
                "p50 ms",
                "p99 ms",
                "suite RSS MB idle/peak",
                "missing",
                "dup",
            ],
            rows,
        )
    )
    print(
        f"\nratio = fieldgate messages/s ÷ baseline messages/s (same payloads). Goals (PERFORMANCE.md): "
        f"ratio ≥ {GOAL_RATIO[broker]} for 1 event/msg on {broker}; ≥ {GOAL_BATCHED_EVENTS_S:,} events/s "
        "batched (embedded). RSS is the one suite process (cloud + edge agent + embedded broker)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
