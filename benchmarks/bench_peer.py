#!/usr/bin/env python3
"""fieldgate's edge agent beside thingsboard-gateway 3.8.5 (the closest peer), same load.

Both gateways take the same MQTT load from the same devices' broker and pass it upstream; the
script measures each in turn, per scenario, with a fresh broker pair and a fresh gateway:

- **devices' broker**: Mosquitto with the configuration fieldgate ships
  (edge/adapters/mqtt/mosquitto-fieldgate.conf: no message dropped for a slow subscriber).
- **publisher**: benchlib's load process (:class:`fieldgate.sims.mqtt.MqttDeviceSim`), QoS 1,
  one event per message on ``fieldgate/default/devices/bench-NNNN/events`` over 10 devices, an
  in-flight window of 1,000; every message carries its own id (``run-<n>``) and its own
  timestamp (each device's ``ts`` strictly increases: thingsboard-gateway merges values of one
  device that share a timestamp). The publisher records when it handed each message to paho.
- **thingsboard-gateway** (``benchmarks/peer/``): its MQTT connector subscribed to the devices'
  broker; "ThingsBoard" is a second Mosquitto and a counter process subscribed to
  ``v1/gateway/telemetry`` there, which also answers the gateway's ``getSessionLimits`` RPC
  (without that answer it sends nothing). Delivered = seen by the counter.
- **fieldgate**: the suite with the edge agent in its own process (``fieldgate edge run``,
  external MQTT mode on the devices' broker) uplinking over gRPC to the cloud in the suite's
  process (embedded bus and SQLite). Delivered = accepted by the cloud: its ingest wrote the
  event to the ``[decoded]`` bus stage, the moment it acknowledges the batch to the edge
  (``--delivered stored`` reads ``[persisted]`` instead: stored in the event store). After each
  scenario the script also reads ``[persisted]`` and reports how many events were stored.

Scenarios (``--scenario``): ``flat`` (a bounded count as fast as the window allows), ``paced100``
and ``paced1000`` (100 and 1,000 msg/s for a bounded duration), ``burst`` (N messages handed to
paho at once: the window is N), ``outage`` (a steady rate; the upstream — the peer's
"ThingsBoard" Mosquitto, fieldgate's cloud — is stopped for 30 s and started again while the
devices keep publishing).

Per scenario and side: events/s (delivered ÷ first publish → last delivery), lost (acknowledged
by the devices' broker, never delivered), duplicated, latency p50/p99 (publish → delivered),
RSS of the gateway process idle (after a warm-up) and peak, CPU per message (user + system
seconds of the gateway process from ``/proc/<pid>/stat`` between the first publish and the last
delivery, ÷ messages: publisher, brokers, counter and cloud excluded), and for the outage the
backlog and its drain time. The ratio row is fieldgate ÷ thingsboard-gateway.

thingsboard-gateway is installed (pinned, from PyPI) into its own venv under
``~/.cache/fieldgate/peer/`` by ``--install-peer``, or automatically when missing (said so).
Every load loop is bounded in count and time; every process started is stopped by its PID.

    .venv/bin/python benchmarks/bench_peer.py --install-peer       # the full run (~10 min)
    .venv/bin/python benchmarks/bench_peer.py --quick              # a short smoke run
    .venv/bin/python benchmarks/bench_peer.py --quick --skip-peer  # fieldgate only, no install
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    SPAWN,
    DeliveryTracker,
    Publisher,
    PublisherResult,
    PublisherSpec,
    RestartableMosquitto,
    RssSampler,
    SideResult,
    broker_process,
    delivery_summary,
    free_port,
    load_average,
    machine_line,
    mosquitto_version,
    proc_cpu_s,
    proc_status_kb,
    table,
)

PEER_VERSION = "3.8.5"
PEER_REQUIREMENT = f"thingsboard-gateway=={PEER_VERSION}"
PEER_VENV = Path.home() / ".cache" / "fieldgate" / "peer" / f"thingsboard-gateway-{PEER_VERSION}"
PEER_DIR = Path(__file__).resolve().parent / "peer"
PEER_SIDE = f"thingsboard-gateway {PEER_VERSION}"
FG_SIDE = "fieldgate"

DEVICES = 10
DEVICE_PREFIX = "bench"
RUN_ID = "run"
WARMUP_ID = "warmup"
WINDOW = 1000  # the publisher's in-flight window (PERFORMANCE.md: bound it)
PAHO_WINDOW_MAX = 32_767  # MqttDeviceSim's limit (paho's 16-bit message ids)
WARMUP_TIMEOUT_S = 90.0
WARMUP_ROUND_S = 5.0
POLL_S = 0.2
STORED_GROUP = "bench-peer-stored"

# What the "ThingsBoard" counter answers to getSessionLimits: no rate limits at all, the
# payload and in-flight limits of the configuration the PERFORMANCE.md figures came from.
NO_LIMITS = {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""}
SESSION_LIMITS = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": NO_LIMITS,
    "gatewayRateLimits": NO_LIMITS,
}

# Goals from PERFORMANCE.md, printed beside the figures.
GOAL_FLAT_RATIO = 5.0
GOAL_CPU_RATIO = 0.5
GOAL_RSS_IDLE_MB = 40.0
GOAL_RSS_LOADED_MB = 120.0
GOAL_DRAIN_FACTOR = 10.0


@dataclass(frozen=True)
class PeerScenario:
    key: str
    title: str
    messages: int
    rate: float = 0.0  # messages/s over all devices; 0 = as fast as the window allows
    window: int = WINDOW
    outage_at_s: float = 0.0  # the upstream stops this long after the load starts (0: never)
    outage_s: float = 0.0

    @property
    def has_outage(self) -> bool:
        return self.outage_s > 0

    def spec(self, port: int, ns: argparse.Namespace) -> PublisherSpec:
        return PublisherSpec(
            port=port,
            messages=self.messages,
            batch=1,
            qos=1,
            rate_hz=self.rate / DEVICES,
            devices=DEVICES,
            max_inflight=self.window,
            run_id=RUN_ID,
            device_prefix=DEVICE_PREFIX,
            record_times=True,
            timeout_s=ns.timeout + (self.messages / self.rate if self.rate else 0.0),
            distinct_ts=True,
        )


def scenarios(ns: argparse.Namespace) -> list[PeerScenario]:
    paced_n = {r: max(1, round(r * ns.paced_seconds)) for r in (100, 1000)}
    total_s = ns.outage_before + ns.outage_seconds + ns.outage_after
    all_ = {
        "flat": PeerScenario("flat", f"flat out, {ns.messages:,} msgs", ns.messages),
        "paced100": PeerScenario("paced100", f"100 msg/s for {ns.paced_seconds:g} s", paced_n[100], rate=100),
        "paced1000": PeerScenario(
            "paced1000", f"1,000 msg/s for {ns.paced_seconds:g} s", paced_n[1000], rate=1000
        ),
        "burst": PeerScenario(
            "burst", f"burst of {ns.burst:,} at once", ns.burst, window=min(ns.burst, PAHO_WINDOW_MAX)
        ),
        "outage": PeerScenario(
            "outage",
            f"{ns.outage_rate:,g} msg/s, upstream down {ns.outage_seconds:g} s",
            max(1, round(ns.outage_rate * total_s)),
            rate=ns.outage_rate,
            outage_at_s=ns.outage_before,
            outage_s=ns.outage_seconds,
        ),
    }
    return [all_[k] for k in ns.scenario]


# --------------------------------------------------------------------- the peer's installation


def peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def installed_peer_version() -> str | None:
    python = peer_python()
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('thingsboard-gateway'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_peer(install: bool) -> None:
    """The pinned thingsboard-gateway in its own venv: installed when asked or missing."""
    have = installed_peer_version()
    if have == PEER_VERSION and not install:
        return
    if have == PEER_VERSION:
        print(f"{PEER_REQUIREMENT} is already installed in {PEER_VENV}", flush=True)
        return
    why = "as asked (--install-peer)" if install else "because it is missing"
    print(f"installing {PEER_REQUIREMENT} from PyPI into {PEER_VENV} {why} ...", flush=True)
    PEER_VENV.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(PEER_VENV)], check=True, timeout=300)
    subprocess.run(
        [
            str(peer_python()),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--constraint",
            str(PEER_DIR / "constraints.txt"),
            PEER_REQUIREMENT,
        ],
        check=True,
        timeout=900,
    )
    have = installed_peer_version()
    if have != PEER_VERSION:
        raise SystemExit(f"installing {PEER_REQUIREMENT} failed (found {have!r})")


def peer_versions() -> str:
    """The peer's version and the versions of the libraries on its data path."""
    probe = subprocess.run(
        [
            str(peer_python()),
            "-c",
            "import importlib.metadata as m, platform; print(platform.python_version(), "
            "*(f'{p} {m.version(p)}' for p in ('thingsboard-gateway', 'tb-mqtt-client', "
            "'tb-paho-mqtt-client', 'simplejson', 'orjson')), sep=', ')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return f"peer venv: Python {probe.stdout.strip()}" if probe.returncode == 0 else "peer venv: ?"


# --------------------------------------------------------------------- the peer's "ThingsBoard"


def _counter_main(port: int, size: int, commands: Connection, ready: Any) -> None:
    """Child process: "ThingsBoard". A paho client with a persistent session (so it keeps its
    subscription and queue across an upstream restart) subscribed to the gateway's telemetry;
    records the first sighting of every event id and answers ``getSessionLimits``. Commands on
    the pipe: ``progress`` → (warm-up, distinct, duplicates, last new sighting, session-limit
    requests answered); ``report`` → the DeliveryTracker, then it exits."""
    import orjson
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    lock = threading.Lock()
    tracker = DeliveryTracker(RUN_ID, size)
    rpc_answered = [0]
    limits = orjson.dumps(SESSION_LIMITS)

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        now = time.monotonic()
        topic: str = message.topic
        if topic == "v1/gateway/telemetry":
            doc = orjson.loads(message.payload)
            with lock:
                for entries in doc.values():
                    for entry in entries if isinstance(entries, list) else [entries]:
                        event_id = entry.get("values", {}).get("id")
                        if isinstance(event_id, str):
                            tracker.add(event_id, now)
        elif topic.startswith("v1/devices/me/rpc/request/"):
            request = orjson.loads(message.payload)
            if request.get("method") == "getSessionLimits":
                client.publish("v1/devices/me/rpc/response/" + topic.rsplit("/", 1)[1], limits, qos=1)
                with lock:
                    rpc_answered[0] += 1

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="bench-thingsboard",
        protocol=mqtt.MQTTv311,
        clean_session=False,
    )
    # Back as soon as the broker is (paho takes float seconds, although typed int).
    client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)  # type: ignore[arg-type]
    client.on_connect = lambda c, *a: c.subscribe(
        [("v1/gateway/telemetry", 1), ("v1/devices/me/rpc/request/+", 1)]
    )
    client.on_subscribe = lambda *a: ready.set()
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        while True:
            if not commands.poll(1.0):
                continue
            command = commands.recv()
            with lock:
                if command == "progress":
                    commands.send(
                        (
                            tracker.warmup,
                            tracker.unique,
                            tracker.duplicates,
                            tracker.last_new,
                            rpc_answered[0],
                        )
                    )
                    continue
                commands.send(tracker)
            break
    except EOFError:
        pass  # the parent went away
    finally:
        client.disconnect()
        client.loop_stop()


class Counter:
    """The "ThingsBoard" counter process (see :func:`_counter_main`)."""

    def __init__(self, port: int, size: int) -> None:
        self._pipe, child = SPAWN.Pipe()
        ready = SPAWN.Event()
        self._proc = SPAWN.Process(target=_counter_main, args=(port, size, child, ready), name="bench-tb")
        self._proc.start()
        child.close()
        if not ready.wait(30):
            self.close()
            raise SystemExit("the ThingsBoard counter did not subscribe within 30 s")

    def progress(self) -> tuple[int, int, int, float, int]:
        self._pipe.send("progress")
        if not self._pipe.poll(30):
            raise SystemExit("the ThingsBoard counter does not answer")
        result: tuple[int, int, int, float, int] = self._pipe.recv()
        return result

    def report(self) -> DeliveryTracker:
        self._pipe.send("report")
        if not self._pipe.poll(60):
            raise SystemExit("the ThingsBoard counter did not report")
        tracker: DeliveryTracker = self._pipe.recv()
        return tracker

    def close(self) -> None:
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()


class PeerGateway:
    """thingsboard-gateway as its own process, configured from benchmarks/peer/ templates."""

    def __init__(self, run_dir: Path, devices_port: int, upstream_port: int) -> None:
        self.run_dir = run_dir
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        main = json.loads((PEER_DIR / "tb_gateway.template.json").read_text())
        main["thingsboard"]["host"] = "127.0.0.1"
        main["thingsboard"]["port"] = upstream_port
        main["storage"]["data_folder_path"] = main["storage"]["data_file_path"] = str(run_dir / "data") + "/"
        connector = json.loads((PEER_DIR / "mqtt.template.json").read_text())
        connector["broker"]["host"] = "127.0.0.1"
        connector["broker"]["port"] = devices_port
        (run_dir / "tb_gateway.json").write_text(json.dumps(main, indent=2))
        (run_dir / main["connectors"][0]["configuration"]).write_text(json.dumps(connector, indent=2))
        (run_dir / "logs.json").write_text((PEER_DIR / "logs.template.json").read_text())
        self.output = run_dir / "gateway.out"
        with open(self.output, "wb") as out:
            # Its logs go to ./logs (relative paths in logs.json): run it in the run directory.
            self.popen = subprocess.Popen(
                [str(peer_python()), str(PEER_DIR / "tb_launcher.py"), str(run_dir / "tb_gateway.json")],
                cwd=run_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
            )
        self.pid = self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise SystemExit(f"thingsboard-gateway exited with {self.popen.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)  # its own clean stop
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


# --------------------------------------------------------------------- shared measurement logic


class CpuAtProgress:
    """The gateway's CPU seconds at the latest moment a new delivery was seen (so the idle wait
    after the last delivery is not counted)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = proc_cpu_s(pid)
        self.at_progress = self.start
        self._delivered = 0

    def observe(self, delivered: int) -> None:
        if delivered > self._delivered:
            self._delivered = delivered
            self.at_progress = proc_cpu_s(self.pid)

    @property
    def used_s(self) -> float:
        return self.at_progress - self.start


def finished(
    published: PublisherResult | None, delivered: int, last_new: float, idle_s: float, since: float
) -> bool:
    """Done once the publisher reported and every message it got acknowledged was delivered,
    or nothing new arrived for ``idle_s`` after the publisher finished (and after ``since``)."""
    if published is None:
        return False
    if delivered >= published.acked:
        return True
    quiet_since = max(since, last_new if not math.isnan(last_new) else since)
    return time.monotonic() - quiet_since > idle_s


def make_result(
    side: str,
    sc: PeerScenario,
    delivery_point: str,
    tracker: DeliveryTracker,
    published: PublisherResult,
    rss_idle_mb: float,
    rss_peak_mb: float,
    cpu_s: float,
    restore_t: float | None,
    notes: Sequence[str] = (),
) -> SideResult:
    seconds, p50, p99, backlog, drain_s = delivery_summary(
        tracker, published.publish_times, published.first_publish, restore_t
    )
    return SideResult(
        side=side,
        scenario=sc.title,
        delivery_point=delivery_point,
        planned=sc.messages,
        acked=published.acked,
        delivered=tracker.unique,
        duplicates=tracker.duplicates,
        seconds=seconds,
        p50_ms=p50,
        p99_ms=p99,
        rss_idle_mb=rss_idle_mb,
        rss_peak_mb=rss_peak_mb,
        cpu_s=cpu_s,
        backlog=backlog if sc.has_outage else 0,
        drain_s=drain_s,
        publisher_error=published.error,
        notes=tuple(notes),
    )


def warmup_spec(port: int) -> PublisherSpec:
    """One message per device: device registration / connection is not what is measured."""
    return PublisherSpec(
        port=port,
        messages=DEVICES,
        batch=1,
        qos=1,
        devices=DEVICES,
        run_id=WARMUP_ID,
        device_prefix=DEVICE_PREFIX,
        timeout_s=60,
        distinct_ts=True,
    )


def warm_up(port: int, warmups_seen: Callable[[], int], check: Callable[[], None]) -> int:
    """Warm-up rounds (one message per device) until a round's worth arrived upstream; a round
    again every few seconds, as a gateway's subscription may not exist yet when the first one
    goes out (the devices' broker keeps nothing for a subscription that does not exist).
    Returns the number of rounds."""
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        pub = Publisher(warmup_spec(port))
        pub.go()
        if (result := pub.result()).error:
            raise SystemExit(f"warm-up failed: {result.error}")
        round_deadline = min(deadline, time.monotonic() + WARMUP_ROUND_S)
        while time.monotonic() < round_deadline:
            if warmups_seen() >= DEVICES:
                return rounds
            check()
            time.sleep(POLL_S)
    raise SystemExit(f"warm-up: fewer than {DEVICES} messages went through in {WARMUP_TIMEOUT_S:.0f} s")


# --------------------------------------------------------------------- the peer side


def run_peer(sc: PeerScenario, ns: argparse.Namespace) -> SideResult:
    print(f"- {sc.title}: {PEER_SIDE} ...", flush=True)
    notes: list[str] = []
    with (
        broker_process("mosquitto") as devices,
        RestartableMosquitto() as upstream,
        tempfile.TemporaryDirectory(prefix="fieldgate-bench-peer-") as tmp,
    ):
        counter = Counter(upstream.port, sc.messages)
        gateway: PeerGateway | None = None
        load: Publisher | None = None
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            gateway = PeerGateway(Path(tmp), devices.port, upstream.port)
            load = Publisher(sc.spec(devices.port, ns))  # spawned now: its imports overlap the warm-up
            gw = gateway
            rounds = warm_up(devices.port, lambda: counter.progress()[0], gw.check_alive)
            if rounds > 1:
                notes.append(f"warm-up took {rounds} rounds")
            rss_idle = proc_status_kb(gateway.pid, "VmRSS") / 1024

            cpu = CpuAtProgress(gateway.pid)
            restore_t: float | None = None
            with RssSampler(gateway.pid) as rss:
                load.go()
                t0 = time.monotonic()
                publishing = pool.submit(load.result)
                published: PublisherResult | None = None
                published_at = math.inf
                hard_deadline = t0 + sc.spec(0, ns).timeout_s + ns.timeout
                outage_done = not sc.has_outage
                while True:
                    _, delivered, _, last_new, _ = counter.progress()
                    cpu.observe(delivered)
                    if published is None and publishing.done():
                        published = publishing.result()
                        published_at = time.monotonic()
                    if outage_done and finished(published, delivered, last_new, ns.idle, published_at):
                        break
                    now = time.monotonic()
                    if now > hard_deadline:
                        notes.append("time bound reached")
                        break
                    if not outage_done and upstream.pid is not None and now >= t0 + sc.outage_at_s:
                        upstream.stop()
                        print(f"  upstream (ThingsBoard's Mosquitto) stopped at {now - t0:.1f} s", flush=True)
                    elif (
                        not outage_done and upstream.pid is None and now >= t0 + sc.outage_at_s + sc.outage_s
                    ):
                        upstream.start()
                        restore_t = upstream.accepting_at
                        outage_done = True
                        print(f"  upstream back at {restore_t - t0:.1f} s", flush=True)
                    gateway.check_alive()
                    time.sleep(POLL_S)
            if published is None:
                published = publishing.result(timeout=120)
            tracker = counter.report()
            result = make_result(
                PEER_SIDE, sc, "ThingsBoard counter", tracker, published, rss_idle, rss.peak_mb, cpu.used_s,
                restore_t, notes,
            )  # fmt: skip
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            if load is not None:
                load.close(0)
            if gateway is not None:
                gateway.stop()
            counter.close()
    _print_side(result)
    return result


# --------------------------------------------------------------------- the fieldgate side


class BusReader:
    """The benchmark's own consumer group on one bus stage of the suite's cloud, feeding a
    DeliveryTracker; closed while the cloud is down and opened again on the new cloud (the group's
    committed position lives in the cloud's data directory)."""

    def __init__(self, suite: Any, group: str, stage: str, tracker: DeliveryTracker) -> None:
        self._suite = suite
        self._group = group
        self._stage = stage
        self._tracker = tracker
        self._consumer: Any = None

    @property
    def is_open(self) -> bool:
        return self._consumer is not None

    async def open(self) -> None:
        consumer = self._suite.cloud.parts.bus.consumer(self._group, self._stage)
        await consumer.__aenter__()
        self._consumer = consumer

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.__aexit__(None, None, None)

    async def poll(self, timeout_s: float) -> None:
        from fieldgate.v1 import events_pb2 as pb

        records = await self._consumer.poll(max_records=5000, timeout_s=timeout_s)
        now = time.monotonic()
        for record in records:
            for event in pb.EventBatch.FromString(record.value).events:
                self._tracker.add(event.alternate_id, now)
        if records:
            await self._consumer.commit(records)


async def fieldgate_scenario(sc: PeerScenario, devices_port: int, ns: argparse.Namespace) -> SideResult:
    """One scenario through a fresh suite: cloud here, edge agent in its own process."""
    from fieldgate.cloud.app import CloudApp
    from fieldgate.suite import Suite, SuiteOptions

    stage = "decoded" if ns.delivered == "accepted" else "persisted"
    point = "cloud accepted ([decoded])" if stage == "decoded" else "cloud stored ([persisted])"
    tracker = DeliveryTracker(RUN_ID, sc.messages)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fieldgate-bench-peer-fg-") as tmp:
        options = SuiteOptions(
            data_dir=Path(tmp),
            mqtt_mode="external",
            mqtt_port=devices_port,
            grpc_port=free_port(),  # fixed: the edge finds the cloud again after the outage
            admin_password="bench-only-password",
            edge_process=True,
            log_level="WARNING",
        )
        async with Suite(options) as suite:
            reader = BusReader(suite, "bench-peer", stage, tracker)
            await reader.open()
            # The stored check's own group on [persisted], created now: the embedded bus deletes
            # records every group has consumed, so a group created later would miss early ones.
            stored, stored_reader = tracker, reader
            if stage == "decoded":
                stored = DeliveryTracker(RUN_ID, sc.messages)
                stored_reader = BusReader(suite, STORED_GROUP, "persisted", stored)
                await stored_reader.open()
            load = Publisher(sc.spec(devices_port, ns))  # spawned now: its imports overlap the warm-up
            try:
                # Warm-up until its events are stored: the devices are registered then (events of
                # a device still being registered would pass [decoded] twice).
                rounds = await _fieldgate_warm_up(devices_port, stored_reader, stored)
                if stored_reader is not reader:
                    await stored_reader.close()  # read again after the load
                if rounds > 1:
                    notes.append(f"warm-up took {rounds} rounds")
                edge_pid = suite.edge_pid
                rss_idle = proc_status_kb(edge_pid, "VmRSS") / 1024
                cpu = CpuAtProgress(edge_pid)
                restore_t: float | None = None
                cloud_down = False
                with RssSampler(edge_pid) as rss:
                    load.go()
                    t0 = time.monotonic()
                    publishing = asyncio.ensure_future(asyncio.to_thread(load.result))
                    published: PublisherResult | None = None
                    published_at = math.inf
                    hard_deadline = t0 + sc.spec(0, ns).timeout_s + ns.timeout
                    outage_done = not sc.has_outage
                    while True:
                        if reader.is_open:
                            await reader.poll(POLL_S)
                        else:
                            await asyncio.sleep(POLL_S)
                        cpu.observe(tracker.unique)
                        if published is None and publishing.done():
                            published = publishing.result()
                            published_at = time.monotonic()
                        if outage_done and finished(
                            published, tracker.unique, tracker.last_new, ns.idle, published_at
                        ):
                            break
                        now = time.monotonic()
                        if now > hard_deadline:
                            notes.append("time bound reached")
                            break
                        if not outage_done and not cloud_down and now >= t0 + sc.outage_at_s:
                            await reader.close()
                            config = suite.cloud.config
                            await suite.cloud.stop()
                            cloud_down = True
                            print(
                                f"  upstream (the cloud) stopped at {time.monotonic() - t0:.1f} s", flush=True
                            )
                        elif cloud_down and now >= t0 + sc.outage_at_s + sc.outage_s:
                            suite.cloud = CloudApp(config)
                            starting = asyncio.ensure_future(suite.cloud.start())
                            # Back = its gRPC port accepts again (the edge may reconnect while
                            # the rest of the cloud app is still starting).
                            restore_t = await _accepting(options.grpc_port, starting)
                            await starting
                            cloud_down = False
                            outage_done = True
                            await reader.open()
                            print(f"  upstream back at {restore_t - t0:.1f} s", flush=True)
                    if published is None:
                        published = await asyncio.wait_for(publishing, 120)
                await reader.close()
                result = make_result(
                    FG_SIDE,
                    sc,
                    point,
                    tracker,
                    published,
                    rss_idle,
                    rss.peak_mb,
                    cpu.used_s,
                    restore_t,
                    notes,
                )
                if stage == "decoded":
                    await _count_stored(suite, stored, tracker.unique, ns)
                    result = dataclasses.replace(
                        result, stored=stored.unique, stored_duplicates=stored.duplicates
                    )
                else:
                    result = dataclasses.replace(
                        result, stored=tracker.unique, stored_duplicates=tracker.duplicates
                    )
            finally:
                load.close(0)
    return result


async def _accepting(port: int, starting: asyncio.Future[None], timeout_s: float = 60.0) -> float:
    """The moment 127.0.0.1:``port`` accepts a TCP connection (tried every 20 ms)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if starting.done():
                starting.result()  # a failed start raises here
            await asyncio.sleep(0.02)
            continue
        t = time.monotonic()
        writer.close()
        return t
    raise SystemExit(f"the cloud did not accept connections on {port} within {timeout_s:.0f} s")


async def _fieldgate_warm_up(port: int, reader: BusReader, tracker: DeliveryTracker) -> int:
    """:func:`warm_up` for the fieldgate side, whose delivery point is read in this loop."""
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        pub = Publisher(warmup_spec(port))
        pub.go()
        if (result := await asyncio.to_thread(pub.result)).error:
            raise SystemExit(f"warm-up failed: {result.error}")
        round_deadline = min(deadline, time.monotonic() + WARMUP_ROUND_S)
        while time.monotonic() < round_deadline:
            if tracker.warmup >= DEVICES:
                return rounds
            await reader.poll(POLL_S)
    raise SystemExit(f"warm-up: fewer than {DEVICES} messages went through in {WARMUP_TIMEOUT_S:.0f} s")


async def _count_stored(suite: Any, stored: DeliveryTracker, expected: int, ns: argparse.Namespace) -> None:
    """After the measurement: read [persisted] on with the group that read the warm-up, until as
    many distinct events as were accepted are there (or nothing new for ``--store-idle`` s)."""
    reader = BusReader(suite, STORED_GROUP, "persisted", stored)
    await reader.open()
    try:
        quiet_since = time.monotonic()
        deadline = quiet_since + ns.timeout
        seen = 0
        while stored.unique < expected and time.monotonic() < deadline:
            await reader.poll(0.5)
            if stored.unique + stored.duplicates > seen:
                seen = stored.unique + stored.duplicates
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > ns.store_idle:
                break
        # A duplicate would come right behind: one more short read.
        await reader.poll(0.5)
    finally:
        await reader.close()


def _fieldgate_child(sc: PeerScenario, devices_port: int, ns: argparse.Namespace, out: Connection) -> None:
    """Child process: one scenario through its own suite (its memory is that scenario's)."""
    _quiet_logging()
    try:
        out.send(asyncio.run(fieldgate_scenario(sc, devices_port, ns)))
    except SystemExit as err:
        out.send(str(err))
    except Exception as err:  # top of the child: report to the parent, which prints it
        out.send(f"{type(err).__name__}: {err}")
        raise
    finally:
        out.close()


def run_fieldgate(sc: PeerScenario, ns: argparse.Namespace) -> SideResult:
    print(f"- {sc.title}: {FG_SIDE} ...", flush=True)
    with broker_process("mosquitto") as devices:
        recv, send = SPAWN.Pipe(duplex=False)
        child = SPAWN.Process(target=_fieldgate_child, args=(sc, devices.port, ns, send), name="bench-suite")
        child.start()
        send.close()
        bound = sc.spec(0, ns).timeout_s + 3 * ns.timeout + WARMUP_TIMEOUT_S + 120
        try:
            if not recv.poll(bound):
                raise SystemExit("the suite process did not report in time")
            result: SideResult | str = recv.recv()
        except EOFError as err:
            raise SystemExit(f"the suite process died (exit code {child.exitcode})") from err
        finally:
            child.join(30)
            if child.is_alive():
                child.terminate()
                child.join()
    if isinstance(result, str):
        raise SystemExit(f"{sc.title}, fieldgate: {result}")
    _print_side(result)
    return result


def _quiet_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


# --------------------------------------------------------------------- reporting


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _print_side(r: SideResult) -> None:
    extra = []
    if r.backlog:
        extra.append(f"backlog {r.backlog}, drained {_fmt(r.drain_s, '.1f')} s after the upstream was back")
    if r.stored is not None and r.delivery_point.startswith("cloud accepted"):
        extra.append(f"stored {r.stored} (dup {r.stored_duplicates})")
    if r.publisher_error:
        extra.append(f"publisher: {r.publisher_error}")
    extra += r.notes
    print(
        f"  {r.events_per_s:,.0f} events/s, {r.delivered}/{r.acked} delivered ({r.delivery_point}), "
        f"dup {r.duplicates}, p50 {_fmt(r.p50_ms, '.1f')} ms, p99 {_fmt(r.p99_ms, '.1f')} ms, "
        f"RSS {r.rss_idle_mb:.0f}/{r.rss_peak_mb:.0f} MB, CPU {_fmt(r.cpu_ms_per_msg, '.3f')} ms/msg"
        + (f"; {'; '.join(extra)}" if extra else ""),
        flush=True,
    )


HEADERS = [
    "scenario",
    "side",
    "events/s",
    "lost",
    "dup",
    "p50 ms",
    "p99 ms",
    "RSS MB idle/peak",
    "CPU ms/msg",
    "drain s",
]


def side_row(r: SideResult) -> list[str]:
    return [
        r.scenario,
        r.side,
        _fmt(r.events_per_s, ",.0f"),
        str(r.lost),
        str(r.duplicates),
        _fmt(r.p50_ms, ".1f"),
        _fmt(r.p99_ms, ".1f"),
        f"{r.rss_idle_mb:.0f} / {r.rss_peak_mb:.0f}",
        _fmt(r.cpu_ms_per_msg, ".3f"),
        _fmt(r.drain_s, ".1f") if r.backlog else "",
    ]


def ratio_row(peer: SideResult, fg: SideResult) -> list[str]:
    return [
        "",
        "fieldgate ÷ peer",
        _fmt(_ratio(fg.events_per_s, peer.events_per_s), ".2f"),
        "",
        "",
        _fmt(_ratio(fg.p50_ms, peer.p50_ms), ".2f"),
        _fmt(_ratio(fg.p99_ms, peer.p99_ms), ".2f"),
        f"{_fmt(_ratio(fg.rss_idle_mb, peer.rss_idle_mb), '.2f')} / "
        f"{_fmt(_ratio(fg.rss_peak_mb, peer.rss_peak_mb), '.2f')}",
        _fmt(_ratio(fg.cpu_ms_per_msg, peer.cpu_ms_per_msg), ".2f"),
        _fmt(_ratio(fg.drain_s, peer.drain_s), ".2f") if fg.backlog else "",
    ]


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c or " " for c in row) + " |" for row in rows]
    return "\n".join(lines)


def goals(results: dict[str, tuple[SideResult | None, SideResult]], ns: argparse.Namespace) -> list[str]:
    """The PERFORMANCE.md goals this benchmark can judge, each met or not."""

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    out = []
    if "flat" in results:
        peer, fg = results["flat"]
        ratio = _ratio(fg.events_per_s, peer.events_per_s) if peer else math.nan
        out.append(
            f"- flat out, events/s ≥ {GOAL_FLAT_RATIO:g}x thingsboard-gateway: {_fmt(ratio, '.2f')}x — "
            f"{verdict(None if peer is None else ratio >= GOAL_FLAT_RATIO)}"
        )
        out.append(
            f"- edge RSS at load ≤ {GOAL_RSS_LOADED_MB:g} MB: peak {fg.rss_peak_mb:.0f} MB at "
            f"{fg.events_per_s:,.0f} events/s flat out — {verdict(fg.rss_peak_mb <= GOAL_RSS_LOADED_MB)}"
        )
    bad = [
        k
        for k, (_, fg) in results.items()
        if fg.lost or fg.stored is None or fg.stored < fg.acked or fg.stored_duplicates
    ]
    line = (
        "- fieldgate 0 lost, 0 duplicated (every acknowledged message stored exactly once), every scenario: "
    )
    line += "met" if not bad else f"NOT met ({', '.join(bad)})"
    dups = {k: fg.duplicates for k, (_, fg) in results.items() if fg.duplicates}
    if dups and ns.delivered == "accepted":
        line += (
            "; duplicates at the cloud's ingest (the edge sent them again; the pipeline removes them): "
            + ", ".join(f"{k} {n}" for k, n in dups.items())
        )
    out.append(line)
    for key in ("paced100", "paced1000"):
        if key in results:
            peer, fg = results[key]
            ratio = _ratio(fg.cpu_ms_per_msg, peer.cpu_ms_per_msg) if peer else math.nan
            out.append(
                f"- CPU per message at {results[key][1].scenario}: ≤ {GOAL_CPU_RATIO:g}x thingsboard-gateway: "
                f"{_fmt(fg.cpu_ms_per_msg, '.3f')} vs {_fmt(peer.cpu_ms_per_msg, '.3f') if peer else '-'} ms "
                f"= {_fmt(ratio, '.2f')}x — {verdict(None if peer is None else ratio <= GOAL_CPU_RATIO)}"
            )
    idle = max(fg.rss_idle_mb for _, fg in results.values())
    out.append(
        f"- edge RSS idle ≤ {GOAL_RSS_IDLE_MB:g} MB: {idle:.0f} MB — {verdict(idle <= GOAL_RSS_IDLE_MB)}"
    )
    if "outage" in results:
        _, fg = results["outage"]
        if fg.backlog and fg.drain_s > 0:
            factor = fg.backlog / fg.drain_s / ns.outage_rate
            out.append(
                f"- backlog after the outage drains ≥ {GOAL_DRAIN_FACTOR:g}x faster than it filled: "
                f"{fg.backlog} msgs in {fg.drain_s:.1f} s = {factor:.1f}x the {ns.outage_rate:g} msg/s it "
                f"filled at — {verdict(factor >= GOAL_DRAIN_FACTOR)}"
            )
    return out


# --------------------------------------------------------------------- main

FULL = {
    "messages": 20_000,
    "paced_seconds": 30.0,
    "burst": 5_000,
    "outage_rate": 1000.0,
    "outage_seconds": 30.0,
    "outage_before": 5.0,
    "outage_after": 10.0,
    "idle": 30.0,
}
QUICK = {
    "messages": 1_000,
    "paced_seconds": 2.0,
    "burst": 500,
    "outage_rate": 200.0,
    "outage_seconds": 2.0,
    "outage_before": 1.0,
    "outage_after": 1.0,
    "idle": 15.0,
}
SCENARIOS = ("flat", "paced100", "paced1000", "burst", "outage")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="fieldgate's edge beside thingsboard-gateway 3.8.5: same publisher, broker, topics, payloads"
    )
    p.add_argument("--install-peer", action="store_true", help=f"install {PEER_REQUIREMENT} into {PEER_VENV}")
    p.add_argument("--skip-peer", action="store_true", help="measure fieldgate only (nothing installed)")
    p.add_argument("--quick", action="store_true", help="a short smoke run (small counts and durations)")
    p.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS), help="default: all")
    p.add_argument("--messages", type=int, help="flat-out messages (default 20,000; quick 1,000)")
    p.add_argument(
        "--paced-seconds", type=float, help="duration of each paced scenario (default 30; quick 2)"
    )
    p.add_argument("--burst", type=int, help="messages handed to paho at once (default 5,000; quick 500)")
    p.add_argument("--outage-rate", type=float, help="msg/s during the outage scenario (default 1,000)")
    p.add_argument("--outage-seconds", type=float, help="how long the upstream is down (default 30)")
    p.add_argument("--outage-before", type=float, help="steady load before the outage, s (default 5)")
    p.add_argument(
        "--outage-after", type=float, help="steady load after the upstream is back, s (default 10)"
    )
    p.add_argument(
        "--delivered",
        choices=["accepted", "stored"],
        default="accepted",
        help="fieldgate's delivery point: accepted by the cloud ([decoded], default) or stored ([persisted])",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="time bound of each measured phase, seconds")
    p.add_argument("--idle", type=float, help="give up this long after the last new delivery (default 30)")
    p.add_argument(
        "--store-idle",
        type=float,
        default=15.0,
        help="stored check: give up after this long without progress",
    )
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument("--json", metavar="PATH", type=Path, help="also write every figure to PATH as JSON")
    ns = p.parse_args(argv)
    for key, value in (QUICK if ns.quick else FULL).items():
        if getattr(ns, key) is None:
            setattr(ns, key, value)
    if ns.messages < 1 or ns.burst < 1 or ns.paced_seconds <= 0 or ns.outage_rate <= 0:
        p.error("counts, durations and rates must be positive")
    if ns.outage_seconds <= 0 or ns.outage_before < 0 or ns.outage_after < 0:
        p.error("the outage must last > 0 s; before/after must be ≥ 0 s")
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    _quiet_logging()
    started_load = load_average()
    if not ns.skip_peer:
        ensure_peer(ns.install_peer)
    print(f"bench_peer — {machine_line()}", flush=True)
    print(f"Mosquitto {mosquitto_version()}; at start: {started_load}", flush=True)
    if not ns.skip_peer:
        print(peer_versions(), flush=True)
    print(
        f"fieldgate delivered = {'accepted by the cloud ([decoded])' if ns.delivered == 'accepted' else 'stored ([persisted])'}; "
        f"thingsboard-gateway delivered = seen by the ThingsBoard counter",
        flush=True,
    )
    results: dict[str, tuple[SideResult | None, SideResult]] = {}
    rows: list[list[str]] = []
    for sc in scenarios(ns):
        peer = None if ns.skip_peer else run_peer(sc, ns)
        fg = run_fieldgate(sc, ns)
        results[sc.key] = (peer, fg)
        if peer is not None:
            rows.append(side_row(peer))
        rows.append(side_row(fg))
        if peer is not None:
            rows.append(ratio_row(peer, fg))
    print()
    print(table(HEADERS, rows))
    print(
        "\nlost: acknowledged by the devices' broker, never delivered; CPU: the gateway process only "
        "(user + system, first publish → last delivery) ÷ messages; drain: upstream back → every "
        "message published before it delivered. Ratio < 1 is better for latency, RSS, CPU, drain."
    )
    stored = [
        f"{fg.scenario}: {fg.stored}/{fg.acked} (dup {fg.stored_duplicates})"
        for _, fg in results.values()
        if fg.stored is not None
    ]
    if stored and ns.delivered == "accepted":
        print("fieldgate events stored in the cloud ([persisted]) afterwards: " + "; ".join(stored))
    print(f"\nGoals (PERFORMANCE.md), at start {started_load}, at end {load_average()}:")
    print("\n".join(goals(results, ns)))
    if ns.markdown:
        print()
        print(markdown(HEADERS, rows))
    if ns.json:
        write_json(ns.json, results, started_load, ns)
    return 0


def write_json(
    path: Path,
    results: dict[str, tuple[SideResult | None, SideResult]],
    started_load: str,
    ns: argparse.Namespace,
) -> None:
    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and math.isnan(value) else value

    def side(r: SideResult) -> dict[str, Any]:
        doc = {k: clean(v) for k, v in dataclasses.asdict(r).items()}
        doc.update(lost=r.lost, events_per_s=clean(r.events_per_s), cpu_ms_per_msg=clean(r.cpu_ms_per_msg))
        return doc

    doc = {
        "machine": machine_line(),
        "load_average_at_start": started_load,
        "load_average_at_end": load_average(),
        "mosquitto": mosquitto_version(),
        "peer": None if ns.skip_peer else peer_versions(),
        "fieldgate_delivered": ns.delivered,
        "scenarios": {
            key: {"peer": None if peer is None else side(peer), "fieldgate": side(fg)}
            for key, (peer, fg) in results.items()
        },
        "goals": goals(results, ns),
    }
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    sys.exit(main())
