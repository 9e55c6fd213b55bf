#!/usr/bin/env python3
"""Bare MQTT pub→sub rate through a broker: the baseline every fieldgate MQTT figure is read against.

One publisher process (fieldgate's own simulator publisher code, :class:`MqttDeviceSim`, as fast
as its in-flight window of 1000 allows) and one paho subscriber process, through a broker in a
third process: amqtt (the broker the edge embeds) and/or Mosquitto (/usr/sbin/mosquitto, started
here on a free port with its own configuration). Prints messages per second at QoS 0 and QoS 1:
messages received / (last receive - first publish).

    .venv/bin/python benchmarks/bench_mqtt_baseline.py [--broker amqtt|mosquitto|both] [--qos 0 1]
        [--messages 20000] [--batch 1] [--repeat 1]

See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import cast

from benchlib import BrokerKind, PubSubResult, broker_process, machine_line, measure_pubsub, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--broker", choices=["amqtt", "mosquitto", "both"], default="both")
    p.add_argument("--qos", type=int, nargs="+", choices=[0, 1], default=[0, 1])
    p.add_argument("--messages", type=int, default=20_000, help="messages per measurement (default 20000)")
    p.add_argument("--batch", type=int, default=1, help="events per message in the payload (default 1)")
    p.add_argument("--devices", type=int, default=10, help="device topics the publisher spreads over")
    p.add_argument("--connections", type=int, default=1, help="publisher MQTT connections (default 1)")
    p.add_argument("--repeat", type=int, default=1, help="runs per figure; the median is printed")
    ns = p.parse_args(argv)

    kinds = ["amqtt", "mosquitto"] if ns.broker == "both" else [ns.broker]
    print(f"bare MQTT pub→sub, {ns.messages} messages of {ns.batch} event(s) — {machine_line()}", flush=True)
    rows = []
    for kind in kinds:
        with broker_process(cast(BrokerKind, kind)) as broker:
            for qos in ns.qos:
                runs: list[PubSubResult] = []
                for _ in range(ns.repeat):
                    r = measure_pubsub(
                        broker.port,
                        qos=qos,
                        batch=ns.batch,
                        messages=ns.messages,
                        devices=ns.devices,
                        connections=ns.connections,
                    )
                    runs.append(r)
                    print(
                        f"  {kind} QoS {qos}: {r.msg_per_s:,.0f} msg/s ({r.received}/{r.messages})",
                        flush=True,
                    )
                rates = [r.msg_per_s for r in runs]
                lost = sum(r.messages - r.received for r in runs)
                rows.append(
                    [
                        kind,
                        str(qos),
                        f"{statistics.median(rates):,.0f}",
                        f"{min(rates):,.0f}",
                        f"{max(rates):,.0f}",
                        str(lost),
                    ]
                )
    print()
    print(table(["broker", "QoS", "msg/s (median)", "min", "max", "lost"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
