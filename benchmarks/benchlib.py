"""Shared machinery of the benchmark scripts: brokers, load processes, measurements, reporting.

Everything that generates or receives load runs in its own process (``multiprocessing`` with
the ``spawn`` start method, so no child inherits the parent's threads, event loop or gRPC state),
so that publisher, subscriber and broker never share a GIL. Processes started here are owned
here: started, waited for until ready, stopped by PID.

Clocks: every timestamp is ``time.monotonic()``, which on Linux is CLOCK_MONOTONIC, one clock
for the whole machine. A publish time taken in one process and a receive time taken in another
can therefore be subtracted directly.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import getpass
import logging
import math
import multiprocessing as mp
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

BrokerKind = Literal["amqtt", "mosquitto"]
MOSQUITTO = Path("/usr/sbin/mosquitto")
EVENTS_FILTER = "fieldgate/+/devices/+/events"

SPAWN = mp.get_context("spawn")


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float, host: str = "127.0.0.1") -> None:
    """Until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as err:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s") from err
            time.sleep(0.05)


# --------------------------------------------------------------------- brokers


def _amqtt_main(port: int) -> None:
    """Child process: a bare amqtt broker (anonymous, 127.0.0.1) until SIGTERM."""
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("amqtt", "transitions"):
        # amqtt logs a client's ordinary disconnect as an ERROR.
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    from amqtt.broker import Broker

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
        )
        await broker.start()
        await stop.wait()
        await broker.shutdown()

    asyncio.run(serve())


# The configuration fieldgate ships for its external MQTT mode (docs/operations/mosquitto.md);
# the benchmark changes only the listener port, the persistence directory and the log file.
MOSQUITTO_SHIPPED_CONF = Path(__file__).resolve().parents[1] / "edge/adapters/mqtt/mosquitto-fieldgate.conf"


def mosquitto_conf(port: int, workdir: Path) -> str:
    text = MOSQUITTO_SHIPPED_CONF.read_text()
    replacements = {
        "listener": f"listener {port} 127.0.0.1",
        "persistence_location": f"persistence_location {workdir}/",
        "log_dest": f"log_dest file {workdir}/mosquitto.log",
    }
    lines = []
    for line in text.splitlines():
        key = line.split(" ", 1)[0]
        lines.append(replacements.pop(key, line) if key in replacements else line)
    extra = list(replacements.values())
    if os.geteuid() == 0:
        # As root Mosquitto switches to user "mosquitto", who cannot write to our temp directory.
        extra.append(f"user {getpass.getuser()}")
    return "\n".join([*lines, *extra]) + "\n"


@dataclass
class BrokerProcess:
    """A broker in its own process, on a free 127.0.0.1 port."""

    kind: BrokerKind
    port: int
    pid: int
    _handle: subprocess.Popen[bytes] | Any
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def stop(self) -> None:
        if isinstance(self._handle, subprocess.Popen):
            self._handle.terminate()
            try:
                self._handle.wait(10)
            except subprocess.TimeoutExpired:
                self._handle.kill()
                self._handle.wait()
        else:
            self._handle.terminate()
            self._handle.join(10)
            if self._handle.is_alive():
                self._handle.kill()
                self._handle.join()
        if self._tmp is not None:
            self._tmp.cleanup()


@contextlib.contextmanager
def broker_process(kind: BrokerKind, port: int | None = None) -> Iterator[BrokerProcess]:
    port = port or free_port()
    if kind == "amqtt":
        proc = SPAWN.Process(target=_amqtt_main, args=(port,), name="bench-amqtt", daemon=True)
        proc.start()
        assert proc.pid is not None
        broker = BrokerProcess(kind, port, proc.pid, proc)
    else:
        if not MOSQUITTO.exists():
            raise SystemExit(f"{MOSQUITTO} not found: install the Debian package 'mosquitto'")
        tmp = tempfile.TemporaryDirectory(prefix="fieldgate-bench-mosquitto-")
        conf = Path(tmp.name) / "mosquitto.conf"
        conf.write_text(mosquitto_conf(port, Path(tmp.name)))
        # Its start-up messages (e.g. the warning about running as root) go to the log too.
        with open(Path(tmp.name) / "mosquitto.stderr", "wb") as stderr:
            popen = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )
        broker = BrokerProcess(kind, port, popen.pid, popen, tmp)
    try:
        try:
            wait_port(port, 20)
        except TimeoutError:
            if broker._tmp is not None:
                for log_file in sorted(Path(broker._tmp.name).glob("mosquitto.*")):
                    print(f"--- {log_file.name}\n{log_file.read_text(errors='replace')}", file=sys.stderr)
            raise
        yield broker
    finally:
        broker.stop()


# --------------------------------------------------------------------- load processes


@dataclass(frozen=True)
class PublisherSpec:
    """What one load process publishes (through :class:`fieldgate.sims.mqtt.MqttDeviceSim`)."""

    port: int
    messages: int
    batch: int
    qos: int
    rate_hz: float = 0.0  # per device; 0 = as fast as the window allows
    devices: int = 10
    connections: int = 1
    max_inflight: int = 1000
    run_id: str = "bench"
    device_prefix: str = "bench"
    record_times: bool = False  # return the publish time of every event (by its id number)
    timeout_s: float = 300.0
    distinct_ts: bool = False  # each device's "ts" strictly increases (MqttDeviceSim distinct_ts)


@dataclass
class PublisherResult:
    sent: int
    acked: int
    events: int
    first_publish: float  # monotonic
    last_ack: float  # monotonic
    inflight_peak: int
    publish_times: array.array[float]  # index n-1: publish time of event "<run_id>-<n>"
    error: str | None = None


def _publisher_main(spec: PublisherSpec, out: Connection, go: Any) -> None:
    """Child process: connect, wait for ``go``, publish ``spec.messages`` as fast as the window allows."""
    logging.basicConfig(level=logging.WARNING)
    from fieldgate.sims.device import device_tokens
    from fieldgate.sims.mqtt import MqttDeviceSim

    times = array.array("d")
    first: list[float] = []
    last_ack = [0.0]

    def on_sent(ids: Sequence[str], t: float) -> None:
        if not first:
            first.append(t)
        if spec.record_times:
            times.extend([t] * len(ids))

    def on_acked(ids: Sequence[str]) -> None:
        last_ack[0] = time.monotonic()

    sim = MqttDeviceSim(
        port=spec.port,
        devices=device_tokens(spec.devices, spec.device_prefix),
        rate_hz=spec.rate_hz,
        batch=spec.batch,
        qos=spec.qos,
        count=spec.messages,
        with_ids=True,
        max_inflight=spec.max_inflight,
        connections=spec.connections,
        run_id=spec.run_id,
        seed=1,
        on_sent=on_sent,
        on_acked=on_acked,
        distinct_ts=spec.distinct_ts,
    )
    go.wait()
    error = None
    try:
        # Rates are measured from the first publish, so connecting is outside the measurement.
        sim.start_sync()
        if not sim.wait_done_sync(spec.timeout_s):
            error = f"publisher not done within {spec.timeout_s}s"
        elif not sim.wait_acked_sync(60):
            error = "publisher: not every message acknowledged within 60 s"
    finally:
        sim.stop_sync(drain_s=0)
    s = sim.stats()
    out.send(
        PublisherResult(
            sent=s.sent,
            acked=s.acked,
            events=s.events_acked,
            first_publish=first[0] if first else math.nan,
            last_ack=last_ack[0],
            inflight_peak=s.inflight_peak,
            publish_times=times,
            error=error or (f"{s.publish_errors} publish errors" if s.publish_errors else None),
        )
    )
    out.close()


class Publisher:
    """A load process; ``go()`` starts the publishing, ``result()`` waits for its report."""

    def __init__(self, spec: PublisherSpec) -> None:
        self.spec = spec
        self._recv, send = SPAWN.Pipe(duplex=False)
        self._go = SPAWN.Event()
        self._proc = SPAWN.Process(
            target=_publisher_main, args=(spec, send, self._go), name="bench-publisher"
        )
        self._proc.start()
        send.close()

    def go(self) -> None:
        self._go.set()

    def result(self, timeout_s: float | None = None) -> PublisherResult:
        timeout_s = timeout_s or self.spec.timeout_s + 90
        try:
            if not self._recv.poll(timeout_s):
                raise TimeoutError("publisher process did not report")
            result: PublisherResult = self._recv.recv()
            return result
        except EOFError as err:
            raise RuntimeError(f"publisher process died (exit code {self._proc.exitcode})") from err
        finally:
            self.close()

    def close(self, timeout_s: float = 10.0) -> None:
        """Join the process, terminating it after ``timeout_s`` (0: at once, if still running)."""
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()


@dataclass
class SubscriberResult:
    received: int
    first_receive: float
    last_receive: float


def _subscriber_main(port: int, qos: int, expected: int, idle_s: float, out: Connection, ready: Any) -> None:
    """Child process: a bare paho subscriber counting messages on the events topics."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    lock = threading.Lock()
    state = {"n": 0, "first": math.nan, "last": math.nan}
    done = threading.Event()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        now = time.monotonic()
        with lock:
            if state["n"] == 0:
                state["first"] = now
            state["n"] += 1
            state["last"] = now
            if state["n"] >= expected:
                done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}", clean_session=True
    )
    client.on_connect = lambda c, *a: c.subscribe(EVENTS_FILTER, qos)
    client.on_subscribe = lambda *a: ready.set()
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    # Done when everything arrived, or nothing arrived for idle_s once traffic had started.
    while not done.wait(0.2):
        with lock:
            if state["n"] and time.monotonic() - state["last"] > idle_s:
                break
    client.disconnect()
    client.loop_stop()
    with lock:
        out.send(SubscriberResult(int(state["n"]), state["first"], state["last"]))
    out.close()


@dataclass
class PubSubResult:
    qos: int
    batch: int
    messages: int
    received: int
    seconds: float

    @property
    def msg_per_s(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0


def measure_pubsub(
    port: int,
    *,
    qos: int,
    batch: int,
    messages: int,
    devices: int = 10,
    connections: int = 1,
    idle_s: float = 10.0,
) -> PubSubResult:
    """Bare MQTT pub→sub through the broker on ``port``: the publisher and the subscriber each
    in their own process. Rate = messages received / (last receive - first publish)."""
    ready = SPAWN.Event()
    recv, send = SPAWN.Pipe(duplex=False)
    sub = SPAWN.Process(
        target=_subscriber_main, args=(port, qos, messages, idle_s, send, ready), name="bench-subscriber"
    )
    sub.start()
    send.close()
    try:
        if not ready.wait(30):
            raise TimeoutError("subscriber not subscribed within 30 s")
        pub = Publisher(
            PublisherSpec(
                port=port,
                messages=messages,
                batch=batch,
                qos=qos,
                devices=devices,
                connections=connections,
                run_id="baseline",
            )
        )
        pub.go()
        published = pub.result()
        if published.error:
            print(f"  warning: {published.error}", file=sys.stderr)
        if not recv.poll(idle_s + 120):
            raise TimeoutError("subscriber process did not report")
        got: SubscriberResult = recv.recv()
    finally:
        sub.join(10)
        if sub.is_alive():
            sub.terminate()
            sub.join()
    seconds = got.last_receive - published.first_publish if got.received else 0.0
    return PubSubResult(qos, batch, messages, got.received, seconds)


# --------------------------------------------------------------------- bench_ingest results
# (here rather than in the script: they cross process boundaries and must pickle by module name)


@dataclass(frozen=True)
class Scenario:
    name: str
    batch: int
    messages: int
    rate: float = 0.0  # messages/s over all devices; 0 = as fast as the in-flight window allows

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


# --------------------------------------------------------------------- reporting


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def proc_status_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class RssSampler:
    """Samples a process's VmRSS every ``interval_s`` in a thread; ``peak_mb`` is the maximum seen."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.peak_kb = proc_status_kb(pid, "VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.peak_kb = max(self.peak_kb, proc_status_kb(self.pid, "VmRSS"))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


def machine_line() -> str:
    """Date and machine, printed with every result (figures only compare within one run)."""
    import paho.mqtt

    try:
        amqtt_version = version("amqtt")
    except PackageNotFoundError:
        amqtt_version = "?"
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"paho-mqtt {paho.mqtt.__version__}, amqtt {amqtt_version}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------- bench_peer additions


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used so far, from ``/proc/<pid>/stat``
    (its own threads only: children and other processes are not counted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3 of proc(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min)"


def mosquitto_version() -> str:
    """``2.0.11`` (from ``mosquitto -h``), or ``?``."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [str(MOSQUITTO), "-h"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        for word in out.split():
            if word[:1].isdigit() and word.count(".") >= 1:
                return word
    return "?"


class RestartableMosquitto:
    """A Mosquitto (fieldgate's shipped configuration) that can be stopped and started again on
    the same port and persistence directory: an upstream outage. A clean stop (SIGTERM) makes
    Mosquitto write its persistence file, so subscribers' sessions and the QoS 1 messages queued
    for them survive the restart. Use as a context manager; ``stop``/``start`` in between."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="fieldgate-bench-upstream-")
        self.workdir = Path(self._tmp.name)
        self._popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.accepting_at = math.nan  # monotonic: when the latest start accepted connections

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def start(self, timeout_s: float = 20.0) -> None:
        if self._popen is not None:
            raise RuntimeError("already running")
        if not MOSQUITTO.exists():
            raise SystemExit(f"{MOSQUITTO} not found: install the Debian package 'mosquitto'")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(mosquitto_conf(self.port, self.workdir))
        with open(self.workdir / "mosquitto.stderr", "ab") as stderr:
            self._popen = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        try:
            while True:  # wait_port, finer: accepting_at is when the upstream was back
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        self.accepting_at = time.monotonic()
                        return
                except OSError as err:
                    if time.monotonic() > deadline or self._popen.poll() is not None:
                        raise TimeoutError(f"Mosquitto not listening on {self.port}") from err
                    time.sleep(0.01)
        except TimeoutError:
            for log_file in sorted(self.workdir.glob("mosquitto.*")):
                print(f"--- {log_file.name}\n{log_file.read_text(errors='replace')}", file=sys.stderr)
            self.stop()
            raise

    def stop(self) -> None:
        popen, self._popen = self._popen, None
        if popen is None:
            return
        popen.terminate()
        try:
            popen.wait(10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()

    def __enter__(self) -> RestartableMosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()


class DeliveryTracker:
    """When each event ``<run_id>-<n>`` (n = 1..size) was first seen at the delivery point, how
    many were seen again (duplicates), and how many warm-up events (``warmup-<n>``) arrived."""

    def __init__(self, run_id: str, size: int) -> None:
        self.prefix = run_id + "-"
        self.seen = array.array("d", [math.nan]) * size
        self.unique = 0
        self.duplicates = 0
        self.warmup = 0
        self.unknown = 0  # ids of neither kind, or beyond size
        self.last_new = math.nan  # monotonic time of the latest first sighting

    def add(self, event_id: str, t: float) -> None:
        if event_id.startswith(self.prefix):
            try:
                i = int(event_id[len(self.prefix) :]) - 1
            except ValueError:
                self.unknown += 1
                return
            if not 0 <= i < len(self.seen):
                self.unknown += 1
            elif math.isnan(self.seen[i]):
                self.seen[i] = t
                self.unique += 1
                self.last_new = t
            else:
                self.duplicates += 1
        elif event_id.startswith("warmup-"):
            self.warmup += 1
        else:
            self.unknown += 1


@dataclass
class SideResult:
    """One scenario on one side of bench_peer.py (pickled across processes, so defined here)."""

    side: str
    scenario: str
    delivery_point: str
    planned: int  # messages the scenario publishes
    acked: int  # messages the devices' broker acknowledged to the publisher
    delivered: int  # distinct messages seen at the delivery point
    duplicates: int
    seconds: float  # first publish → last first sighting
    p50_ms: float
    p99_ms: float
    rss_idle_mb: float
    rss_peak_mb: float
    cpu_s: float  # the gateway process's CPU from the first publish to the last delivery
    backlog: int = 0  # outage: messages published while the upstream was down
    drain_s: float = math.nan  # outage: upstream back → every message published before it delivered
    stored: int | None = None  # fieldgate: distinct events stored in the cloud ([persisted])
    stored_duplicates: int | None = None
    publisher_error: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def lost(self) -> int:
        return max(0, self.acked - self.delivered)

    @property
    def events_per_s(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_msg(self) -> float:
        return self.cpu_s * 1000 / self.acked if self.acked else math.nan


def delivery_summary(
    tracker: DeliveryTracker, publish_times: Sequence[float], first_publish: float, restore_t: float | None
) -> tuple[float, float, float, int, float]:
    """(seconds, p50 ms, p99 ms, backlog, drain s) from the sightings and the publish times.

    seconds: first publish → last first sighting. Latency per message: first sighting - the
    moment it was handed to paho. With ``restore_t`` (the upstream came back then): backlog =
    messages published before it and not yet delivered by then, drain = from ``restore_t`` until
    the last message published before it was delivered."""
    latencies: list[float] = []
    last = math.nan
    backlog = 0
    drained = math.nan
    for i in range(min(len(tracker.seen), len(publish_times))):
        s, p = tracker.seen[i], publish_times[i]
        if restore_t is not None and p < restore_t and not s < restore_t:
            backlog += 1
            if not math.isnan(s):
                drained = s if math.isnan(drained) else max(drained, s)
        if math.isnan(s):
            continue
        latencies.append((s - p) * 1000)
        last = s if math.isnan(last) else max(last, s)
    latencies.sort()
    seconds = last - first_publish if latencies else 0.0
    drain_s = drained - restore_t if restore_t is not None and not math.isnan(drained) else math.nan
    return seconds, percentile(latencies, 50), percentile(latencies, 99), backlog, drain_s
