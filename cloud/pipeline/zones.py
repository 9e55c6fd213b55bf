"""Zones as the polygons of geofence rules: a rule may name a zone token (``zone``) instead of
giving its polygon inline (docs/rules.md).

:class:`ZonePolygons` is the :class:`~fieldgate.cloud.domain.rules.engine.PolygonSource` of the device
state stage. Rule evaluation is synchronous and does no I/O, so the zones are read ahead: every
tenant's zones at :meth:`ZonePolygons.start` (the registry's tenants), again every
``refresh_s`` seconds, and at once for a tenant asked about that is not loaded yet. A zone
changed through the API reaches the rules within ``refresh_s``. Until a tenant's zones are
loaded, and for a zone that does not exist, the polygon is empty: the engine then leaves the
rule's state as it is (no alert is raised or cleared on a fence it cannot see).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from fieldgate.cloud.domain.rules.model import GeofenceRule, Point
from fieldgate.cloud.errors import CloudError
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.store.site import SiteStore, Zone

log = logging.getLogger(__name__)

_PAGE = 1000


class ZonePolygons:
    """Inline polygons as given; zone polygons from a per-tenant cache (module docstring)."""

    def __init__(self, site: SiteStore, registry: Registry | None = None, *, refresh_s: float = 5.0) -> None:
        self._site = site
        self._registry = registry
        self._refresh_s = refresh_s
        self._zones: dict[str, dict[str, tuple[Point, ...]]] = {}
        self._wanted: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.refresh_failures = 0

    def polygon(self, tenant: str, rule: GeofenceRule) -> Sequence[Point]:
        if not rule.zone:
            return rule.polygon
        zones = self._zones.get(tenant)
        if zones is None:
            self._wanted.add(tenant)
            self._wake.set()
            return ()
        return zones.get(rule.zone, ())

    async def refresh(self, tenant: str) -> None:
        """Read the tenant's zones now."""
        zones: dict[str, tuple[Point, ...]] = {}
        page = 1
        while True:
            p = await self._site.find(tenant, "zone", page, _PAGE)
            for z in p.items:
                if isinstance(z, Zone):
                    zones[z.token] = z.polygon
            if page * _PAGE >= p.total:
                break
            page += 1
        self._zones[tenant] = zones
        self._wanted.discard(tenant)

    def forget_tenant(self, tenant: str) -> None:
        self._zones.pop(tenant, None)

    async def start(self) -> None:
        if self._registry is not None:
            for t in await self._registry.list_tenants():
                self._wanted.add(t.token)
        await self._refresh_all()
        self._task = asyncio.create_task(self._loop(), name="rules:zones")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh_all(self) -> None:
        for tenant in sorted(set(self._zones) | self._wanted):
            try:
                await self.refresh(tenant)
            except CloudError as err:  # a store failure: keep the last zones, try again later
                self.refresh_failures += 1
                log.warning("zones of tenant %s not refreshed: %s", tenant, err)

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._refresh_s)
            self._wake.clear()
            await self._refresh_all()
