"""BLE adapter (bleak): allow-listed peripherals, GATT notifications in, characteristic writes out.

``build_ble_adapter(config, tenants=...)`` is what the edge agent calls; the protocol as a
firmware author sees it is in docs/protocols/ble.md.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from fieldgate.edge.adapters.ble.config import BleConfig, BleDeviceConfig
from fieldgate.errors import ConfigError

if TYPE_CHECKING:
    from fieldgate.edge.adapters.ble.adapter import BleAdapter

__all__ = ["BleConfig", "BleDeviceConfig", "build_ble_adapter"]


def build_ble_adapter(config: BleConfig, *, tenants: Collection[str]) -> BleAdapter:
    """The BLE adapter for ``config``; every device must belong to one of ``tenants``."""
    for d in config.devices:
        if d.tenant not in tenants:
            raise ConfigError(f"ble.devices: device {d.device!r} has unknown tenant {d.tenant!r}")
    # Imported here so that an agent without BLE devices never loads bleak/dbus-fast (memory).
    from fieldgate.edge.adapters.ble.adapter import BleAdapter

    return BleAdapter(config)


def __getattr__(name: str) -> object:
    """``BleAdapter`` on first use only (keeps its transport library out of agents that don't need it)."""
    if name == "BleAdapter":
        from fieldgate.edge.adapters.ble.adapter import BleAdapter

        return BleAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
