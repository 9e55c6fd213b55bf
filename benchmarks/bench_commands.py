"""Command round trip, REST → edge → MQTT device → response → invocation answered.

Runs the suite as ``fieldgate up`` does (cloud in this process, the edge agent in its own
process with the embedded amqtt broker) and one simulated device in a third process
(``fieldgate sim mqtt``), which answers ``ping`` the moment it arrives. For each of N commands,
sent one after another:

- **server-side** round trip: the invocation's ``updated - created`` (both stamped by the cloud:
  accepted by REST → answered), i.e. the path through bus, command delivery, uplink stream,
  command router, broker, device, and back through the event pipeline;
- **client-observed**: from before the POST until a GET shows ``answered`` (polled every 2 ms),
  which adds HTTP and polling costs.

Baseline in the same run: a bare MQTT request/response through the same broker — a paho client
publishes the same command on the device's commands topic and waits for its response on the
events topic (what the transport alone costs).

Goal (PERFORMANCE.md): p50 ≤ 20 ms, p99 ≤ 100 ms. Usage: ``python benchmarks/bench_commands.py
[--commands 200]``; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine_line, percentile, table

from fieldgate.suite import Suite, SuiteOptions
from fieldgate.timeutil import parse_time_ms

PASSWORD = "bench-only-password"
DEVICE = "sim-0001"


def mqtt_round_trips(port: int, count: int, timeout_s: float) -> list[float]:
    """Bare MQTT: command on the commands topic → the sim's response on the events topic."""
    got = threading.Event()
    waiting: dict[str, float] = {}
    samples: list[float] = []

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        items = doc if isinstance(doc, list) else [doc]
        for item in items:
            if isinstance(item, dict) and item.get("type") == "command_response":
                start = waiting.pop(str(item.get("invocation")), None)
                if start is not None:
                    samples.append((time.perf_counter() - start) * 1000)
                    got.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-cmd-{uuid.uuid4().hex[:6]}")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(f"fieldgate/default/devices/{DEVICE}/events", qos=1)
    client.loop_start()
    time.sleep(0.5)
    deadline = time.monotonic() + timeout_s
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            inv = uuid.uuid4().hex
            got.clear()
            waiting[inv] = time.perf_counter()
            payload = json.dumps({"invocation": inv, "command": "ping", "params": {}})
            client.publish(f"fieldgate/default/devices/{DEVICE}/commands", payload, qos=1)
            got.wait(5)
    finally:
        client.loop_stop()
        client.disconnect()
    return sorted(samples)


async def run(ns: argparse.Namespace) -> int:
    print(f"fieldgate command round-trip benchmark — {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fieldgate-bench-cmd-") as tmp:
        opts = SuiteOptions(
            data_dir=Path(tmp), admin_password=PASSWORD, edge_process=True, log_level="WARNING"
        )
        async with Suite(opts) as suite:
            sim = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fieldgate.cli", "--log-level", "WARNING", "sim", "mqtt",
                "--port", str(suite.mqtt_port), "--devices", "1", "--rate", "0.2",
                "--duration", str(int(ns.timeout) + 60),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                async with httpx.AsyncClient(base_url=suite.rest_url, timeout=10) as api:
                    r = await api.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
                    api.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
                    deadline = time.monotonic() + 30
                    while (await api.get(f"/api/v1/devices/{DEVICE}")).status_code != 200:
                        if time.monotonic() > deadline:
                            raise SystemExit("the simulated device never registered")
                        await asyncio.sleep(0.2)
                    server, client = await measure(api, ns.warmup, ns.commands, ns.timeout)
                baseline = await asyncio.to_thread(mqtt_round_trips, suite.mqtt_port, ns.commands, ns.timeout)
            finally:
                sim.send_signal(signal.SIGTERM)
                await sim.wait()

    rows = [
        ["bare MQTT request/response (baseline)", str(len(baseline)), f"{percentile(baseline, 50):.1f}",
         f"{percentile(baseline, 99):.1f}"],
        ["fieldgate, server-side (created → answered)", str(len(server)), f"{percentile(server, 50):.1f}",
         f"{percentile(server, 99):.1f}"],
        ["fieldgate, client-observed (POST → GET answered)", str(len(client)), f"{percentile(client, 50):.1f}",
         f"{percentile(client, 99):.1f}"],
    ]  # fmt: skip
    print()
    print(table(["path", "commands", "p50 ms", "p99 ms"], rows))
    print("\nGoal (PERFORMANCE.md): command round trip REST → device → response p50 ≤ 20 ms, p99 ≤ 100 ms.")
    return 0


async def measure(
    api: httpx.AsyncClient, warmup: int, count: int, timeout_s: float
) -> tuple[list[float], list[float]]:
    server: list[float] = []
    client: list[float] = []
    deadline = time.monotonic() + timeout_s
    for i in range(warmup + count):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        r = await api.post(f"/api/v1/devices/{DEVICE}/commands", json={"command": "ping", "params": {}})
        r.raise_for_status()
        inv = r.json()["id"]
        while True:
            body = (await api.get(f"/api/v1/invocations/{inv}")).json()
            if body["status"] != "queued" and body["status"] != "delivered":
                break
            if time.perf_counter() - t0 > 10:
                break
            await asyncio.sleep(0.002)
        if i < warmup or body["status"] != "answered":
            continue
        client.append((time.perf_counter() - t0) * 1000)
        created, updated = parse_time_ms(body["created"]), parse_time_ms(body["updated"])
        server.append(float(updated - created))
    return sorted(server), sorted(client)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--commands", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--timeout", type=float, default=120.0, help="time bound of each phase, seconds")
    ns = p.parse_args(argv)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    return asyncio.run(run(ns))


if __name__ == "__main__":
    sys.exit(main())
