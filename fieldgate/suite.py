"""The whole suite on one machine: cloud + one edge agent + embedded broker + simulated devices.

Used by ``fieldgate up``, by the end-to-end tests and by the benchmarks, so that all three run
exactly the same assembly.

The edge agent runs either inside this process (``edge_process=False``: tests reach into it) or
as its own process (``fieldgate edge run`` with a generated configuration file), as it would on
a gateway; ``fieldgate up`` does the latter, so the edge and the cloud each get a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import yaml

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.config import CloudConfig, TenantConfig
from fieldgate.config import validate
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import BufferConfig, EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.errors import ConfigError, FieldgateError
from fieldgate.sims.mqtt import MqttDeviceSim
from fieldgate.southbound_sims import SouthboundSims

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for servers that cannot report a port-0 bind)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SuiteError(FieldgateError):
    """A part of the suite failed to start."""


@dataclass(frozen=True)
class SuiteOptions:
    data_dir: Path
    rest_port: int = 0  # 0 = pick a free port
    grpc_port: int = 0
    mqtt_port: int = 0
    mqtt_mode: Literal["embedded", "external"] = "embedded"
    mqtt_host: str = "127.0.0.1"
    sims: int = 0
    sim_rate_hz: float = 1.0
    admin_password: str | None = None
    auto_register: bool = True
    edge_id: str = "edge-1"
    buffer_max_events: int = 1_000_000
    # Run the edge agent as a child process (``fieldgate edge run``) instead of in this one.
    edge_process: bool = False
    log_level: str = "INFO"
    # Southbound sims beside the MQTT ones: any of "serial", "modbus", "ble".
    southbound: tuple[str, ...] = ()


class Suite:
    """Start order: cloud, edge agent (with its broker), simulators; stop in reverse."""

    def __init__(self, options: SuiteOptions) -> None:
        self.options = options
        self.mqtt_port = options.mqtt_port or free_port()
        self.mqtt_host = options.mqtt_host
        cloud_cfg = CloudConfig(
            data_dir=options.data_dir / "cloud",
            grpc_port=options.grpc_port,
            rest_port=options.rest_port,
            tenants=(
                TenantConfig(token="default", name="Default tenant", auto_register=options.auto_register),
            ),
        )
        self.cloud = CloudApp(cloud_cfg)
        self.edge: EdgeAgent | None = None
        self.edge_proc: asyncio.subprocess.Process | None = None
        self.southbound: SouthboundSims | None = None
        if "ble" in options.southbound and not options.edge_process:
            raise ConfigError("the BLE sim needs the edge agent in its own process (its D-Bus is private)")
        self._edge_pump: asyncio.Task[None] | None = None
        self.sim: MqttDeviceSim | None = None
        self.admin_password: str | None = options.admin_password

    def edge_config(self) -> EdgeConfig:
        o = self.options
        base = EdgeConfig(
            edge_id=o.edge_id,
            data_dir=o.data_dir / "edge",
            mqtt=MqttConfig(mode=o.mqtt_mode, host=o.mqtt_host, port=self.mqtt_port),
            buffer=BufferConfig(max_events=o.buffer_max_events),
            uplink=UplinkConfig(target=f"127.0.0.1:{self.cloud.grpc_port}"),
        )
        if self.southbound is None:
            return base
        return validate(
            EdgeConfig, {**base.model_dump(by_alias=True), **self.southbound.edge_sections()}, "fieldgate up"
        )

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.cloud.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.cloud.grpc_port}"

    async def start(self) -> None:
        try:
            await self.cloud.start()
            generated = await self.cloud.ensure_admin(self.options.admin_password)
            if generated is not None:
                self.admin_password = generated
            if self.options.southbound:
                self.southbound = SouthboundSims(
                    self.options.southbound, self.options.data_dir / "sims", rate_hz=self.options.sim_rate_hz
                )
                await self.southbound.start()
                await self.southbound.register(self.cloud.registry)
            if self.options.edge_process:
                await self._start_edge_process()
            else:
                self.edge = EdgeAgent(self.edge_config())
                await self.edge.start()
            if self.options.sims > 0:
                sim = MqttDeviceSim(
                    host=self.mqtt_host,
                    port=self.mqtt_port,
                    devices=self.options.sims,
                    rate_hz=self.options.sim_rate_hz,
                )
                await sim.start()
                self.sim = sim
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.sim is not None:
            await self.sim.stop()
            self.sim = None
        if self.edge is not None:
            await self.edge.stop()
            self.edge = None
        await self._stop_edge_process()
        if self.southbound is not None:
            await self.southbound.stop()
            self.southbound = None
        await self.cloud.stop()

    @property
    def edge_pid(self) -> int:
        """The process the edge agent runs in."""
        return self.edge_proc.pid if self.edge_proc is not None else os.getpid()

    async def _start_edge_process(self, timeout_s: float = 30.0) -> None:
        config = self.edge_config()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.options.data_dir / "edge.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fieldgate.cli", "--log-level", self.options.log_level,
            "edge", "run", "--config", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(self.southbound.edge_env() if self.southbound else {})},
        )  # fmt: skip
        self.edge_proc = proc
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise SuiteError(f"edge agent exited while starting (code {await proc.wait()})")
                    sys.stdout.write(line.decode(errors="replace"))
                    if line.startswith(b"edge agent ") and b" up: " in line:
                        break
        except TimeoutError as err:
            raise SuiteError(f"edge agent not up within {timeout_s}s") from err
        self._edge_pump = asyncio.create_task(self._pump(proc.stdout), name="edge-output")

    @staticmethod
    async def _pump(stream: asyncio.StreamReader) -> None:
        """The child's log lines go to this process's stdout (bounded: one line at a time)."""
        while line := await stream.readline():
            sys.stdout.write(line.decode(errors="replace"))
            sys.stdout.flush()

    async def _stop_edge_process(self, grace_s: float = 15.0) -> None:
        proc, self.edge_proc = self.edge_proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s):
                    await proc.wait()
            except TimeoutError:
                log.warning("edge agent did not stop within %.0fs; killing it", grace_s)
                proc.kill()
                await proc.wait()
        if self._edge_pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._edge_pump
            self._edge_pump = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def describe(self) -> Iterator[str]:
        yield f"REST API     {self.rest_url}/api/v1   (OpenAPI: {self.rest_url}/openapi.json, docs: {self.rest_url}/docs)"
        yield f"Dashboard    {self.rest_url}/"
        yield f"gRPC         {self.grpc_target}"
        yield f"MQTT         {self.mqtt_host}:{self.mqtt_port}  (devices publish to fieldgate/default/devices/<device>/events)"
        yield f"Data         {self.options.data_dir}"
        for line in self.southbound.describe() if self.southbound else ():
            yield f"Simulator    {line}"
