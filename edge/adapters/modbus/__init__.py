"""Modbus RTU southbound adapter (pymodbus over a serial line).

Polls configured register maps of the devices on one or more buses and turns them into
measurement events; delivers commands as coil/holding-register writes. See
docs/protocols/modbus.md for the configuration and the behaviour on failures.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from fieldgate.edge.adapters.modbus.config import (
    BusConfig,
    CommandConfig,
    DeviceConfig,
    ModbusConfig,
    RegisterConfig,
    WriteConfig,
)
from fieldgate.edge.adapters.modbus.stats import ModbusStats

if TYPE_CHECKING:
    from fieldgate.edge.adapters.modbus.adapter import ModbusAdapter


def build_modbus_adapter(config: ModbusConfig, *, tenants: Collection[str]) -> ModbusAdapter:
    """See :func:`fieldgate.edge.adapters.modbus.adapter.build_modbus_adapter`; imported here so
    that an agent without Modbus buses never loads pymodbus (memory)."""
    from fieldgate.edge.adapters.modbus import adapter

    return adapter.build_modbus_adapter(config, tenants=tenants)


__all__ = [
    "BusConfig",
    "CommandConfig",
    "DeviceConfig",
    "ModbusConfig",
    "ModbusStats",
    "RegisterConfig",
    "WriteConfig",
    "build_modbus_adapter",
]


def __getattr__(name: str) -> object:
    """``ModbusAdapter`` on first use only (keeps its transport library out of agents that don't need it)."""
    if name == "ModbusAdapter":
        from fieldgate.edge.adapters.modbus.adapter import ModbusAdapter

        return ModbusAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
