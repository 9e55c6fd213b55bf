"""Tenant rule sets in ZooKeeper: ``/fieldgate/<instance>/rules/<tenant>`` (JSON of a RuleSet).

Not under ``tenants/<tenant>``: creating a child there for a tenant that has no settings
znode would create an empty one, which every service would read as that tenant's settings
(all defaults) over the file's. The watch works like the tenant settings'
(:mod:`fieldgate.cloud.zk.source`): a ChildrenWatch on ``rules`` gives each tenant a DataWatch;
kazoo's callback thread only hands the bytes to the asyncio loop, where each version is
validated (:class:`~fieldgate.cloud.domain.rules.model.RuleSet`) — an invalid one is logged, counted
and ignored, and the previous set stays in force.

A deleted tenant's set is deleted with it (:meth:`ZkRules.delete_tenant`; this is one of the
tenant-owned stores, cloud/services/tenants.py): left behind, every process would install it into the
store of a new tenant of the same token at its next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch
from pydantic import ValidationError

from fieldgate.cloud.domain.rules.model import RuleSet
from fieldgate.cloud.zk.models import TENANT_PATTERN
from fieldgate.cloud.zk.source import ZkConfigError

log = logging.getLogger(__name__)

RulesCallback = Callable[[str, RuleSet], None]


@dataclass(slots=True)
class ZkRulesStats:
    applied: int = 0
    rejected: int = 0


class ZkRules:
    """Publish and watch the rule sets of one fieldgate instance."""

    def __init__(
        self, hosts: str, instance: str, *, root: str = "/fieldgate", timeout_s: float = 10.0
    ) -> None:
        self.hosts = hosts
        self.path = f"{root.rstrip('/')}/{instance}/rules"
        self.stats = ZkRulesStats()
        self.last_rejection: dict[str, str] = {}
        self._timeout_s = timeout_s
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callback: RulesCallback | None = None
        self._watched: set[str] = set()
        self._current: dict[str, RuleSet] = {}
        self._closed = False

    def tenant_path(self, tenant: str) -> str:
        return f"{self.path}/{tenant}"

    async def start(self) -> None:
        client = KazooClient(hosts=self.hosts, timeout=self._timeout_s)
        try:
            await asyncio.to_thread(client.start, self._timeout_s)
            await asyncio.to_thread(client.ensure_path, self.path)
        except (KazooException, TimeoutError) as err:
            await asyncio.to_thread(self._close, client)
            raise ZkConfigError(f"zookeeper {self.hosts}: cannot connect: {err}") from err
        self._client = client
        self._closed = False

    async def stop(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(self._close, client)

    @staticmethod
    def _close(client: Any) -> None:
        client.stop()
        client.close()

    async def publish(self, tenant: str, rules: RuleSet) -> None:
        client = self._client
        if client is None:
            raise ZkConfigError("zookeeper rules source is not started")
        path, data = self.tenant_path(tenant), rules.model_dump_json().encode()

        def write() -> None:
            if client.exists(path):
                client.set(path, data)
            else:
                client.create(path, data, makepath=True)

        try:
            await asyncio.to_thread(write)
        except KazooException as err:
            raise ZkConfigError(f"zookeeper: cannot write {path}: {err}") from err

    # -- tenant lifecycle (cloud/services/tenants.py) -------------------------------------------------

    async def ensure_tenant(self, tenant: str) -> None:
        """Nothing to provision: a tenant's znode is written with its first rule change."""

    async def delete_tenant(self, tenant: str) -> bool:
        """Delete the tenant's rules znode; False if there was none."""
        client = self._client
        if client is None:
            raise ZkConfigError("zookeeper rules source is not started")
        self.forget_tenant(tenant)
        path = self.tenant_path(tenant)
        try:
            await asyncio.to_thread(client.delete, path)
        except NoNodeError:
            return False
        except KazooException as err:
            raise ZkConfigError(f"zookeeper: cannot delete {path}: {err}") from err
        return True

    def forget_tenant(self, tenant: str) -> None:
        """Forget the last set applied for the tenant (a new tenant of the token starts over)."""
        self._current.pop(tenant, None)

    async def watch(self, callback: RulesCallback) -> None:
        """``callback(tenant, rules)`` on the loop for every new valid version of a tenant's set."""
        client = self._client
        if client is None:
            raise ZkConfigError("zookeeper rules source is not started")
        self._callback = callback
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(ChildrenWatch, client, self.path, self._on_children)
        except KazooException as err:
            raise ZkConfigError(f"zookeeper: cannot watch {self.path}: {err}") from err

    def _post(self, *args: Any) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        try:
            loop.call_soon_threadsafe(self._apply, *args)
        except RuntimeError:  # loop closed: shutting down
            return

    def _on_children(self, children: list[str]) -> bool | None:
        # kazoo callback thread
        if self._closed or self._client is None:
            return False
        for child in children:
            if child in self._watched:
                continue
            self._watched.add(child)
            DataWatch(self._client, self.tenant_path(child), self._data_watcher(child))
        return None

    def _data_watcher(self, tenant: str) -> Callable[[bytes | None, Any], bool | None]:
        def on_data(data: bytes | None, stat: Any) -> bool | None:
            if self._closed:
                return False
            if stat is None:
                self._watched.discard(tenant)
                return False
            self._post(tenant, data or b"")
            return None

        return on_data

    def _apply(self, tenant: str, data: bytes) -> None:
        import re

        path = self.tenant_path(tenant)
        if not re.match(TENANT_PATTERN, tenant):
            self._reject(path, "not a valid tenant token")
            return
        try:
            rules = RuleSet.model_validate_json(data or b"{}")
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            self._reject(path, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))
            return
        self.last_rejection.pop(path, None)
        if self._current.get(tenant) == rules:
            return
        self._current[tenant] = rules
        self.stats.applied += 1
        log.info("zookeeper: tenant %s rules applied (%d rules)", tenant, len(rules.rules))
        if self._callback is not None:
            try:
                self._callback(tenant, rules)
            except Exception:  # the top of a loop callback: report, keep watching
                log.exception("zookeeper: tenant %s: the rules callback failed", tenant)

    def _reject(self, path: str, reason: str) -> None:
        self.stats.rejected += 1
        self.last_rejection[path] = reason
        log.error("zookeeper: rules %s rejected, the previous rules stay in force: %s", path, reason)
