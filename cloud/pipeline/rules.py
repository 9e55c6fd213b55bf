"""The rules in force per tenant, as the device state stage reads them (:class:`RuleBook`).

The state store holds each tenant's rules (one JSON row per rule, and the presence intervals;
:func:`~fieldgate.cloud.domain.rules.model.from_documents`). A :class:`RuleBook` caches them
per tenant for the device state stage (cloud/pipeline/state.py) and refreshes a tenant from the
store every ``refresh_s``. Changes take effect at once where they are made: the rule service
(cloud/services/rules.py, the APIs' side) puts each changed set into the process's book, and in
distributed mode publishes it through ZooKeeper (:mod:`fieldgate.cloud.zk.rules`), whose watcher
in every replica installs it here (:meth:`RuleBook.install`) — a valid set written to ZooKeeper
directly is applied the same way and saved to the store, so the store and ZooKeeper agree again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fieldgate.cloud.domain.rules.model import RuleSet, from_documents, to_documents
from fieldgate.cloud.errors import CloudError
from fieldgate.cloud.store.state import DeviceStateStore

log = logging.getLogger(__name__)


class RuleBook:
    """Per-tenant rule sets for evaluation (a cache over the store; see the module docstring)."""

    def __init__(
        self, store: DeviceStateStore, *, refresh_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._clock = clock
        self._sets: dict[str, tuple[float, RuleSet]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._sync_tasks: set[asyncio.Task[None]] = set()
        self.installs = 0

    async def rules(self, tenant: str) -> RuleSet:
        cached = self._sets.get(tenant)
        if cached is not None and self._clock() - cached[0] < self._refresh_s:
            return cached[1]
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            cached = self._sets.get(tenant)
            if cached is not None and self._clock() - cached[0] < self._refresh_s:
                return cached[1]
            loaded = from_documents(tenant, await self._store.get_rules(tenant))
            self._sets[tenant] = (self._clock(), loaded)
            return loaded

    def cached(self, tenant: str) -> RuleSet | None:
        entry = self._sets.get(tenant)
        return entry[1] if entry is not None else None

    def forget_tenant(self, tenant: str) -> None:
        """Drop the tenant's cached set (the tenant was deleted: a new one of the token starts
        from the store, empty)."""
        self._sets.pop(tenant, None)

    def put(self, tenant: str, rules: RuleSet) -> None:
        """Use ``rules`` for ``tenant`` from now on (they are already stored)."""
        self._sets[tenant] = (self._clock(), rules)

    def install(self, tenant: str, rules: RuleSet) -> None:
        """A set from ZooKeeper (already validated): used at once, and saved to the store in
        the background when it differs from what the store holds (a direct ZooKeeper write)."""
        self.installs += 1
        self.put(tenant, rules)
        task = asyncio.get_running_loop().create_task(self._sync(tenant, rules))
        self._sync_tasks.add(task)
        task.add_done_callback(self._sync_tasks.discard)

    async def _sync(self, tenant: str, rules: RuleSet) -> None:
        docs = to_documents(rules)
        try:
            if await self._store.get_rules(tenant) != docs:
                await self._store.replace_rules(tenant, docs)
        except CloudError as err:  # task top: the set is in force anyway; the next change saves it
            log.error("tenant %s: rules from ZooKeeper not saved to the store: %s", tenant, err)

    async def drain(self) -> None:
        if self._sync_tasks:
            await asyncio.gather(*self._sync_tasks, return_exceptions=True)
