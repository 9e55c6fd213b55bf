"""ZooKeeper as the live configuration source of the distributed mode (kazoo).

Layout (docs/operations/zookeeper.md)::

    /fieldgate/<instance>/instance          JSON of InstanceSettings
    /fieldgate/<instance>/tenants/<tenant>  JSON of TenantSettings (one znode per tenant)

Services read the tree at start (:meth:`ZkConfigSource.load`) and watch the tenant znodes
(:meth:`ZkConfigSource.watch_tenants`): a ChildrenWatch on ``tenants`` notices new tenants and
gives each one a DataWatch, so a change to one tenant's znode calls back for that tenant
only. Each version is validated with the same typed models as the file configuration; an
invalid version (bad JSON, a wrong type, an unknown key) is rejected with a logged reason and
counted, and the tenant's previous settings stay in force — in :meth:`current`, in later
:meth:`load` results and for the callback, which is not called.

Kazoo calls watchers in its own callback thread; they only hand the raw bytes to the asyncio
loop with ``loop.call_soon_threadsafe``. Validation, the cached state and the user's callback
all run on the loop, so none of them needs a lock. Kazoo's blocking calls (connect, get, set)
run in worker threads (``asyncio.to_thread``).

The instance znode is read at start (:meth:`load`; :attr:`ZkConfigSource.instance_exists`
and :attr:`ZkConfigSource.instance_valid` tell an absent znode from an invalid one, and
:meth:`create_instance` writes it once if absent). What it holds (bus, store, token lifetimes)
needs a restart: :meth:`watch_instance` reports a later valid change to a callback (the cloud
logs "restart needed") and rejects an invalid one like a tenant's; neither is applied live.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from fieldgate.cloud.config import TenantConfig
from fieldgate.cloud.errors import CloudError
from fieldgate.cloud.zk.models import (
    TENANT_PATTERN,
    InstanceSettings,
    TenantSettings,
    ZkConfig,
    parse_instance,
    parse_tenant,
    to_json,
)
from fieldgate.errors import ConfigError

__all__ = ["InstanceCallback", "TenantCallback", "ZkConfigError", "ZkConfigSource", "ZkStats"]

log = logging.getLogger(__name__)

TenantCallback = Callable[[str, TenantSettings], None]
InstanceCallback = Callable[[InstanceSettings], None]

_TENANT_RE = re.compile(TENANT_PATTERN)
_INSTANCE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class ZkConfigError(CloudError):
    """ZooKeeper could not be reached, or a configuration write was refused."""


@dataclass(slots=True)
class ZkStats:
    applied: int = 0  # tenant versions installed (load or watch)
    rejected: int = 0  # invalid tenant/instance versions refused
    callback_errors: int = 0  # the watch callback raised


class ZkConfigSource:
    """The configuration of one fieldgate instance in ZooKeeper (``hosts`` e.g. "127.0.0.1:2181")."""

    def __init__(
        self, hosts: str, instance: str, *, root: str = "/fieldgate", timeout_s: float = 10.0
    ) -> None:
        if not _INSTANCE_RE.match(instance):
            raise ConfigError(f"zookeeper: instance: {instance!r} is not a valid instance name")
        self.hosts = hosts
        self.instance = instance
        self.base = f"{root.rstrip('/')}/{instance}"
        self.stats = ZkStats()
        # Last rejection reason per znode path: what an operator asks "why is it ignored?".
        self.last_rejection: dict[str, str] = {}
        self._timeout_s = timeout_s
        self._client: Any = None
        self._instance = InstanceSettings()
        # Whether the instance znode existed at the last load, and whether a valid version of
        # it has been read (False: absent, or invalid since start — the file config applies).
        self.instance_exists = False
        self.instance_valid = False
        self._instance_callback: InstanceCallback | None = None
        self._tenants: dict[str, TenantSettings] = {}
        self._callback: TenantCallback | None = None
        self._on_removed: Callable[[str], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watched: set[str] = set()  # touched only in kazoo's callback thread
        self._closed = False

    # ------------------------------------------------------------------ paths

    @property
    def instance_path(self) -> str:
        return f"{self.base}/instance"

    @property
    def tenants_path(self) -> str:
        return f"{self.base}/tenants"

    def tenant_path(self, token: str) -> str:
        return f"{self.tenants_path}/{token}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        client = KazooClient(hosts=self.hosts, timeout=self._timeout_s)
        try:
            await asyncio.to_thread(client.start, self._timeout_s)
            await asyncio.to_thread(client.ensure_path, self.tenants_path)
        except (KazooException, TimeoutError) as err:
            await asyncio.to_thread(self._close_client, client)
            raise ZkConfigError(f"zookeeper {self.hosts}: cannot connect: {err}") from err
        self._client = client
        self._closed = False

    async def stop(self) -> None:
        self._closed = True  # watchers return False from now on (kazoo then drops them)
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(self._close_client, client)

    @staticmethod
    def _close_client(client: Any) -> None:
        client.stop()
        client.close()

    async def __aenter__(self) -> ZkConfigSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _require(self) -> Any:
        if self._client is None:
            raise ZkConfigError("zookeeper config source is not started")
        return self._client

    # ------------------------------------------------------------------ writes

    async def publish_instance(self, settings: InstanceSettings) -> None:
        await self._write(self.instance_path, to_json(settings))

    async def create_instance(self, settings: InstanceSettings) -> bool:
        """Write the instance znode only if it does not exist (several services starting at
        once: the first one wins). True when this call created it."""
        client = self._require()

        def create() -> bool:
            try:
                client.create(self.instance_path, to_json(settings), makepath=True)
            except NodeExistsError:
                return False
            return True

        try:
            created = await asyncio.to_thread(create)
        except KazooException as err:
            raise ZkConfigError(f"zookeeper: cannot write {self.instance_path}: {err}") from err
        if created:
            self._instance = settings
            self.instance_exists = self.instance_valid = True
        return created

    async def publish_tenant(self, token: str, settings: TenantSettings | TenantConfig) -> None:
        """Write a tenant's settings (creates the znode); watchers everywhere pick it up."""
        if isinstance(settings, TenantConfig):
            settings = TenantSettings.from_tenant_config(settings)
        if settings.token != token:
            raise ConfigError(f"tenant {token}: settings carry token {settings.token!r}")
        await self._write(self.tenant_path(token), to_json(settings))

    async def delete_tenant(self, token: str) -> None:
        client = self._require()
        try:
            await asyncio.to_thread(client.delete, self.tenant_path(token))
        except NoNodeError:
            return
        except KazooException as err:
            raise ZkConfigError(f"zookeeper: cannot delete tenant {token}: {err}") from err

    async def _write(self, path: str, data: bytes) -> None:
        client = self._require()

        def write() -> None:
            if client.exists(path):
                client.set(path, data)
            else:
                client.create(path, data, makepath=True)

        try:
            await asyncio.to_thread(write)
        except KazooException as err:
            raise ZkConfigError(f"zookeeper: cannot write {path}: {err}") from err

    # ------------------------------------------------------------------ reads

    def current(self) -> ZkConfig:
        """The last valid configuration seen (no I/O)."""
        return ZkConfig(instance=self._instance, tenants=dict(self._tenants))

    async def load(self) -> ZkConfig:
        """Read the whole tree; invalid znodes are rejected and their previous version kept."""
        client = self._require()

        def read() -> tuple[bytes | None, dict[str, bytes]]:
            try:
                instance, _ = client.get(self.instance_path)
            except NoNodeError:
                instance = None
            tenants: dict[str, bytes] = {}
            for child in client.get_children(self.tenants_path):
                try:
                    tenants[child], _ = client.get(self.tenant_path(child))
                except NoNodeError:
                    continue  # deleted between the listing and the read
            return instance, tenants

        try:
            instance_data, tenant_data = await asyncio.to_thread(read)
        except KazooException as err:
            raise ZkConfigError(f"zookeeper: cannot read {self.base}: {err}") from err
        self.instance_exists = instance_data is not None
        if instance_data is not None:
            self._apply_instance(instance_data, notify=False)
        for token, data in tenant_data.items():
            self._apply(token, data, notify=False)
        return self.current()

    # ------------------------------------------------------------------ watching

    async def watch_tenants(
        self, callback: TenantCallback, on_removed: Callable[[str], None] | None = None
    ) -> None:
        """Call ``callback(tenant, settings)`` on the running loop whenever a tenant's znode
        gets a new valid version (including tenants created later). Versions equal to the
        current settings (e.g. the first read of a tenant :meth:`load` already saw) do not
        call back. ``on_removed(tenant)`` is called when a tenant's znode is deleted (the
        tenant was deleted: docs/operations/distributed.md). Call once per source."""
        client = self._require()
        if self._callback is not None:
            raise ZkConfigError("watch_tenants was already called on this source")
        self._callback = callback
        self._on_removed = on_removed
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(ChildrenWatch, client, self.tenants_path, self._on_children)
        except KazooException as err:
            raise ZkConfigError(f"zookeeper: cannot watch {self.tenants_path}: {err}") from err

    async def watch_instance(self, callback: InstanceCallback) -> None:
        """Call ``callback(settings)`` on the running loop when the instance znode gets a new
        valid version that differs from the one in force; invalid versions are rejected (logged,
        counted) and the callback is not called. Call once per source."""
        client = self._require()
        if self._instance_callback is not None:
            raise ZkConfigError("watch_instance was already called on this source")
        self._instance_callback = callback
        self._loop = asyncio.get_running_loop()

        def on_data(data: bytes | None, stat: Any) -> bool | None:
            # kazoo callback thread; a deleted znode keeps the settings in force (stat None).
            if self._closed:
                return False
            if stat is not None:
                self._post(self._apply_instance, data or b"", True)
            return None

        try:
            await asyncio.to_thread(DataWatch, client, self.instance_path, on_data)
        except KazooException as err:
            raise ZkConfigError(f"zookeeper: cannot watch {self.instance_path}: {err}") from err

    def _post(self, fn: Callable[..., None], *args: Any) -> bool:
        """Hand a kazoo-thread event to the loop; False when the loop is gone."""
        loop = self._loop
        if loop is None or self._closed:
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed: the service is shutting down
            return False
        return True

    def _on_children(self, children: list[str]) -> bool | None:
        # kazoo callback thread
        if self._closed or self._client is None:
            return False
        for child in children:
            if child in self._watched:
                continue
            if not _TENANT_RE.match(child):
                self._post(self._reject, self.tenant_path(child), "not a valid tenant token", child)
                self._watched.add(child)
                continue
            self._watched.add(child)
            DataWatch(self._client, self.tenant_path(child), self._data_watcher(child))
        return None

    def _data_watcher(self, token: str) -> Callable[[bytes | None, Any], bool | None]:
        def on_data(data: bytes | None, stat: Any) -> bool | None:
            # kazoo callback thread
            if self._closed:
                return False
            if stat is None:
                # Deleted: stop this watch; the children watch sets a new one if it comes back.
                self._watched.discard(token)
                self._post(self._removed, token)
                return False
            self._post(self._apply, token, data or b"", True)
            return None

        return on_data

    # ------------------------------------------------------------------ on the loop

    def _apply(self, token: str, data: bytes, notify: bool) -> None:
        path = self.tenant_path(token)
        if not _TENANT_RE.match(token):
            self._reject(path, "not a valid tenant token", token)
            return
        try:
            settings = parse_tenant(token, data, origin=path)
        except ConfigError as err:
            self._reject(path, str(err), f"tenant {token}")
            return
        self.last_rejection.pop(path, None)
        if self._tenants.get(token) == settings:
            return
        self._tenants[token] = settings
        self.stats.applied += 1
        log.info("zookeeper: tenant %s configuration applied: %s", token, settings.model_dump_json())
        callback = self._callback
        if notify and callback is not None:
            try:
                callback(token, settings)
            except Exception:  # the top of this loop callback: report, keep watching
                self.stats.callback_errors += 1
                log.exception("zookeeper: tenant %s: the configuration callback failed", token)

    def _apply_instance(self, data: bytes, notify: bool) -> None:
        try:
            settings = parse_instance(data, self.instance_path)
        except ConfigError as err:
            self._reject(self.instance_path, str(err), "instance settings")
            return
        self.last_rejection.pop(self.instance_path, None)
        self.instance_exists = True
        if self.instance_valid and settings == self._instance:
            return
        self._instance = settings
        self.instance_valid = True
        callback = self._instance_callback
        if notify and callback is not None:
            try:
                callback(settings)
            except Exception:  # the top of this loop callback: report, keep watching
                self.stats.callback_errors += 1
                log.exception("zookeeper: the instance configuration callback failed")

    def _removed(self, token: str) -> None:
        # Deleting a tenant (TenantAdmin) deletes its znode last-but-one; the processes that
        # watch forget the tenant. Without a removal callback the last settings stay in force.
        known = self._tenants.pop(token, None) is not None
        callback = self._on_removed
        if callback is not None:
            log.info("zookeeper: tenant %s znode deleted", token)
            try:
                callback(token)
            except Exception:  # the top of this loop callback: report, keep watching
                self.stats.callback_errors += 1
                log.exception("zookeeper: tenant %s: the removal callback failed", token)
        elif known:
            log.warning(
                "zookeeper: tenant %s znode deleted; its last settings stay in force until restart", token
            )

    def _reject(self, path: str, reason: str, what: str) -> None:
        self.stats.rejected += 1
        self.last_rejection[path] = reason
        log.error("zookeeper: %s rejected, the previous configuration stays in force: %s", what, reason)
