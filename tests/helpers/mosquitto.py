"""A real Mosquitto broker for tests, started from fieldgate's shipped configuration.

The test owns the process: :func:`start_mosquitto` writes a config file under the test's
``tmp_path`` (the shipped ``mosquitto-fieldgate.conf`` with the listener moved to a free
127.0.0.1 port, persistence and log in ``tmp_path``), starts ``/usr/sbin/mosquitto``, waits until
the port accepts connections and returns a handle; ``stop()`` ends it by PID (SIGTERM, then
SIGKILL). The ``mosquitto`` fixture does all that and always stops it at teardown.

Usage from another test module::

    from tests.helpers.mosquitto import mosquitto  # noqa: F401  (fixture)

    async def test_x(mosquitto: Mosquitto) -> None:
        ... MqttConfig(mode="external", host=mosquitto.host, port=mosquitto.port) ...
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import fieldgate.edge.adapters.mqtt as mqtt_adapter
from tests.helpers.waiting import free_port, wait_for_port

MOSQUITTO = "/usr/sbin/mosquitto"
SHIPPED_CONFIG = Path(mqtt_adapter.__file__).with_name("mosquitto-fieldgate.conf")


def render_config(
    port: int, workdir: Path, *, base: str | None = None, overrides: dict[str, str] | None = None
) -> str:
    """The shipped configuration pointed at ``port`` and ``workdir``; ``overrides`` replace
    (or add) options by name, e.g. ``{"max_queued_messages": "1000"}``."""
    text = SHIPPED_CONFIG.read_text() if base is None else base
    options = {
        "listener": f"{port} 127.0.0.1",
        "persistence_location": f"{workdir}/",
        "log_dest": f"file {workdir / 'mosquitto.log'}",
        **(overrides or {}),
    }
    lines = []
    for line in text.splitlines():
        name = line.split(None, 1)[0] if line.strip() and not line.lstrip().startswith("#") else ""
        if name in options:
            continue
        lines.append(line)
    lines += [f"{name} {value}" for name, value in options.items()]
    if os.geteuid() == 0:
        # As root Mosquitto switches to user "mosquitto", who cannot write to tmp_path.
        lines.append(f"user {getpass.getuser()}")
    return "\n".join(lines) + "\n"


@dataclass
class Mosquitto:
    port: int
    workdir: Path
    config_text: str
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self, timeout: float = 30.0) -> None:
        self.config_path.write_text(self.config_text)
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.port, self.host, timeout, proc=self.proc)
        except AssertionError as err:
            self.stop()
            raise RuntimeError(f"mosquitto: {err}: {self.log_text()}") from None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)  # a clean shutdown writes the persistence file
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def dropped_messages_logged(self) -> bool:
        return re.search(r"[Oo]utgoing messages are being dropped", self.log_text()) is not None


def start_mosquitto(
    tmp_path: Path, *, port: int | None = None, overrides: dict[str, str] | None = None
) -> Mosquitto:
    """Start Mosquitto (on ``port`` or a free one); the caller must ``stop()`` it."""
    if not shutil.which(MOSQUITTO):
        pytest.skip(f"{MOSQUITTO} not installed (apt-get install mosquitto)")
    workdir = tmp_path / f"mosquitto-{time.monotonic_ns()}"
    workdir.mkdir()
    port = port or free_port()
    broker = Mosquitto(
        port=port, workdir=workdir, config_text=render_config(port, workdir, overrides=overrides)
    )
    broker.start()
    return broker


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto broker with fieldgate's shipped configuration on a free port."""
    broker = start_mosquitto(tmp_path)
    try:
        yield broker
    finally:
        broker.stop()
