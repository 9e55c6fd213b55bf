"""Per-device link health, kept by the adapter that talks to the device.

Every southbound adapter owns one :class:`HealthBoard` (attribute ``health``). It records, per
(tenant, device): connected or not, when the device was last heard from, how often the link was
re-established and errors by kind ("crc", "garbage", "timeout", "exception_response", ...).
The agent exports the board as Prometheus metrics and forwards connect/disconnect transitions
to the cloud as PRESENCE state changes, through the ``on_change`` callback it installs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fieldgate.timeutil import now_ms

DeviceKey = tuple[str, str]  # (tenant, device)
OnPresence = Callable[[str, str, bool], None]  # (tenant, device, connected)

# Bounded: a misbehaving bus that invents device ids must not grow memory without limit.
MAX_DEVICES = 10_000
MAX_ERROR_KINDS = 32


@dataclass
class LinkHealth:
    connected: bool = False
    last_seen_ms: int = 0
    reconnects: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    # A transition was forwarded: until then "disconnected" is the unknown initial state.
    reported: bool = False


class HealthBoard:
    def __init__(self, max_devices: int = MAX_DEVICES) -> None:
        self._devices: dict[DeviceKey, LinkHealth] = {}
        self._max = max_devices
        self.on_change: OnPresence | None = None
        # Devices not tracked because the board was full.
        self.untracked = 0

    def _get(self, tenant: str, device: str) -> LinkHealth | None:
        key = (tenant, device)
        h = self._devices.get(key)
        if h is None:
            if len(self._devices) >= self._max:
                self.untracked += 1
                return None
            h = self._devices[key] = LinkHealth()
        return h

    def seen(self, tenant: str, device: str) -> None:
        """The device sent something valid just now (implies connected)."""
        h = self._get(tenant, device)
        if h is not None:
            h.last_seen_ms = now_ms()
            if not h.connected:
                self._flip(tenant, device, h, True)

    def connected(self, tenant: str, device: str, *, reconnect: bool = False) -> None:
        h = self._get(tenant, device)
        if h is not None:
            if reconnect:
                h.reconnects += 1
            if not h.connected:
                self._flip(tenant, device, h, True)

    def disconnected(self, tenant: str, device: str) -> None:
        h = self._get(tenant, device)
        if h is not None and h.connected:
            self._flip(tenant, device, h, False)

    def down(self, tenant: str, device: str) -> None:
        """The device is known to be unreachable: like :meth:`disconnected`, but also reported
        when nothing was reported yet (a port that does not open at start, a device's will
        message after a restart of the agent), so the cloud does not keep an older "connected"."""
        h = self._get(tenant, device)
        if h is not None and (h.connected or not h.reported):
            self._flip(tenant, device, h, False)

    def error(self, tenant: str, device: str, kind: str) -> None:
        h = self._get(tenant, device)
        if h is None:
            return
        if kind not in h.errors and len(h.errors) >= MAX_ERROR_KINDS:
            kind = "other"
        h.errors[kind] = h.errors.get(kind, 0) + 1

    def snapshot(self) -> dict[DeviceKey, LinkHealth]:
        return {
            k: LinkHealth(v.connected, v.last_seen_ms, v.reconnects, dict(v.errors), v.reported)
            for k, v in self._devices.items()
        }

    def _flip(self, tenant: str, device: str, h: LinkHealth, up: bool) -> None:
        h.connected = up
        h.reported = True
        if self.on_change is not None:
            self.on_change(tenant, device, up)
