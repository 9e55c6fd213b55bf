"""Command line for the test servers.

``python -m fieldgate.devservers fetch`` downloads every server's jars into the cache (for CI, before
the tests; prints each directory and its size). ``python -m fieldgate.devservers run kafka`` (or
``zookeeper``, ``cassandra``) starts one server on a free 127.0.0.1 port in a temporary directory
(``--workdir`` to keep it), prints its address and runs until Ctrl-C or SIGTERM, then stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from fieldgate.devservers._jars import ALL_SERVERS, ServerUnavailable, fetch, jar_cache
from fieldgate.devservers.cassandra import start_cassandra
from fieldgate.devservers.kafka import start_kafka
from fieldgate.devservers.zookeeper import start_zookeeper


def _size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _fetch(names: list[str]) -> int:
    print(f"jar cache: {jar_cache()}")
    for server in ALL_SERVERS:
        if names and server.name not in names:
            continue
        directory = fetch(server)
        print(f"{server.name} {server.version}: {directory} ({_size_mib(directory):.0f} MiB)")
    return 0


def _run(name: str, workdir: Path | None) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix=f"fieldgate-{name}-") as tmp:
        base = workdir or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        if name == "kafka":
            kafka = start_kafka(base)
            server, address = kafka.process, f"bootstrap.servers={kafka.bootstrap}"
            seconds = kafka.startup_seconds
        elif name == "zookeeper":
            zookeeper = start_zookeeper(base)
            server, address = zookeeper.process, f"hosts={zookeeper.hosts}"
            seconds = zookeeper.startup_seconds
        else:
            cassandra = start_cassandra(base)
            server, address = cassandra.process, f"contact point={cassandra.contact_point}"
            seconds = cassandra.startup_seconds
        print(
            f"{name} ready in {seconds:.1f}s: {address} (pid {server.pid}, dir {server.workdir})", flush=True
        )
        try:
            while not stop.wait(1.0):
                if not server.running():
                    print(f"{name} exited:\n{server.log_tail()}", file=sys.stderr)
                    return 1
        finally:
            print(f"stopping {name} (pid {server.pid})", flush=True)
            server.stop(grace=60.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fieldgate.devservers", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download the jars into the cache")
    fetch_cmd.add_argument("servers", nargs="*", help="kafka, zookeeper, cassandra (default: all)")
    run_cmd = commands.add_parser("run", help="run one server in the foreground until Ctrl-C")
    run_cmd.add_argument("server", choices=[s.name for s in ALL_SERVERS])
    run_cmd.add_argument("--workdir", type=Path, help="keep the server's files here")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            unknown = set(args.servers) - {s.name for s in ALL_SERVERS}
            if unknown:
                parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
            return _fetch(args.servers)
        return _run(args.server, args.workdir)
    except ServerUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
