"""The whole suite on one machine: cloud + one edge agent + embedded broker + simulated devices.

Used by ``fieldgate up``, by the end-to-end tests and by the benchmarks, so that all three run
exactly the same assembly.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.config import CloudConfig, TenantConfig
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import BufferConfig, EdgeConfig, MqttConfig, UplinkConfig

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for servers that cannot report a port-0 bind)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
        self.sim: object | None = None
        self.admin_password: str | None = options.admin_password

    def edge_config(self) -> EdgeConfig:
        o = self.options
        return EdgeConfig(
            edge_id=o.edge_id,
            data_dir=o.data_dir / "edge",
            mqtt=MqttConfig(mode=o.mqtt_mode, host=o.mqtt_host, port=self.mqtt_port),
            buffer=BufferConfig(max_events=o.buffer_max_events),
            uplink=UplinkConfig(target=f"127.0.0.1:{self.cloud.grpc_port}"),
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
            self.edge = EdgeAgent(self.edge_config())
            await self.edge.start()
            if self.options.sims > 0:
                from fieldgate.sims.mqtt import MqttDeviceSim

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
            await self.sim.stop()  # type: ignore[attr-defined]
            self.sim = None
        if self.edge is not None:
            await self.edge.stop()
            self.edge = None
        await self.cloud.stop()

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
