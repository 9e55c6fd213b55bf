"""Apache ZooKeeper (standalone) for tests.

``start_zookeeper`` writes ``zoo.cfg`` into a fresh directory under the workdir (client port on
127.0.0.1, data in the workdir, no admin HTTP server, the ``ruok``/``srvr`` four-letter words
allowed), starts ``QuorumPeerMain`` with a 256 MiB heap and waits until ``ruok`` answers ``imok``
and ``srvr`` reports the standalone mode (ZooKeeper answers ``imok`` slightly before it serves).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fieldgate.devservers._jars import ZOOKEEPER, fetch, java_executable
from fieldgate.devservers._process import JavaProcess, ServerHandle, free_port, log4j2_config

HEAP = "256m"
READY_TIMEOUT_S = 60.0


@dataclass
class ZooKeeperServer(ServerHandle):
    """A running standalone ZooKeeper; ``hosts`` is kazoo's ``hosts`` argument."""

    @property
    def hosts(self) -> str:
        return f"{self.host}:{self.port}"


def zoo_cfg(host: str, port: int, data_dir: Path) -> str:
    settings = {
        "tickTime": "2000",
        "initLimit": "10",
        "syncLimit": "5",
        "dataDir": str(data_dir),
        "clientPort": str(port),
        "clientPortAddress": host,
        "maxClientCnxns": "0",
        "admin.enableServer": "false",
        "4lw.commands.whitelist": "ruok,srvr",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def four_letter_word(host: str, port: int, word: str, timeout: float = 2.0) -> str:
    """Send a ZooKeeper four-letter command and return its answer ('' if unreachable)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def _serving(host: str, port: int) -> bool:
    return four_letter_word(host, port, "ruok") == "imok" and "Mode:" in four_letter_word(host, port, "srvr")


def start_zookeeper(workdir: Path, *, host: str = "127.0.0.1", port: int | None = None) -> ZooKeeperServer:
    """Start ZooKeeper on a free (or the given) port; the caller must ``stop()`` it."""
    jars = fetch(ZOOKEEPER)
    port = port or free_port(host)
    # Absolute: the JVM runs in the workdir, and its configuration names paths in it.
    workdir = Path(workdir).resolve() / f"zookeeper-{port}"
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    config = workdir / "zoo.cfg"
    config.write_text(zoo_cfg(host, port, workdir / "data"))
    command = [
        java_executable(),
        f"-Xmx{HEAP}",
        f"-Xms{HEAP}",
        "-Djava.awt.headless=true",
        "-Dzookeeper.jmx.log4j.disable=true",
        f"-Dlog4j2.configurationFile={log4j2_config(workdir)}",
        "-cp",
        f"{jars}/*",
        "org.apache.zookeeper.server.quorum.QuorumPeerMain",
        str(config),
    ]
    process = JavaProcess("zookeeper", command, workdir)
    server = ZooKeeperServer(host, port, workdir, process)
    server.startup_seconds = process.wait_ready(lambda: _serving(host, port), READY_TIMEOUT_S)
    return server


@contextmanager
def zookeeper_server(workdir: Path) -> Iterator[ZooKeeperServer]:
    """A standalone ZooKeeper on 127.0.0.1 for the duration of the ``with`` block."""
    server = start_zookeeper(workdir)
    try:
        yield server
    finally:
        server.stop()
