"""Modbus RTU southbound adapter (pymodbus over a serial line).

Polls configured register maps of the devices on one or more buses and turns them into
measurement events; delivers commands as coil/holding-register writes. See
docs/protocols/modbus.md for the configuration and the behaviour on failures.
"""

from __future__ import annotations

from fieldgate.edge.adapters.modbus.adapter import ModbusAdapter, build_modbus_adapter
from fieldgate.edge.adapters.modbus.config import (
    BusConfig,
    CommandConfig,
    DeviceConfig,
    ModbusConfig,
    RegisterConfig,
    WriteConfig,
)
from fieldgate.edge.adapters.modbus.stats import ModbusStats

__all__ = [
    "BusConfig",
    "CommandConfig",
    "DeviceConfig",
    "ModbusAdapter",
    "ModbusConfig",
    "ModbusStats",
    "RegisterConfig",
    "WriteConfig",
    "build_modbus_adapter",
]
