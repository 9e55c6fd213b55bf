"""A JVM server process owned by the caller: start, wait until ready, stop by PID.

Shared by the Kafka, ZooKeeper and Cassandra launchers. Output goes to ``<workdir>/stdout.log``
(the servers' own logs go to ``<workdir>/server.log`` through a log4j2 or logback file written by
each launcher); when a server fails to come up, the tail of both is put into the error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from fieldgate.devservers._jars import ServerUnavailable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def log4j2_config(workdir: Path, level: str = "INFO") -> Path:
    """A log4j2 properties file sending every log line to ``<workdir>/server.log``."""
    path = workdir / "log4j2.properties"
    path.write_text(
        "\n".join(
            [
                f"rootLogger.level={level}",
                "rootLogger.appenderRef.file.ref=FILE",
                "appender.file.type=File",
                "appender.file.name=FILE",
                f"appender.file.fileName={workdir / 'server.log'}",
                "appender.file.layout.type=PatternLayout",
                "appender.file.layout.pattern=[%d] %p %m (%c)%n",
                "",
            ]
        )
    )
    return path


class JavaProcess:
    """One running JVM; ``stop()`` sends SIGTERM, then SIGKILL after ``grace`` seconds."""

    def __init__(self, name: str, command: Sequence[str], workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.command = list(command)
        self._stdout = (workdir / "stdout.log").open("ab")
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            self.command,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
        )
        self.pid = self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, probe: Callable[[], bool], timeout: float, interval: float = 0.25) -> float:
        """Call ``probe`` until it returns True; the seconds it took. Raises if the JVM exits
        or ``timeout`` passes (the process is stopped then)."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if not self.running():
                code = self.proc.returncode if self.proc is not None else None
                self.stop()
                raise ServerUnavailable(f"{self.name} exited with {code}:\n{self.log_tail()}")
            if probe():
                return time.monotonic() - started
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise ServerUnavailable(f"{self.name} not ready within {timeout}s:\n{tail}")
            time.sleep(interval)

    def stop(self, grace: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        try:
            if proc is None or proc.poll() is not None:
                return
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(grace)
        finally:
            self._stdout.close()

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for name in ("stdout.log", "server.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)


@dataclass
class ServerHandle:
    """What every started server is: where it listens, its directory and its JVM (stopped by
    PID with ``stop_grace_s`` for a clean shutdown)."""

    host: str
    port: int
    workdir: Path
    process: JavaProcess
    startup_seconds: float = 0.0
    stop_grace_s: ClassVar[float] = 30.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.stop(grace=self.stop_grace_s)
