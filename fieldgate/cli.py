"""The ``fieldgate`` command line.

fieldgate up                    cloud + edge agent + embedded broker + simulated devices
fieldgate cloud run [--config] [service]  the all-in-one cloud process, or one service
                                (inbound, registration, event-store, ingest, api) on Kafka
fieldgate edge run --config F   one edge agent
fieldgate sim mqtt ...          simulated MQTT devices
fieldgate config check edge|cloud F   validate a configuration file
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from fieldgate.errors import ConfigError, FieldgateError


async def _until_signalled(body: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await body(stop)


def _cmd_up(ns: argparse.Namespace) -> int:
    from fieldgate.southbound_sims import parse_sims
    from fieldgate.suite import Suite, SuiteOptions

    sims = parse_sims(ns.sims)
    opts = SuiteOptions(
        data_dir=Path(ns.data_dir),
        rest_port=ns.rest_port,
        grpc_port=ns.grpc_port,
        mqtt_port=ns.mqtt_port,
        mqtt_mode=ns.mqtt,
        mqtt_host=ns.mqtt_host,
        sims=sims.get("mqtt", 0),
        southbound=tuple(k for k in sims if k != "mqtt"),
        sim_rate_hz=ns.sim_rate,
        admin_password=os.environ.get("FIELDGATE_ADMIN_PASSWORD") or None,
        edge_process=not ns.edge_in_process,
        log_level=ns.log_level,
    )

    async def body(stop: asyncio.Event) -> None:
        async with Suite(opts) as suite:
            print("fieldgate is up.", flush=True)
            for line in suite.describe():
                print("  " + line)
            if suite.admin_password and not os.environ.get("FIELDGATE_ADMIN_PASSWORD"):
                print(
                    f"  Admin login  user 'admin', password '{suite.admin_password}' (shown once; "
                    "set FIELDGATE_ADMIN_PASSWORD to choose it)"
                )
            elif os.environ.get("FIELDGATE_ADMIN_PASSWORD"):
                print("  Admin login  user 'admin', password from FIELDGATE_ADMIN_PASSWORD")
            if opts.sims:
                print(f"  Simulator    {opts.sims} MQTT devices sim-0001.. at {opts.sim_rate_hz} Hz")
            print("Press Ctrl-C to stop.", flush=True)
            await stop.wait()
            print("stopping...", flush=True)
        print("stopped.", flush=True)

    asyncio.run(_until_signalled(body))
    return 0


def _cmd_cloud_run(ns: argparse.Namespace) -> int:
    from fieldgate import config as cfg
    from fieldgate.cloud.app import CloudApp
    from fieldgate.cloud.config import CloudConfig

    conf = cfg.load(CloudConfig, Path(ns.config) if ns.config else None, env_prefix="FIELDGATE_CLOUD")
    services = [ns.service] if ns.service else None
    app = CloudApp(conf, services)  # refuses a single service on the embedded bus (ConfigError)

    async def body(stop: asyncio.Event) -> None:
        async with app:
            generated = None
            if "api" in app.services:
                generated = await app.ensure_admin(os.environ.get("FIELDGATE_ADMIN_PASSWORD") or None)
            what = ", ".join(sorted(app.services)) if ns.service else "all services"
            addresses = []
            if "api" in app.services:
                addresses.append(f"REST http://{conf.rest_host}:{app.rest_port}")
            if app.ingest is not None:
                addresses.append(f"gRPC {conf.grpc_host}:{app.grpc_port}")
            print(f"cloud up ({what}): {'  '.join(addresses) or 'no listeners'}", flush=True)
            if generated:
                print(f"admin password: {generated} (shown once)", flush=True)
            await stop.wait()

    asyncio.run(_until_signalled(body))
    return 0


def _cmd_edge_run(ns: argparse.Namespace) -> int:
    from fieldgate import config as cfg
    from fieldgate.edge.agent import EdgeAgent
    from fieldgate.edge.config import EdgeConfig

    conf = cfg.load(EdgeConfig, Path(ns.config) if ns.config else None, env_prefix="FIELDGATE_EDGE")

    async def body(stop: asyncio.Event) -> None:
        async with EdgeAgent(conf) as agent:
            adapters = ", ".join(a.name for a in agent.adapters) or "none"
            mqtt = f" (MQTT {conf.mqtt.host}:{conf.mqtt.port}, {conf.mqtt.mode})" if conf.mqtt.enabled else ""
            print(
                f"edge agent {conf.edge_id} up: adapters {adapters}{mqtt}, uplink {conf.uplink.target}",
                flush=True,
            )
            await stop.wait()

    asyncio.run(_until_signalled(body))
    return 0


def _cmd_config_check(ns: argparse.Namespace) -> int:
    from fieldgate import config as cfg
    from fieldgate.cloud.config import CloudConfig
    from fieldgate.edge.config import EdgeConfig

    model = EdgeConfig if ns.kind == "edge" else CloudConfig
    conf = cfg.load(model, Path(ns.file))
    print(f"{ns.file}: valid {ns.kind} configuration")
    print(conf.model_dump_json(indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fieldgate", description="Edge-to-cloud device gateway suite.")
    p.add_argument("--log-level", default=os.environ.get("FIELDGATE_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run cloud + edge agent + embedded broker + simulated devices")
    up.add_argument("--data-dir", default=".fieldgate", help="where all state lives (default .fieldgate)")
    up.add_argument("--rest-port", type=int, default=8080)
    up.add_argument("--grpc-port", type=int, default=50051)
    up.add_argument("--mqtt-port", type=int, default=1883)
    up.add_argument(
        "--mqtt",
        choices=["embedded", "external"],
        default="embedded",
        help="embedded amqtt broker (default) or an external broker such as Mosquitto",
    )
    up.add_argument("--mqtt-host", default="127.0.0.1")
    up.add_argument(
        "--sims",
        default="mqtt:3",
        help="simulated devices: a number of MQTT devices, or kinds such as mqtt:3,serial,modbus,ble "
        "(default mqtt:3; 0 for none)",
    )
    up.add_argument(
        "--sim-rate", type=float, default=0.2, help="measurements per second per simulated device"
    )
    up.add_argument(
        "--edge-in-process",
        action="store_true",
        help="run the edge agent inside this process instead of as its own process",
    )
    up.set_defaults(func=_cmd_up)

    cloud = sub.add_parser("cloud", help="cloud services").add_subparsers(dest="cloud_cmd", required=True)
    cr = cloud.add_parser("run", help="run the all-in-one cloud process, or one service of it")
    cr.add_argument("--config", help="YAML file (docs/configuration.md); FIELDGATE_CLOUD__* env overrides")
    cr.add_argument(
        "service",
        nargs="?",
        choices=["inbound", "registration", "event-store", "command-delivery", "ingest", "api"],
        help="run only this service (needs bus.kind: kafka; command-delivery runs within ingest, "
        "which hosts the edge streams it delivers to; docs/operations/distributed.md)",
    )
    cr.set_defaults(func=_cmd_cloud_run)

    edge = sub.add_parser("edge", help="edge agent").add_subparsers(dest="edge_cmd", required=True)
    er = edge.add_parser("run", help="run an edge agent")
    er.add_argument("--config", help="YAML file (docs/configuration.md); FIELDGATE_EDGE__* env overrides")
    er.set_defaults(func=_cmd_edge_run)

    sim = sub.add_parser("sim", help="simulated devices").add_subparsers(dest="sim_cmd", required=True)
    sm = sim.add_parser("mqtt", help="simulated MQTT devices")
    from fieldgate.sims.mqtt import add_cli_arguments, run_from_args

    add_cli_arguments(sm)
    sm.set_defaults(func=run_from_args)

    conf = sub.add_parser("config", help="configuration tools").add_subparsers(
        dest="config_cmd", required=True
    )
    cc = conf.add_parser("check", help="validate a configuration file and print it with defaults")
    cc.add_argument("kind", choices=["edge", "cloud"])
    cc.add_argument("file")
    cc.set_defaults(func=_cmd_config_check)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(ns.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    for noisy in ("amqtt", "transitions", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pymodbus logs every timeout with a frame dump; the Modbus adapter counts and reports them.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # bleak warns once that it cannot run bluetoothctl (absent with the simulated BlueZ).
    logging.getLogger("bleak.backends.bluezdbus.version").setLevel(logging.ERROR)
    try:
        return int(ns.func(ns))
    except ConfigError as err:
        print(f"fieldgate: configuration error: {err}", file=sys.stderr)
        return 2
    except FieldgateError as err:
        print(f"fieldgate: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
