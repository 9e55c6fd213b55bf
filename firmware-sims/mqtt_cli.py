"""The options of ``fieldgate sim mqtt``, apart from the simulator so that building the
``fieldgate`` command line does not import paho (the edge agent's process would carry it)."""

from __future__ import annotations

import argparse
from typing import Literal

Format = Literal["json", "sitewhere"]
FORMATS: tuple[Format, ...] = ("json", "sitewhere")
DEFAULT_MAX_INFLIGHT = 1000


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``fieldgate sim mqtt`` (docs/simulators.md)."""
    parser.add_argument("--host", default="127.0.0.1", help="MQTT broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1883, help="MQTT broker port (default 1883)")
    parser.add_argument("--tenant", default="default", help="tenant in the topics (default 'default')")
    parser.add_argument("--devices", type=int, default=1, help="number of devices sim-0001.. (default 1)")
    parser.add_argument(
        "--device",
        action="append",
        dest="device_tokens",
        metavar="TOKEN",
        help="simulate this device token (repeatable; replaces --devices)",
    )
    parser.add_argument("--prefix", default="sim", help="token prefix for --devices (default 'sim')")
    parser.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="messages per second per device (default 1); 0 = as fast as the in-flight window allows",
    )
    parser.add_argument(
        "--batch", type=int, default=1, help="events per message, sent as a JSON array (default 1)"
    )
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="QoS of data messages (default 1)")
    parser.add_argument(
        "--format",
        dest="sim_format",
        choices=FORMATS,
        default="json",
        help="json (fieldgate topics) or sitewhere (DeviceMeasurement on SiteWhere/<tenant>/input/json)",
    )
    parser.add_argument("--duration", type=float, help="stop sending after this many seconds")
    parser.add_argument("--count", type=int, help="stop after this many messages in total")
    parser.add_argument(
        "--connections", type=int, help="MQTT connections shared by the devices (default one each)"
    )
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=DEFAULT_MAX_INFLIGHT,
        help=f"unacknowledged messages allowed at once (default {DEFAULT_MAX_INFLIGHT})",
    )
    parser.add_argument(
        "--with-ids", action="store_true", help="give every event a unique 'id' (alternate id)"
    )
    parser.add_argument("--username", help="MQTT user name")
    parser.add_argument("--password", help="MQTT password (or set FIELDGATE_SIM_PASSWORD)")
    parser.add_argument("--seed", type=int, help="seed of the random walks (reproducible readings)")
    parser.add_argument(
        "--progress", type=float, default=10.0, help="seconds between progress lines on stderr (0: none)"
    )
