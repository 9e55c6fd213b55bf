"""A quick measurement (not a test) of the cloud pipeline: an edge stream sends 1000-event
batches; we time how fast they are acknowledged (ingest → [decoded]) and how fast they are
stored (→ [persisted]). Bounded in count and time. Run:

    .venv/bin/python -m tests.helpers.cloud_throughput --batches 100 --batch-size 1000 --devices 10
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.cloud_pipeline import CloudPipeline, EdgeClient
from tests.helpers.waiting import eventually


def make_batch(n: int, batch_no: int, size: int, devices: int) -> list[pb.Event]:
    now = now_ms()
    return [
        pb.Event(
            tenant="default",
            device=f"dev-{i % devices}",
            alternate_id=f"b{batch_no}-{i}",
            event_time_ms=now,
            measurement=pb.Measurement(values={"temperature": 20.0 + i % 10, "n": float(n)}),
        )
        for i in range(size)
    ]


async def measure(batches: int, size: int, devices: int, window: int, timeout_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with CloudPipeline(Path(tmp) / "cloud") as cloud:
            client = EdgeClient(cloud.port, "bench-edge")
            await client.connect()
            # Warm up: registers the devices (auto-registration) outside the timed part.
            await client.send_and_ack(make_batch(0, -1, devices, devices))
            warm = devices + devices  # events + one registration state change per device
            await eventually(lambda: cloud.persistence.stats.stored >= warm, timeout=timeout_s)

            payloads = [make_batch(b, b, size, devices) for b in range(batches)]
            total = batches * size
            start = time.perf_counter()
            in_flight = 0
            for events in payloads:
                if in_flight >= window:
                    await client.next_ack(timeout_s)
                    in_flight -= 1
                await client.send(events)
                in_flight += 1
            while in_flight:
                await client.next_ack(timeout_s)
                in_flight -= 1
            acked = time.perf_counter() - start
            await eventually(
                lambda: cloud.persistence.stats.stored >= warm + total,
                timeout=timeout_s,
                interval=0.01,
            )
            persisted = time.perf_counter() - start
            stored = cloud.persistence.stats.stored - warm
            await client.close()
    return {
        "events": float(total),
        "stored": float(stored),
        "acked_s": acked,
        "persisted_s": persisted,
        "ack_rate": total / acked,
        "persisted_rate": stored / persisted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--window", type=int, default=8, help="unacknowledged batches in flight")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    r = asyncio.run(measure(args.batches, args.batch_size, args.devices, args.window, args.timeout))
    print(
        f"{int(r['events'])} events in {args.batches} batches of {args.batch_size} "
        f"({args.devices} devices, window {args.window}): "
        f"ingest acked {r['ack_rate']:,.0f} ev/s; "
        f"persisted {int(r['stored'])} at {r['persisted_rate']:,.0f} ev/s"
    )


if __name__ == "__main__":
    main()
