"""BLE adapter (bleak): allow-listed peripherals, GATT notifications in, characteristic writes out.

``build_ble_adapter(config, tenants=...)`` is what the edge agent calls; the protocol as a
firmware author sees it is in docs/protocols/ble.md.
"""

from __future__ import annotations

from collections.abc import Collection

from fieldgate.edge.adapters.ble.adapter import BleAdapter
from fieldgate.edge.adapters.ble.config import BleConfig, BleDeviceConfig
from fieldgate.errors import ConfigError

__all__ = ["BleAdapter", "BleConfig", "BleDeviceConfig", "build_ble_adapter"]


def build_ble_adapter(config: BleConfig, *, tenants: Collection[str]) -> BleAdapter:
    """The BLE adapter for ``config``; every device must belong to one of ``tenants``."""
    for d in config.devices:
        if d.tenant not in tenants:
            raise ConfigError(f"ble.devices: device {d.device!r} has unknown tenant {d.tenant!r}")
    return BleAdapter(config)
