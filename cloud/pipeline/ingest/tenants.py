"""Ingest's cache of which tenants exist (events of an unknown tenant are refused)."""

from __future__ import annotations

import time
from collections import OrderedDict

from fieldgate.cloud.store.registry import Registry


class TenantCache:
    """Which tenants exist: positives kept ``ttl_s``, negatives ``negative_ttl_s`` (so a
    tenant created later is accepted within seconds); bounded (overflow: evict oldest)."""

    def __init__(self, registry: Registry, ttl_s: float, negative_ttl_s: float, max_entries: int) -> None:
        self._registry = registry
        self._ttl = ttl_s
        self._neg_ttl = negative_ttl_s
        self._max = max_entries
        self._data: OrderedDict[str, tuple[float, bool]] = OrderedDict()

    def forget(self, tenant: str) -> None:
        self._data.pop(tenant, None)

    async def exists(self, tenant: str) -> bool:
        item = self._data.get(tenant)
        now = time.monotonic()
        if item is not None and item[0] > now:
            return item[1]
        found = await self._registry.get_tenant(tenant) is not None
        self._data[tenant] = (now + (self._ttl if found else self._neg_ttl), found)
        self._data.move_to_end(tenant)
        while len(self._data) > self._max:
            self._data.popitem(last=False)
        return found
