#!/usr/bin/env python3
"""Edge ingest benchmark: MQTT publish → edge agent → cloud → stored, beside bare MQTT pub→sub.

For each flat-out scenario (one event per QoS 1 message; ``--batch-size`` events per message) it
measures, in the same run and with the same publisher code (:class:`fieldgate.sims.mqtt.MqttDeviceSim`
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

A third scenario paces one event per message at ``--paced-rate`` (below saturation), so its
latency shows the pipeline rather than queueing behind a full in-flight window; it has no
baseline (both sides would carry the offered rate).

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
import dataclasses
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import cast

from benchlib import (
    SPAWN,
    BrokerKind,
    IngestResult,
    Publisher,
    PublisherResult,
    PublisherSpec,
    RssSampler,
    Scenario,
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
        rate_hz=scenario.rate / ns.devices,
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
            edge_process=not (ns.edge_in_process or ns.threads or ns.profile),
            log_level="WARNING",
        )
        async with Suite(options) as suite:
            spec = dataclasses.replace(spec, port=suite.mqtt_port)
            bus = suite.cloud.parts.bus
            async with bus.consumer("bench", "persisted") as consumer:
                seen = array.array("d", [math.nan]) * scenario.events
                counters = {"run": 0, "warmup": 0, "dup": 0}

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
                                aid = event.alternate_id
                                if aid.startswith("run-"):
                                    n = int(aid[4:])
                                    if math.isnan(seen[n - 1]):
                                        seen[n - 1] = now
                                        counters["run"] += 1
                                    else:
                                        counters["dup"] += 1
                                elif aid.startswith("warmup-"):
                                    counters["warmup"] += 1

                # Warm-up: one message per device registers the devices (auto-registration).
                warm = Publisher(
                    dataclasses.replace(
                        spec, messages=ns.devices, batch=1, rate_hz=0.0, run_id="warmup", record_times=False
                    )
                )
                load = Publisher(spec)  # spawned now: its imports overlap the warm-up
                try:
                    warm.go()
                    warm_result = await asyncio.to_thread(warm.result)
                    if warm_result.error:
                        raise SystemExit(f"warm-up failed: {warm_result.error}")
                    await drain(ns.devices, "warmup", time.monotonic() + 60)
                    if counters["warmup"] < ns.devices:
                        raise SystemExit(
                            f"warm-up: only {counters['warmup']}/{ns.devices} events reached [persisted] in 60 s"
                        )
                    rss_idle = proc_status_kb(suite.edge_pid, "VmRSS") / 1024

                    progress = asyncio.ensure_future(_progress(suite)) if ns.threads or ns.profile else None
                    with RssSampler(suite.edge_pid) as rss:
                        load.go()
                        publishing = asyncio.ensure_future(asyncio.to_thread(load.result))
                        await drain(scenario.events, "run", time.monotonic() + ns.timeout)
                        published: PublisherResult = await publishing
                    if progress is not None:
                        progress.cancel()
                        print(await progress, flush=True)
                    if ns.profile or ns.threads:
                        print("  CPU seconds per thread of the suite process:", flush=True)
                        for name, cpu in sorted(_thread_cpu().items(), key=lambda kv: -kv[1])[:12]:
                            print(f"    {name:<32} {cpu:7.2f}", flush=True)
                finally:
                    warm.close(0)
                    load.close(0)

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


def run_baseline(sc: Scenario, port: int, broker: str, ns: argparse.Namespace) -> float:
    print(f"- {sc.name}: baseline, bare pub→sub through {broker} ...", flush=True)
    b = measure_pubsub(
        port, qos=1, batch=sc.batch, messages=sc.messages, devices=ns.devices, connections=ns.connections
    )
    print(f"  {b.msg_per_s:,.0f} msg/s ({b.received}/{b.messages} received)", flush=True)
    return b.msg_per_s


def _scenario_child(
    sc: Scenario, broker: BrokerKind, port: int | None, ns: argparse.Namespace, out: Connection
) -> None:
    """Child process: one scenario through its own suite, so its RSS is that scenario's alone."""
    _quiet_logging()
    try:
        if ns.profile:
            out.send(_profiled(ns.profile, sc, lambda: asyncio.run(run_fieldgate(sc, broker, port, ns))))
        else:
            out.send(asyncio.run(run_fieldgate(sc, broker, port, ns)))
    except SystemExit as err:
        out.send(str(err))
    except Exception as err:  # top of the child: report to the parent, which prints it
        out.send(f"{type(err).__name__}: {err}")
        raise
    finally:
        out.close()


async def _progress(suite: object) -> str:
    """``--threads``: events past each hop of the pipeline every 0.5 s (where a backlog grows)."""
    from typing import Any

    s: Any = suite
    stages = {type(st).__name__: st for st in s.cloud.runs}

    def sample() -> list[int]:
        edge = s.edge
        return [
            edge.buffer.stats.appended,
            edge.uplink.stats.events_sent,
            edge.uplink.stats.events_acked,
            s.cloud.ingest.stats.events_accepted,
            stages["InboundProcessing"].stats.enriched,
            stages["EventPersistence"].stats.stored,
            stages["EventPersistence"].stats.store_calls,
            stages["InboundProcessing"].stage.stats.polls,
            s.cloud.parts.bus.stats.write_transactions,
            edge.buffer.stats.commits,
        ]

    lines = [
        "   t s  buffered      sent     acked   [decoded] [enriched]    stored  st.calls in.polls"
        " bus.txns buf.txns   depth"
    ]
    start = time.monotonic()
    try:
        while True:
            await asyncio.sleep(0.5)
            row = sample()
            lines.append(
                f"{time.monotonic() - start:6.1f} "
                + " ".join(f"{v:9d}" for v in row[:6])
                + " ".join(f"{v:8d}" for v in row[6:])
                + f" {s.edge.buffer.depth:7d}"
            )
    except asyncio.CancelledError:
        return "\n".join(lines)


def _thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) per thread of this process, by thread name (Linux /proc)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            name = names.get(int(task.name)) or (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _profiled(target: str, sc: Scenario, run: Callable[[], IngestResult]) -> IngestResult:
    """``--profile``: cProfile the event-loop thread of the suite process (the stats go to
    ``<target>-<scenario>.prof``) and print the CPU time of every thread of the process."""
    import cProfile
    import pstats

    if target.endswith(".html") or target.endswith(".txt"):
        # pyinstrument (not a fieldgate dependency: pip install it for this): a sampling
        # profile of the loop thread, far less distorted by per-call overhead than cProfile.
        from pyinstrument import Profiler

        sampler = Profiler(interval=0.001, async_mode="disabled")
        sampler.start()
        try:
            return run()
        finally:
            sampler.stop()
            text = sampler.output_text(unicode=True, show_all=False)
            Path(target).write_text(sampler.output_html() if target.endswith(".html") else text)
            print(f"  profile: {target}", flush=True)

    profiler = cProfile.Profile()
    before = time.process_time()
    profiler.enable()
    try:
        return run()
    finally:
        profiler.disable()
        path = f"{target}-{sc.batch}x{sc.messages}.prof"
        profiler.dump_stats(path)
        print(f"  profile: {path}; process CPU {time.process_time() - before:.1f} s", flush=True)
        pstats.Stats(path).sort_stats("tottime").print_stats(25)


def run_scenario(sc: Scenario, broker: BrokerKind, port: int | None, ns: argparse.Namespace) -> IngestResult:
    print(f"- {sc.name}: fieldgate, {sc.events:,} events ...", flush=True)
    recv, send = SPAWN.Pipe(duplex=False)
    child = SPAWN.Process(target=_scenario_child, args=(sc, broker, port, ns, send), name="bench-suite")
    child.start()
    send.close()
    try:
        if not recv.poll(ns.timeout + 300):
            raise SystemExit("the suite process did not report in time")
        result: IngestResult | str = recv.recv()
    except EOFError as err:
        raise SystemExit(f"the suite process died (exit code {child.exitcode})") from err
    finally:
        child.join(30)
        if child.is_alive():
            child.terminate()
            child.join()
    if isinstance(result, str):
        raise SystemExit(f"{sc.name}: {result}")
    return result


def _quiet_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def measure_scenario(sc: Scenario, broker: BrokerKind, ns: argparse.Namespace) -> tuple[float, IngestResult]:
    """One baseline + fieldgate measurement, each on a fresh broker (nothing queued leaks over)."""
    baseline = math.nan
    # A paced load has no baseline to compare with: both sides carry the offered rate.
    skip_baseline = ns.skip_baseline or sc.rate > 0
    if broker == "mosquitto":
        # The baseline and then the suite's edge use the same Mosquitto.
        with broker_process("mosquitto") as mosquitto:
            if not skip_baseline:
                baseline = run_baseline(sc, mosquitto.port, broker, ns)
            r = run_scenario(sc, broker, mosquitto.port, ns)
    else:
        # The baseline runs on a bare amqtt process; the suite embeds its own amqtt.
        if not skip_baseline:
            with broker_process("amqtt") as amqtt:
                baseline = run_baseline(sc, amqtt.port, broker, ns)
        r = run_scenario(sc, broker, None, ns)
    print(
        f"  {r.events_per_s:,.0f} events/s, {r.persisted}/{r.events} stored, p50 {r.p50_ms:.1f} ms, "
        f"p99 {r.p99_ms:.1f} ms" + (f"  [publisher: {r.publisher_error}]" if r.publisher_error else ""),
        flush=True,
    )
    return baseline, r


def table_row(sc: Scenario, broker: str, baselines: list[float], results: list[IngestResult]) -> list[str]:
    """Medians over the repeats (ratio: median of the per-run ratios); RSS: highest; losses: summed."""
    ratios = [r.events_per_s / sc.batch / b for b, r in zip(baselines, results, strict=True) if b > 0]

    def med(values: list[float], fmt: str) -> str:
        values = [v for v in values if not math.isnan(v)]
        return format(statistics.median(values), fmt) if values else "-"

    return [
        sc.name,
        broker,
        med(baselines, ",.0f"),
        med([r.events_per_s for r in results], ",.0f"),
        med(ratios, ".2f"),
        med([r.p50_ms for r in results], ".1f"),
        med([r.p99_ms for r in results], ".1f"),
        f"{max(r.rss_idle_mb for r in results):.0f} / {max(r.rss_peak_mb for r in results):.0f}",
        str(sum(max(0, r.acked - r.persisted) for r in results)),
        str(sum(r.duplicates for r in results)),
    ]


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
    p.add_argument("--paced-rate", type=float, default=1000.0, help="messages/s of the paced scenario")
    p.add_argument("--paced-messages", type=int, default=10_000, help="messages in the paced scenario")
    p.add_argument(
        "--scenario",
        nargs="+",
        choices=["single", "batched", "paced"],
        default=["single", "batched", "paced"],
        help="single: 1 event/msg flat out; batched: --batch-size events/msg flat out; "
        "paced: 1 event/msg at --paced-rate (latency below saturation). Default: all three",
    )
    p.add_argument("--devices", type=int, default=10, help="simulated devices (topics) the load spreads over")
    p.add_argument("--connections", type=int, default=1, help="publisher MQTT connections")
    p.add_argument("--timeout", type=float, default=300.0, help="time bound of each measured phase, seconds")
    p.add_argument(
        "--idle", type=float, default=30.0, help="give up after this long without new stored events"
    )
    p.add_argument("--skip-baseline", action="store_true", help="measure fieldgate only")
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario; medians are printed")
    p.add_argument(
        "--edge-in-process",
        action="store_true",
        help="run the edge agent inside the suite's process (default: its own process, as `fieldgate up`; --threads and --profile imply this)",
    )
    p.add_argument(
        "--threads", action="store_true", help="print the CPU time of each thread of the suite process"
    )
    p.add_argument(
        "--profile",
        metavar="PREFIX",
        help="cProfile the suite process (slows it down): writes PREFIX-<scenario>.prof and prints "
        "the top functions and the CPU time of each of its threads",
    )
    ns = p.parse_args(argv)

    _quiet_logging()
    broker = cast(BrokerKind, ns.broker)
    scenarios = []
    if "single" in ns.scenario:
        scenarios.append(Scenario("1 event/msg", 1, ns.messages))
    if "batched" in ns.scenario:
        scenarios.append(Scenario(f"{ns.batch_size} events/msg", ns.batch_size, ns.batch_messages))
    if "paced" in ns.scenario:
        scenarios.append(Scenario(f"1 event/msg @ {ns.paced_rate:g}/s", 1, ns.paced_messages, ns.paced_rate))

    print(f"fieldgate ingest benchmark, broker {broker}, QoS 1 — {machine_line()}", flush=True)
    rows = []
    for sc in scenarios:
        baselines: list[float] = []
        results: list[IngestResult] = []
        for _ in range(ns.repeat):
            baseline, r = measure_scenario(sc, broker, ns)
            baselines.append(baseline)
            results.append(r)
        rows.append(table_row(sc, broker, baselines, results))
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
                "edge RSS MB idle/peak",
                "missing",
                "dup",
            ],
            rows,
        )
    )
    print(
        f"\nratio = fieldgate messages/s ÷ baseline messages/s (same payloads). Goals (PERFORMANCE.md): "
        f"ratio ≥ {GOAL_RATIO[broker]} for 1 event/msg on {broker}; ≥ {GOAL_BATCHED_EVENTS_S:,} events/s "
        "batched (embedded). RSS: the edge agent's process"
        + (" (with its embedded broker)" if broker == "amqtt" else "")
        + ("; with --edge-in-process it is the whole suite's process." if ns.edge_in_process else ".")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
