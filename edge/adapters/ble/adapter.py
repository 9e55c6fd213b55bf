"""The BLE adapter: the allow-listed devices of ``BleConfig``, each with its own link.

Orchestration only: one coordinator task and one consumer task per device
(:class:`~fieldgate.edge.adapters.ble.link.DeviceLink`), one shared scanner
(:class:`~fieldgate.edge.adapters.ble.discovery.Discovery`). A device that is slow, absent or
misbehaving only affects its own link. bleak talks to BlueZ over the system D-Bus
(``DBUS_SYSTEM_BUS_ADDRESS``); in CI that is the simulated BlueZ of :mod:`fieldgate.sims.ble`.
"""

from __future__ import annotations

import asyncio
import contextlib

from fieldgate.edge.adapters import EventSink, OnlineCallback
from fieldgate.edge.adapters.ble.config import BleConfig
from fieldgate.edge.adapters.ble.discovery import Discovery
from fieldgate.edge.adapters.ble.link import DeviceLink
from fieldgate.edge.adapters.ble.stats import BleStats
from fieldgate.edge.errors import DeliveryError
from fieldgate.edge.health import HealthBoard
from fieldgate.tasks import cancel_and_wait
from fieldgate.v1 import events_pb2 as pb


class BleAdapter:
    name = "ble"

    def __init__(self, config: BleConfig) -> None:
        self.config = config
        self.health = HealthBoard()
        self.stats = BleStats()
        self._discovery = Discovery(config.adapter, self.stats)
        self._links = {
            (d.tenant, d.device): DeviceLink(d, config, self._discovery, self.health, self.stats)
            for d in config.devices
        }
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, sink: EventSink, on_online: OnlineCallback) -> None:
        if self._tasks:
            return
        for (_tenant, device), link in self._links.items():
            self._tasks.append(asyncio.create_task(link.drain(sink), name=f"ble-drain-{device}"))
            self._tasks.append(asyncio.create_task(link.run(on_online), name=f"ble-link-{device}"))

    async def stop(self) -> None:
        for link in self._links.values():
            link.close()
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self._discovery.close()

    def owns(self, tenant: str, device: str) -> bool:
        return (tenant, device) in self._links

    def is_online(self, tenant: str, device: str) -> bool:
        link = self._links.get((tenant, device))
        return link is not None and link.online

    async def send_command(self, tenant: str, device: str, invocation: pb.CommandInvocation) -> None:
        link = self._links.get((tenant, device))
        if link is None:
            raise DeliveryError(f"no BLE device {tenant}/{device}")
        await link.send_command(invocation)
