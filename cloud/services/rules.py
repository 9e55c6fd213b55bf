"""The management of a tenant's rules (:class:`RuleService`, what the REST and gRPC APIs call).

The state store holds each tenant's rules (one JSON document per rule, and the presence
intervals: :func:`~fieldgate.cloud.domain.rules.model.to_documents`). Each change is checked
as the whole set it makes, stored, put into the process's rule cache at once (the book the
device state stage reads, :class:`~fieldgate.cloud.pipeline.rules.RuleBook`, given as a
:class:`RuleCache`) and, in distributed mode, published through ZooKeeper to every replica
(:mod:`fieldgate.cloud.zk.rules`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from pydantic import ValidationError

from fieldgate.cloud.domain.rules.model import Rule, RuleSet, from_documents, to_documents
from fieldgate.cloud.errors import Conflict, InvalidRequest, NotFound
from fieldgate.cloud.store.state import DeviceStateStore

Publisher = Callable[[str, RuleSet], Awaitable[None]]


class RuleCache(Protocol):
    """Where the rules in force are read (the device state stage's book): told each new set."""

    def put(self, tenant: str, rules: RuleSet) -> None:
        """Use ``rules`` for ``tenant`` from now on (they are already stored)."""


class RuleService:
    """Create, replace, delete and list a tenant's rules (the REST API's backend)."""

    def __init__(self, store: DeviceStateStore, book: RuleCache, publisher: Publisher | None = None) -> None:
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
