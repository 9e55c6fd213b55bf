"""Serial adapter: microcontrollers on UARTs / USB-serial, in readable (JSON lines) or compact
binary (COBS + CRC-16) mode. The protocol is docs/protocols/serial.md; the framers and codecs
are in :mod:`fieldgate.protocol.codec` (``serial_frames``, ``serial_binary``, ``cobs``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from fieldgate.edge.adapters.serial.config import SerialConfig, SerialPortConfig
from fieldgate.errors import ConfigError

if TYPE_CHECKING:
    from fieldgate.edge.adapters.serial.adapter import SerialAdapter

__all__ = ["SerialConfig", "SerialPortConfig", "build_serial_adapter"]


def build_serial_adapter(config: SerialConfig, *, tenants: Collection[str]) -> SerialAdapter:
    """The adapter for ``config``; a port whose tenant this agent does not serve is a
    configuration error (named by its port)."""
    for port in config.ports:
        if port.tenant not in tenants:
            raise ConfigError(f"serial.ports: {port.port}: tenant {port.tenant!r} is not in tenants")
    # Imported here so that an agent without serial ports never loads pyserial (memory).
    from fieldgate.edge.adapters.serial.adapter import SerialAdapter

    return SerialAdapter(config)


def __getattr__(name: str) -> object:
    """``SerialAdapter`` on first use only (keeps its transport library out of agents that don't need it)."""
    if name == "SerialAdapter":
        from fieldgate.edge.adapters.serial.adapter import SerialAdapter

        return SerialAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
