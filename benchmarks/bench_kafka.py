#!/usr/bin/env python3
"""Kafka pipeline benchmark: events/s ingest → persisted beside a bare Kafka produce → consume.

All servers are real and started by this script through ``fieldgate.devservers`` (jars from the mvn
cache, JVMs on 127.0.0.1 with small heaps), stopped by PID at the end. In one run it measures:

1. **baseline** — bare confluent-kafka: N serialized ``fieldgate.v1.EventBatch`` records of
   ``--events`` events each, keyed by device, produced to one topic and consumed by one consumer
   (already assigned) in the same process; time from the first produce to the last record read.
2. **pipeline** — the same records published to ``[decoded]`` with :class:`KafkaBus`; the real
   stages InboundProcessing, Registration and EventPersistence (SQLite registry, SQLite event
   store in a temp dir, or ``--store cassandra``) carry them to ``[persisted]``, which this
   script reads with its own consumer group, counting events by alternate id (0 missing and 0
   duplicates are checked). Devices are registered by a warm-up first (one event per device), so
   auto-registration and group joins are not what is measured.
3. **cassandra** — :meth:`CassandraEventStore.add` with 1000-event batches, events/s.
4. **inbound scaling** — InboundProcessing as 1 and then 2 processes (each its own KafkaBus and
   SQLite registry handle, consumer group ``inbound``), events/s from publishing to ``[decoded]``
   until every event is read back from ``[enriched]``.

Every phase is bounded in count and time. Figures only compare within one run.

    .venv/bin/python benchmarks/bench_kafka.py                    # from the repo root
    .venv/bin/python benchmarks/bench_kafka.py --records 200 --skip-cassandra
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.helpers

from benchlib import machine_line, table
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from fieldgate.cloud.bus import DECODED, ENRICHED, PERSISTED, UNREGISTERED, Message, topic_name
from fieldgate.cloud.bus.kafka import KafkaBus
from fieldgate.cloud.pipeline.inbound import InboundProcessing
from fieldgate.cloud.pipeline.persistence import EventPersistence
from fieldgate.cloud.pipeline.registration import Registration
from fieldgate.cloud.pipeline.stage import StageSettings
from fieldgate.cloud.store.sqlite.events import SqliteEventStore
from fieldgate.cloud.store.sqlite.invocations import SqliteInvocationStore
from fieldgate.cloud.store.sqlite.registry import SqliteRegistry
from fieldgate.devservers import CassandraServer, kafka_server, start_cassandra
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.cloud_pipeline import DEFAULT_TENANTS

TENANT = "default"
PHASE_WAIT_S = 180.0
SPAWN = multiprocessing.get_context("spawn")


def make_records(run: str, devices: int, records: int, events: int) -> list[Message]:
    """``records`` EventBatch records of ``events`` measurements, round-robin over devices."""
    out = []
    for r in range(records):
        device = f"bench-dev-{r % devices}"
        batch = pb.EventBatch(
            events=[
                pb.Event(
                    tenant=TENANT,
                    device=device,
                    alternate_id=f"{run}-{r}-{i}",
                    event_time_ms=now_ms(),
                    measurement=pb.Measurement(values={"temperature": float(i)}),
                )
                for i in range(events)
            ]
        )
        out.append(Message(key=device.encode(), value=batch.SerializeToString()))
    return out


def warmup_records(run: str, devices: int) -> list[Message]:
    return make_records(run, devices, devices, 1)


# --- 1. baseline ---------------------------------------------------------------------------


def bare_kafka(bootstrap: str, messages: Sequence[Message], events_per_record: int, partitions: int) -> float:
    """Bare produce → consume of ``messages``; returns events/s."""
    topic = f"bare-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        f.result(30)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bare-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    assigned = threading.Event()
    consumer.subscribe([topic], on_assign=lambda _c, _p: assigned.set())
    deadline = time.monotonic() + 60
    while not assigned.is_set():
        consumer.poll(0.1)
        if time.monotonic() > deadline:
            raise RuntimeError("bare consumer never got an assignment")
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    got = 0
    last = 0.0

    def consume() -> None:
        nonlocal got, last
        end = time.monotonic() + PHASE_WAIT_S
        while got < len(messages) and time.monotonic() < end:
            for m in consumer.consume(1000, 0.2):
                if m.error() is None:
                    got += 1
            last = time.monotonic()

    reader = threading.Thread(target=consume)
    t0 = time.monotonic()
    reader.start()
    for m in messages:
        while True:
            try:
                producer.produce(topic, m.value, m.key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)
    reader.join()
    consumer.close()
    if got < len(messages):
        raise RuntimeError(f"bare consume got {got}/{len(messages)}")
    return got * events_per_record / (last - t0)


# --- helpers for reading a stage ------------------------------------------------------------


async def read_stage(bus: KafkaBus, group: str, stage: str, expected: set[str], seen: Counter[str]) -> float:
    """Read ``stage`` until every alternate id in ``expected`` was seen; returns the time of the last."""
    async with bus.consumer(group, stage) as c:
        end = time.monotonic() + PHASE_WAIT_S
        missing = set(expected)
        while missing and time.monotonic() < end:
            records = await c.poll(1000, 0.2)
            for r in records:
                batch = pb.EventBatch.FromString(r.value)
                for e in batch.events:
                    seen[e.alternate_id] += 1
                    missing.discard(e.alternate_id)
            if records:
                await c.commit(records)  # the later duplicate check starts after these
            if missing:
                continue
            return time.monotonic()
    raise RuntimeError(f"{stage}: {len(missing)} events never arrived")


def ids_of(messages: Sequence[Message]) -> set[str]:
    return {e.alternate_id for m in messages for e in pb.EventBatch.FromString(m.value).events}


@dataclass
class PipelineResult:
    events_per_s: float
    missing: int
    duplicates: int


# --- 2. pipeline ----------------------------------------------------------------------------


async def through_pipeline(
    bus: KafkaBus, prefix: str, messages: Sequence[Message], devices: int
) -> PipelineResult:
    """Warm up (registers the devices), then publish ``messages`` to ``[decoded]`` and time them
    until every event was read back from ``[persisted]``; count missing and duplicate events."""
    decoded = topic_name(TENANT, DECODED, prefix)
    warm = warmup_records(f"warm-{prefix}", devices)
    seen: Counter[str] = Counter()
    await bus.publish(decoded, warm)
    await read_stage(bus, "bench-persisted", PERSISTED, ids_of(warm), seen)
    expected = ids_of(messages)
    seen.clear()
    reader = asyncio.create_task(read_stage(bus, "bench-persisted", PERSISTED, expected, seen))
    t0 = time.monotonic()
    await bus.publish(decoded, list(messages))
    t1 = await reader
    await asyncio.sleep(1.0)  # let a late duplicate show (not counted in the rate)
    async with bus.consumer("bench-persisted", PERSISTED) as c:
        for r in await c.poll(1000, 1.0):
            for e in pb.EventBatch.FromString(r.value).events:
                seen[e.alternate_id] += 1
    missing = len(expected - seen.keys())
    dups = sum(n - 1 for a, n in seen.items() if a in expected and n > 1)
    return PipelineResult(len(expected) / (t1 - t0), missing, dups)


async def pipeline(
    bootstrap: str, workdir: Path, messages: Sequence[Message], devices: int, partitions: int, store: object
) -> PipelineResult:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    settings = StageSettings(poll_timeout_s=0.2)
    async with KafkaBus(bootstrap, prefix=prefix, partitions=partitions, metadata_refresh_ms=1000) as bus:
        registry = SqliteRegistry(workdir / "registry")
        invocations = SqliteInvocationStore(workdir / "registry")
        inbound = InboundProcessing(bus, registry, invocations, settings=settings, topic_prefix=prefix)
        registration = Registration(bus, registry, DEFAULT_TENANTS, settings=settings, topic_prefix=prefix)
        persistence = EventPersistence(bus, store, settings=settings, topic_prefix=prefix)  # type: ignore[arg-type]
        started: list[object] = []
        try:
            for part in (registry, invocations, store, registration, inbound, persistence):
                await part.start()  # type: ignore[attr-defined]
                started.append(part)
            return await through_pipeline(bus, prefix, messages, devices)
        finally:
            for part in reversed(started):
                await part.stop()  # type: ignore[attr-defined]


# --- 3. cassandra ---------------------------------------------------------------------------


async def cassandra_rate(host: str, port: int, batches: int, per_batch: int) -> float:
    from fieldgate.cloud.store.cassandra.events import CassandraEventStore
    from fieldgate.cloud.store.cassandra.session import CassandraSession

    store = CassandraEventStore(CassandraSession(host, port))
    await store.start()
    try:
        await store.add(TENANT, make_events("cwarm", 10))  # creates the keyspace (not timed)
        payload = [make_events(f"c{b}", per_batch) for b in range(batches)]
        t0 = time.monotonic()
        stored = 0
        for evs in payload:
            stored += len(await store.add(TENANT, evs))
        dt = time.monotonic() - t0
    finally:
        await store.stop()
    if stored != batches * per_batch:
        raise RuntimeError(f"cassandra stored {stored}/{batches * per_batch}")
    return stored / dt


def make_events(run: str, count: int) -> list[pb.Event]:
    return [
        pb.Event(
            tenant=TENANT,
            device=f"bench-dev-{i % 20}",
            alternate_id=f"{run}-{i}",
            event_time_ms=now_ms(),
            measurement=pb.Measurement(values={"temperature": float(i)}),
        )
        for i in range(count)
    ]


# --- 4. inbound replicas --------------------------------------------------------------------


def _stage_main(
    kind: str, bootstrap: str, prefix: str, partitions: int, data_dir: str, stop: MpEvent
) -> None:
    """Child process: one pipeline stage (inbound, registration or persistence) until ``stop``."""

    async def body() -> None:
        settings = StageSettings(poll_timeout_s=0.2)
        async with KafkaBus(bootstrap, prefix=prefix, partitions=partitions, metadata_refresh_ms=1000) as bus:
            registry = SqliteRegistry(Path(data_dir) / "registry")
            parts: list[object] = [registry]
            if kind == "inbound":
                invocations = SqliteInvocationStore(Path(data_dir) / "registry")
                parts += [
                    invocations,
                    InboundProcessing(bus, registry, invocations, settings=settings, topic_prefix=prefix),
                ]
            elif kind == "registration":
                parts.append(
                    Registration(bus, registry, DEFAULT_TENANTS, settings=settings, topic_prefix=prefix)
                )
            else:
                store = SqliteEventStore(Path(data_dir) / "events")
                parts += [store, EventPersistence(bus, store, settings=settings, topic_prefix=prefix)]
            for part in parts:
                await part.start()  # type: ignore[attr-defined]
            try:
                await asyncio.to_thread(stop.wait)  # the parent sets it when the phase ends
            finally:
                for part in reversed(parts):
                    await part.stop()  # type: ignore[attr-defined]

    asyncio.run(body())


def _inbound_main(bootstrap: str, prefix: str, partitions: int, registry_dir: str, stop: MpEvent) -> None:
    _stage_main("inbound", bootstrap, prefix, partitions, str(Path(registry_dir).parent), stop)


async def pipeline_processes(
    bootstrap: str, workdir: Path, messages: Sequence[Message], devices: int, partitions: int
) -> PipelineResult:
    """Phase 2b: the same pipeline with each stage in its own process, as in distributed mode."""
    prefix = f"p{uuid.uuid4().hex[:8]}"
    stop = SPAWN.Event()
    async with KafkaBus(bootstrap, prefix=prefix, partitions=partitions, metadata_refresh_ms=1000) as bus:
        for stage in (DECODED, UNREGISTERED, ENRICHED, PERSISTED):
            await bus.ensure_topic(topic_name(TENANT, stage, prefix))
        procs = [
            SPAWN.Process(target=_stage_main, args=(kind, bootstrap, prefix, partitions, str(workdir), stop))
            for kind in ("inbound", "registration", "persistence")
        ]
        for proc in procs:
            proc.start()
        try:
            return await through_pipeline(bus, prefix, messages, devices)
        finally:
            stop.set()
            for proc in procs:
                proc.join(30)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(10)


async def inbound_replicas(
    bootstrap: str,
    registry_dir: Path,
    messages: Sequence[Message],
    devices: int,
    partitions: int,
    replicas: int,
) -> float:
    prefix = f"r{uuid.uuid4().hex[:8]}"
    stop = SPAWN.Event()
    procs = [
        SPAWN.Process(target=_inbound_main, args=(bootstrap, prefix, partitions, str(registry_dir), stop))
        for _ in range(replicas)
    ]
    for p in procs:
        p.start()
    try:
        async with KafkaBus(bootstrap, prefix=prefix, partitions=partitions, metadata_refresh_ms=1000) as bus:
            decoded = topic_name(TENANT, DECODED, prefix)
            await bus.ensure_topic(decoded)
            warm = warmup_records("rwarm", devices)
            seen: Counter[str] = Counter()
            await bus.publish(decoded, warm)
            await read_stage(bus, "bench-enriched", ENRICHED, ids_of(warm), seen)
            await asyncio.sleep(5.0)  # let the second member's join/rebalance settle
            seen.clear()
            reader = asyncio.create_task(read_stage(bus, "bench-enriched", ENRICHED, ids_of(messages), seen))
            t0 = time.monotonic()
            await bus.publish(decoded, list(messages))
            t1 = await reader
    finally:
        stop.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
                p.join(10)
    return len(ids_of(messages)) / (t1 - t0)


# --- main -----------------------------------------------------------------------------------


_STOPPED: set[int] = set()


def _stop_once(server: CassandraServer) -> None:
    if server.pid not in _STOPPED:
        _STOPPED.add(server.pid)
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=500, help="EventBatch records per phase")
    ap.add_argument("--events", type=int, default=100, help="events per record")
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--store", choices=["sqlite", "cassandra"], default="sqlite")
    ap.add_argument("--cassandra-batches", type=int, default=20)
    ap.add_argument("--skip-cassandra", action="store_true")
    ap.add_argument("--skip-replicas", action="store_true")
    ns = ap.parse_args()

    print(machine_line())
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        work = Path(tmp)
        with contextlib.ExitStack() as stack:
            t = time.monotonic()
            kafka = stack.enter_context(kafka_server(work / "servers"))
            print(f"kafka up at {kafka.bootstrap} in {time.monotonic() - t:.1f} s", flush=True)
            cass = None
            if ns.store == "cassandra" or not ns.skip_cassandra:
                t = time.monotonic()
                cass = start_cassandra(work / "servers")
                stack.callback(_stop_once, cass)
                print(f"cassandra up at {cass.contact_point} in {time.monotonic() - t:.1f} s", flush=True)

            messages = make_records("run", ns.devices, ns.records, ns.events)
            total = ns.records * ns.events
            base = bare_kafka(kafka.bootstrap, messages, ns.events, ns.partitions)
            rows.append(
                ["1. bare confluent-kafka produce → consume", f"{total:,}", f"{base:,.0f}", "1.00", ""]
            )
            print(f"baseline: {base:,.0f} events/s", flush=True)

            if ns.store == "cassandra":
                from fieldgate.cloud.store.cassandra.events import CassandraEventStore
                from fieldgate.cloud.store.cassandra.session import CassandraSession

                assert cass is not None
                store: object = CassandraEventStore(CassandraSession(cass.host, cass.port))
            else:
                store = SqliteEventStore(work / "events")
            res = asyncio.run(pipeline(kafka.bootstrap, work, messages, ns.devices, ns.partitions, store))
            rows.append(
                [
                    f"2. pipeline decoded → persisted ({ns.store} store)",
                    f"{total:,}",
                    f"{res.events_per_s:,.0f}",
                    f"{res.events_per_s / base:.2f}",
                    f"missing {res.missing}, duplicates {res.duplicates}",
                ]
            )
            print(
                f"pipeline: {res.events_per_s:,.0f} events/s ({res.events_per_s / base:.2f} of baseline)",
                flush=True,
            )
            if ns.store == "sqlite":
                (work / "procs").mkdir()
                res = asyncio.run(
                    pipeline_processes(kafka.bootstrap, work / "procs", messages, ns.devices, ns.partitions)
                )
                rows.append(
                    [
                        "2b. the same, one process per stage (as distributed mode runs it)",
                        f"{total:,}",
                        f"{res.events_per_s:,.0f}",
                        f"{res.events_per_s / base:.2f}",
                        f"missing {res.missing}, duplicates {res.duplicates}",
                    ]
                )
                print(f"pipeline, process per stage: {res.events_per_s:,.0f} events/s", flush=True)

            if cass is not None and not ns.skip_cassandra:
                rate = asyncio.run(cassandra_rate(cass.host, cass.port, ns.cassandra_batches, 1000))
                rows.append(
                    [
                        "3. CassandraEventStore.add, 1000-event batches",
                        f"{ns.cassandra_batches * 1000:,}",
                        f"{rate:,.0f}",
                        "",
                        "",
                    ]
                )
                print(f"cassandra: {rate:,.0f} events/s", flush=True)
                if ns.store != "cassandra":
                    _stop_once(cass)  # frees CPU and memory for the replica phase

            if not ns.skip_replicas:
                for n in (1, 2):
                    r = asyncio.run(
                        inbound_replicas(
                            kafka.bootstrap, work / "registry", messages, ns.devices, ns.partitions, n
                        )
                    )
                    rows.append(
                        [
                            f"4. inbound stage, {n} process(es): decoded → enriched",
                            f"{total:,}",
                            f"{r:,.0f}",
                            f"{r / base:.2f}",
                            "",
                        ]
                    )
                    print(f"inbound x{n}: {r:,.0f} events/s", flush=True)
    print()
    print(table(["path", "events", "events/s", "÷ baseline", "check"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
