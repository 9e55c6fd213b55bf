"""The serial adapter: one task per configured port (see :mod:`.port`), one HealthBoard.

Implements :class:`fieldgate.edge.adapters.Adapter`. Each port is wired to one device, so a
command finds its port by (tenant, device).
"""

from __future__ import annotations

import asyncio

from fieldgate.edge.adapters import EventSink, OnlineCallback
from fieldgate.edge.adapters.serial.config import SerialConfig
from fieldgate.edge.adapters.serial.port import SerialPort
from fieldgate.edge.adapters.serial.stats import SerialStats
from fieldgate.edge.errors import DeliveryError
from fieldgate.edge.health import HealthBoard
from fieldgate.tasks import cancel_and_wait
from fieldgate.v1 import events_pb2 as pb


class SerialAdapter:
    name = "serial"

    def __init__(self, config: SerialConfig) -> None:
        self.config = config
        self.health = HealthBoard()
        self.stats = SerialStats()
        self.ports: dict[tuple[str, str], SerialPort] = {
            (p.tenant, p.device): SerialPort(p, self.health, self.stats) for p in config.ports
        }
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, sink: EventSink, on_online: OnlineCallback) -> None:
        if self._tasks:
            return
        for port in self.ports.values():
            self._tasks.append(
                asyncio.create_task(port.run(sink, on_online), name=f"serial {port.config.port}")
            )

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)

    def owns(self, tenant: str, device: str) -> bool:
        return (tenant, device) in self.ports

    def is_online(self, tenant: str, device: str) -> bool:
        port = self.ports.get((tenant, device))
        return port is not None and port.online

    async def send_command(self, tenant: str, device: str, invocation: pb.CommandInvocation) -> None:
        port = self.ports.get((tenant, device))
        if port is None:
            raise DeliveryError(f"no serial port is configured for {tenant}/{device}")
        await port.send_command(invocation)
