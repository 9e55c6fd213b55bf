"""The in-memory lookups both registries keep for inbound processing's hot path.

A device once found is served from a bounded LRU (``device_cache_size``; overflow: the least
recently used is forgotten) for ``device_cache_s`` seconds: devices can be changed and deleted,
possibly by another process, whose change this one sees within that time; this instance's own
writes drop the entry at once. Misses always ask the store, since another process may have
created the device meanwhile. Active assignments change more often, so a lookup (also "none")
is kept only ``assignment_cache_s`` seconds, and this instance's own writes drop it at once.
Values are serialized protobufs: a cached entity is parsed per lookup, so callers never share a
mutable message.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

#: How long a found device is served from memory (seconds).
DEVICE_CACHE_S = 10.0


class RegistryCache:
    def __init__(
        self,
        device_cache_size: int = 100_000,
        assignment_cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        device_cache_s: float = DEVICE_CACHE_S,
    ) -> None:
        self._devices: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()
        self._size = device_cache_size
        self._device_s = device_cache_s
        self._assignments: dict[tuple[str, str], tuple[float, bytes | None]] = {}
        self._assignment_s = assignment_cache_s
        self._clock = clock

    def device(self, tenant: str, token: str) -> bytes | None:
        hit = self._devices.get((tenant, token))
        if hit is None:
            return None
        if hit[0] <= self._clock():
            del self._devices[(tenant, token)]
            return None
        self._devices.move_to_end((tenant, token))
        return hit[1]

    def put_device(self, tenant: str, token: str, data: bytes) -> None:
        if self._device_s <= 0:
            return
        self._devices[(tenant, token)] = (self._clock() + self._device_s, data)
        self._devices.move_to_end((tenant, token))
        while len(self._devices) > self._size:
            self._devices.popitem(last=False)

    def drop_device(self, tenant: str, token: str) -> None:
        self._devices.pop((tenant, token), None)

    def assignment(self, tenant: str, device: str) -> tuple[bool, bytes | None]:
        """(hit, the active assignment's bytes or None for "none")."""
        hit = self._assignments.get((tenant, device))
        if hit is not None and hit[0] > self._clock():
            return True, hit[1]
        return False, None

    def put_assignment(self, tenant: str, device: str, data: bytes | None) -> None:
        if self._assignment_s <= 0:
            return
        if len(self._assignments) >= self._size:
            self._assignments.clear()
        self._assignments[(tenant, device)] = (self._clock() + self._assignment_s, data)

    def drop_assignment(self, tenant: str, device: str) -> None:
        self._assignments.pop((tenant, device), None)

    def forget_tenant(self, tenant: str) -> None:
        for key in [k for k in self._devices if k[0] == tenant]:
            del self._devices[key]
        for key in [k for k in self._assignments if k[0] == tenant]:
            del self._assignments[key]
