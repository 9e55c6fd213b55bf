"""The site model's operations that both APIs share beyond the site store's own rules.

The site store (cloud/store/site.py) holds the rules of the records themselves — references
exist, nothing referenced is deleted, no cycles. What the REST routes and the gRPC
``SiteManagement`` service add on top, and must say alike, is here: a record that does not
exist is NotFound naming it, a device put in a group must be a device of the registry, and a
customer user sees only its customer's devices among a group's.
"""

from __future__ import annotations

from collections.abc import Sequence

from fieldgate.cloud.errors import NotFound
from fieldgate.cloud.services.management import Management
from fieldgate.cloud.store.site import GroupElement, Kind, SiteRecord, SiteStore, describe


class SiteService:
    def __init__(self, site: SiteStore, mgmt: Management) -> None:
        self._site = site
        self._mgmt = mgmt

    async def get(self, tenant: str, kind: Kind, token: str) -> SiteRecord:
        """The record, or NotFound naming it."""
        record = await self._site.get(tenant, kind, token)
        if record is None:
            raise NotFound(f"{describe(kind, token)} does not exist")
        return record

    async def put_element(self, tenant: str, group: str, element: GroupElement) -> GroupElement:
        """Add a device or a nested group to ``group`` (an element already there gets the new
        roles): NotFound for a group that does not exist, UnknownReference for a device the
        registry does not know (a nested group's existence and cycles: the store)."""
        await self.get(tenant, "device_group", group)
        if element.kind == "device":
            await self._mgmt.check_devices(tenant, [element.token])
        return await self._site.put_element(tenant, group, element)

    async def visible_devices(self, tenant: str, devices: Sequence[str], customer: str | None) -> list[str]:
        """``devices`` as a caller scoped to ``customer`` may see them (all for None)."""
        if customer is None:
            return list(devices)
        out = []
        for d in devices:
            try:
                await self._mgmt.get_device(tenant, d, customer=customer)
            except NotFound:
                continue
            out.append(d)
        return out
