"""The rules in force per tenant (:class:`RuleBook`) and their management (:class:`RuleService`).

The state store holds each tenant's rules (one JSON row per rule, and the presence intervals).
A :class:`RuleBook` caches them per tenant for the device state stage and refreshes a tenant
from the store every ``refresh_s``. Changes take effect at once where they are made (the
all-in-one process shares one book between the REST API and the stage) and, in distributed
mode, in every replica through ZooKeeper: :class:`RuleService` publishes the tenant's whole
set after each change (:mod:`fieldgate.cloud.zk.rules`), and each process's watcher installs
it (:meth:`RuleBook.install`) — a valid set written to ZooKeeper directly is applied the same
way and saved to the store, so the store and ZooKeeper agree again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from fieldgate.cloud.domain.rules.model import RULE_ADAPTER, Rule, RuleSet, rule_json
from fieldgate.cloud.errors import CloudError, Conflict, InvalidRequest, NotFound
from fieldgate.cloud.store.state import PRESENCE_INTERVALS_KEY, DeviceStateStore

log = logging.getLogger(__name__)

Publisher = Callable[[str, RuleSet], Awaitable[None]]


def to_documents(rules: RuleSet) -> dict[str, str]:
    docs = {r.id: json.dumps(rule_json(r), sort_keys=True) for r in rules.rules}
    if rules.presence_intervals:
        docs[PRESENCE_INTERVALS_KEY] = json.dumps(rules.presence_intervals, sort_keys=True)
    return docs


def from_documents(tenant: str, docs: dict[str, str]) -> RuleSet:
    rules: list[Rule] = []
    intervals: dict[str, int] = {}
    for key, doc in sorted(docs.items()):
        try:
            if key == PRESENCE_INTERVALS_KEY:
                intervals = {str(k): int(v) for k, v in json.loads(doc).items()}
            else:
                rules.append(RULE_ADAPTER.validate_json(doc))
        except (ValidationError, ValueError, AttributeError) as err:
            log.error("tenant %s: stored rule %r is invalid and ignored: %s", tenant, key, err)
    return RuleSet(rules=tuple(rules), presence_intervals=intervals)


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


class RuleService:
    """Create, replace, delete and list a tenant's rules (the REST API's backend)."""

    def __init__(self, store: DeviceStateStore, book: RuleBook, publisher: Publisher | None = None) -> None:
        self._store = store
        self._book = book
        self._publisher = publisher
        self._locks: dict[str, asyncio.Lock] = {}

    async def _current(self, tenant: str) -> RuleSet:
        return from_documents(tenant, await self._store.get_rules(tenant))

    async def list(self, tenant: str) -> RuleSet:
        return await self._current(tenant)

    async def get(self, tenant: str, rule_id: str) -> Rule:
        rule = (await self._current(tenant)).get(rule_id)
        if rule is None:
            raise NotFound(f"rule {rule_id!r} does not exist")
        return rule

    async def create(self, tenant: str, rule: Rule) -> Rule:
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            current = await self._current(tenant)
            if current.get(rule.id) is not None:
                raise Conflict(f"rule {rule.id!r} exists (PUT /api/v1/rules/{rule.id} replaces it)")
            new = self._checked(current.with_rule(rule))
            await self._store.put_rule(tenant, rule.id, to_documents(new)[rule.id])
            await self._changed(tenant, new)
        return rule

    async def replace(self, tenant: str, rule: Rule) -> Rule:
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            current = await self._current(tenant)
            new = self._checked(current.with_rule(rule))
            await self._store.put_rule(tenant, rule.id, to_documents(new)[rule.id])
            await self._changed(tenant, new)
        return rule

    async def delete(self, tenant: str, rule_id: str) -> None:
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            if not await self._store.delete_rule(tenant, rule_id):
                raise NotFound(f"rule {rule_id!r} does not exist")
            await self._changed(tenant, await self._current(tenant))

    async def set_presence_intervals(self, tenant: str, intervals: dict[str, int]) -> RuleSet:
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            current = await self._current(tenant)
            new = self._checked(RuleSet(rules=current.rules, presence_intervals=intervals))
            await self._store.replace_rules(tenant, to_documents(new))
            await self._changed(tenant, new)
        return new

    async def forget_device_type(self, tenant: str, device_type: str) -> None:
        """Drop the presence interval of a device type that was deleted (if it had one)."""
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            current = await self._current(tenant)
            if device_type not in current.presence_intervals:
                return
            intervals = {k: v for k, v in current.presence_intervals.items() if k != device_type}
            new = self._checked(RuleSet(rules=current.rules, presence_intervals=intervals))
            await self._store.replace_rules(tenant, to_documents(new))
            await self._changed(tenant, new)

    @staticmethod
    def _checked(rules: RuleSet) -> RuleSet:
        try:
            return RuleSet.model_validate(rules.model_dump())
        except ValidationError as err:
            raise InvalidRequest(str(err.errors()[0].get("msg", err))) from err

    async def _changed(self, tenant: str, rules: RuleSet) -> None:
        self._book.put(tenant, rules)
        if self._publisher is not None:
            await self._publisher(tenant, rules)
