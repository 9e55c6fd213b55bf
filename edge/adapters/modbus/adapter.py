"""The Modbus RTU adapter: configured buses → measurement events; commands → register writes.

Orchestration only: the wire is in :mod:`.link`, scheduling and failure policy per bus in
:mod:`.bus`, register arithmetic in :mod:`.registers`. Each poll of a device becomes one
measurement event with the device's named, scaled values; units travel as event metadata
``unit.<name>`` (e.g. ``"°C"``), the unit id as ``modbus.unit``.

Commands: a command's name selects a configured list of writes; each takes its value from a
parameter of the invocation (``from_param``) or a constant. Modbus devices do not answer
commands on their own, so once every write is acknowledged by the device the adapter itself
emits the command_response event (``{"written": {<name>: <value>, ...}}``) — durable before
``send_command`` returns, which is when the router reports DELIVERED. A write that fails
raises DeliveryError with the reason (timeout, exception response, port gone).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from typing import Any

from fieldgate.edge.adapters import EventSink, OnlineCallback
from fieldgate.edge.adapters.modbus.bus import BusCoordinator, DeviceState, WriteOp
from fieldgate.edge.adapters.modbus.config import BusConfig, ModbusConfig, WriteConfig
from fieldgate.edge.adapters.modbus.link import LinkError, SerialLink
from fieldgate.edge.adapters.modbus.registers import RegisterValueError, encode_value
from fieldgate.edge.adapters.modbus.stats import ModbusStats
from fieldgate.edge.errors import DeliveryError, EdgeError
from fieldgate.edge.health import HealthBoard
from fieldgate.errors import ConfigError
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

LinkFactory = Callable[[BusConfig], SerialLink]


class ModbusAdapter:
    """See the module docstring. ``health`` and ``stats`` are read by the agent's metrics."""

    name = "modbus"

    def __init__(self, config: ModbusConfig, *, link_factory: LinkFactory = SerialLink) -> None:
        self.config = config
        self.health = HealthBoard()
        self.stats = ModbusStats()
        self.buses = [
            BusCoordinator(
                bus,
                link_factory(bus),
                health=self.health,
                stats=self.stats,
                on_values=self._emit_values,
                on_online=self._device_online,
            )
            for bus in config.buses
        ]
        self._devices: dict[tuple[str, str], tuple[BusCoordinator, DeviceState]] = {
            dev.key: (bus, dev) for bus in self.buses for dev in bus.devices
        }
        self._sink: EventSink | None = None
        self._on_online: OnlineCallback | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, sink: EventSink, on_online: OnlineCallback) -> None:
        self._sink = sink
        self._on_online = on_online
        for bus in self.buses:
            bus.start()
        log.info("modbus adapter: %d buses, %d devices", len(self.buses), len(self._devices))

    async def stop(self) -> None:
        for bus in self.buses:
            await bus.stop()

    def device(self, tenant: str, device: str) -> DeviceState | None:
        entry = self._devices.get((tenant, device))
        return None if entry is None else entry[1]

    # ------------------------------------------------------------------ Adapter

    def owns(self, tenant: str, device: str) -> bool:
        return (tenant, device) in self._devices

    def is_online(self, tenant: str, device: str) -> bool:
        entry = self._devices.get((tenant, device))
        return entry is not None and entry[1].online

    async def send_command(self, tenant: str, device: str, invocation: pb.CommandInvocation) -> None:
        entry = self._devices.get((tenant, device))
        if entry is None:
            raise DeliveryError("not a modbus device of this edge")
        bus, dev = entry
        try:
            ops, written = self._plan(dev, invocation)
        except DeliveryError:
            self.stats.commands_failed += 1
            raise
        try:
            await bus.write(dev, ops)
        except LinkError as err:
            self.stats.commands_failed += 1
            raise DeliveryError(err.reason) from err
        self.stats.commands_sent += 1
        t = now_ms()
        event = pb.Event(tenant=tenant, device=device, event_time_ms=t, received_time_ms=t)
        event.command_response.invocation = invocation.invocation
        event.command_response.response_json = json.dumps({"written": written}, separators=(",", ":"))
        event.metadata["adapter"] = self.name
        sink = self._sink
        if sink is None:
            return
        try:
            await sink.accept([event], source=f"modbus:{bus.config.port}")
        except EdgeError as err:
            # The device has the value; only the answer is lost: the router times the command out.
            log.error("command response of %s not recorded: %s", invocation.invocation, err)

    def _plan(
        self, dev: DeviceState, invocation: pb.CommandInvocation
    ) -> tuple[list[WriteOp], dict[str, Any]]:
        command = dev.commands.get(invocation.command)
        if command is None:
            known = ", ".join(sorted(dev.commands)) or "none"
            raise DeliveryError(f"unknown command {invocation.command!r} (known: {known})")
        try:
            params = json.loads(invocation.params_json) if invocation.params_json else {}
        except ValueError as err:
            raise DeliveryError("params are not valid JSON") from err
        if not isinstance(params, dict):
            raise DeliveryError("params must be a JSON object")
        ops: list[WriteOp] = []
        written: dict[str, Any] = {}
        for write in command.writes:
            if write.from_param is not None:
                if write.from_param not in params:
                    raise DeliveryError(f"missing parameter {write.from_param!r}")
                value = params[write.from_param]
            else:
                value = write.value
            op, label = self._op(dev, write, value)
            ops.append(op)
            written[label] = value
        return ops, written

    @staticmethod
    def _op(dev: DeviceState, write: WriteConfig, value: object) -> tuple[WriteOp, str]:
        if write.reg is not None:
            reg = dev.registers[write.reg]
            kind, address, label = reg.type, reg.address, reg.name
            dt, order, scale, offset = reg.data_type, reg.word_order, reg.scale, reg.offset
        else:
            assert write.address is not None  # validated at load
            kind = write.type or "holding"
            address = write.address
            dt = write.data_type or ("bool" if kind == "coil" else "uint16")
            order, scale, offset = write.word_order, write.scale, write.offset
            label = f"{kind}:{address}"
        try:
            encoded = encode_value(dt, order, scale, offset, value)
        except RegisterValueError as err:
            raise DeliveryError(f"{label}: {err.reason}") from err
        return WriteOp(kind, address, encoded), label

    # ------------------------------------------------------------------ bus callbacks

    async def _emit_values(self, dev: DeviceState, values: dict[str, float]) -> None:
        sink = self._sink
        if sink is None:
            return
        t = now_ms()
        cfg = dev.config
        event = pb.Event(tenant=cfg.tenant, device=cfg.device, event_time_ms=t, received_time_ms=t)
        for name, value in values.items():
            event.measurement.values[name] = value
            unit = dev.registers[name].unit
            if unit:
                event.metadata[f"unit.{name}"] = unit
        event.metadata["adapter"] = self.name
        event.metadata["modbus.unit"] = str(cfg.unit)
        try:
            await sink.accept([event], source=f"modbus:{cfg.device}")
        except EdgeError as err:
            # BufferFull under reject_new: a sample of state the next poll reads again.
            self.stats.samples_dropped += 1
            log.debug("modbus sample of %s dropped: %s", cfg.device, err)
            return
        self.stats.measurements_accepted += 1

    async def _device_online(self, dev: DeviceState) -> None:
        if self._on_online is not None:
            await self._on_online(dev.config.tenant, dev.config.device)


def build_modbus_adapter(config: ModbusConfig, *, tenants: Collection[str]) -> ModbusAdapter:
    """The adapter for ``config``; every device's tenant must be one this edge serves."""
    served = set(tenants)
    for b, bus in enumerate(config.buses):
        for d, dev in enumerate(bus.devices):
            if dev.tenant not in served:
                raise ConfigError(
                    f"modbus.buses.{b}.devices.{d}.tenant: {dev.tenant!r} is not one of this edge's "
                    f"tenants ({', '.join(sorted(served))})"
                )
    return ModbusAdapter(config)
