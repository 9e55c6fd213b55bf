"""Tenants as first-class objects: create (provision), read, update and delete (deprovision).

A tenant owns: its registry record (with its settings) and the registry's data, the data of
every store listed in :class:`fieldgate.cloud.composition.TenantStores` — THE one list of
tenant-owned stores —, its bus topics (one per stage) and, with ZooKeeper configured, its znode
``/fieldgate/<instance>/tenants/<t>``. :class:`TenantAdmin` is the one place that creates and
removes all of them, for the REST routes (cloud/api/rest/routes/tenants.py) and the gRPC
``TenantManagement`` service alike; the rules and messages live here once. Provisioning,
deletion, the processes' forget path (cloud/app.py) and the lifecycle tests all iterate
that list, so a store added there is provisioned, deleted and checked everywhere; a
tenant-owned store the cloud process builds but the list lacks fails
tests/contract/test_tenant_lifecycle_contract.py.

Provisioning order: the record first (its token is claimed by a compare-and-set, so of two
creators one wins; the registry starts the tenant's storage empty), then the default device
type, every listed store — each first purged of anything an earlier tenant of the same token
left (a write in flight during its deletion), then provisioned —, topics, and the znode last:
the znode is what makes every other process apply the settings (ingest's rate limit and
decoders, the stages' live settings). Ingest accepts a new tenant's events as soon as it sees
the record (its cache of unknown tenants lasts seconds). A failure midway removes what was made.

Deprovisioning goes the other way round: the record with the registry's data first (ingest
refuses the tenant's events once its cache expires, at once in this process), the znode (every
watching process forgets the tenant: settings, caches), the topics, then every listed store
(users — whose tokens stop working at once —, rules and presence intervals, device states,
site records, connectors with their dead letters, batch operations, schedules and their runs,
edge directory entries, invocations, events). The tenants of the configuration file cannot be
deleted while they are configured: every start would create them again.

A tenant's *incarnation* is its record's ``created_ms``: a tenant deleted and created again
under the same token is another incarnation, which what caches the old one (the connectors
stage's connectors, in any process) must notice (cloud/pipeline/connectors/stage.py checks it).

Settings are :class:`~fieldgate.cloud.zk.models.TenantSettings`, validated exactly like a
znode (bad values → InvalidRequest naming the key), kept in the record's ``settings_json`` and,
when ZooKeeper is configured, in the znode (which wins where they differ: the operator may
have written it with ``fieldgate cloud tenant set``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from fieldgate.cloud.errors import Conflict, InvalidRequest, NotFound
from fieldgate.cloud.store import Page, TenantOwned
from fieldgate.cloud.store.registry import Registry, default_device_type
from fieldgate.cloud.zk.models import TENANT_PATTERN, TenantSettings, TenantSettingsRegistry
from fieldgate.config import validate
from fieldgate.errors import ConfigError
from fieldgate.v1 import model_pb2 as model

if TYPE_CHECKING:
    from fieldgate.cloud.bus import Bus
    from fieldgate.cloud.zk.source import ZkConfigSource

log = logging.getLogger(__name__)

_MAX_TENANTS_PAGE = 1000


def tenant_record(settings: TenantSettings, created_ms: int = 0) -> model.Tenant:
    """The registry record of a tenant with these settings."""
    return model.Tenant(
        token=settings.token,
        name=settings.name or settings.token,
        auto_register=settings.auto_register,
        default_device_type=settings.default_device_type,
        settings_json=settings.model_dump_json(),
        created_ms=created_ms,
    )


def record_settings(record: model.Tenant) -> TenantSettings:
    """The settings kept in a record (records written before settings_json: from its fields)."""
    if record.settings_json:
        try:
            return parse_settings(record.token, json.loads(record.settings_json), "tenant record")
        except (ValueError, InvalidRequest):
            log.warning("tenant %s: stored settings are unreadable; using the record's fields", record.token)
    return TenantSettings(
        token=record.token,
        name=record.name,
        auto_register=record.auto_register,
        default_device_type=record.default_device_type or "default",
    )


def parse_settings(token: str, body: Mapping[str, Any], origin: str = "settings") -> TenantSettings:
    """Validate settings for tenant ``token``; InvalidRequest naming the key and the reason."""
    obj = dict(body)
    given = obj.setdefault("token", token)
    if given != token:
        raise InvalidRequest(f"{origin}: token: {str(given)[:70]!r} does not match the tenant {token!r}")
    try:
        return validate(TenantSettings, obj, origin)
    except ConfigError as err:
        raise InvalidRequest(str(err)) from err


def merge(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` over ``current``; nested objects (``pipeline``) are merged key by key."""
    out = dict(current)
    for key, value in changes.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def check_token(token: str) -> None:
    if not re.fullmatch(TENANT_PATTERN, token):
        raise InvalidRequest(
            f"tenant token {token[:70]!r} is invalid: 1-63 characters of a-z, 0-9, _ and -, "
            "starting with a letter or digit"
        )


class OwnedStores(Protocol):
    """The stores that keep data of a tenant besides the registry: THE list is
    :class:`fieldgate.cloud.composition.TenantStores` (module docstring)."""

    def owned(self) -> list[tuple[str, TenantOwned]]:
        """(name, store) of every store, in the order of deletion."""
        ...


class TenantAdmin:
    """Creates, changes and removes tenants with everything they own (module docstring)."""

    def __init__(
        self,
        registry: Registry,
        stores: OwnedStores,
        bus: Bus,
        *,
        configured: Collection[str] = (),
        live: TenantSettingsRegistry | None = None,
        zk: ZkConfigSource | None = None,
        on_deleted: Callable[[str], None] | None = None,
    ) -> None:
        self._registry = registry
        self._stores = stores
        self._bus = bus
        self._configured = frozenset(configured)
        self._live = live
        self._zk = zk
        self._on_deleted = on_deleted

    def is_configured(self, token: str) -> bool:
        """Whether the tenant comes from the configuration file (it cannot be deleted)."""
        return token in self._configured

    async def settings(self, record: model.Tenant) -> TenantSettings:
        """What is in force for the tenant: the live settings (ZooKeeper) or the record's."""
        live = self._live.get(record.token) if self._live is not None else None
        return live if live is not None else record_settings(record)

    async def get(self, token: str) -> model.Tenant:
        record = await self._registry.get_tenant(token) if token else None
        if record is None:
            raise NotFound(f"tenant {token[:70]!r} does not exist")
        return record

    async def page(self, page: int, page_size: int) -> Page[model.Tenant]:
        if page < 1 or not 1 <= page_size <= _MAX_TENANTS_PAGE:
            raise InvalidRequest(f"page must be >= 1 and page_size between 1 and {_MAX_TENANTS_PAGE}")
        tenants = await self._registry.list_tenants()
        start = (page - 1) * page_size
        return Page(tenants[start : start + page_size], len(tenants), page, page_size)

    async def create(self, token: str, body: Mapping[str, Any]) -> model.Tenant:
        """Provision a tenant (module docstring); Conflict if the token is taken."""
        check_token(token)
        settings = parse_settings(token, body)
        record = await self._registry.create_tenant(tenant_record(settings))
        try:
            await self._registry.create_device_type(token, default_device_type(settings.default_device_type))
            for name, store in self._stores.owned():
                store.forget_tenant(token)
                if await store.delete_tenant(token):
                    log.warning(
                        "tenant %s: removed what an earlier tenant of that token left in %s", token, name
                    )
                await store.ensure_tenant(token)
            await self._bus.ensure_tenant_topics(token)
            await self._publish(settings)
        except BaseException:
            log.error("tenant %s: provisioning failed; removing what was made", token)
            await self._deprovision(token)
            raise
        log.info("tenant %s created", token)
        return record

    async def update(self, token: str, changes: Mapping[str, Any]) -> model.Tenant:
        """Merge ``changes`` over the tenant's settings; validated as a whole."""
        record = await self.get(token)
        current = (await self.settings(record)).model_dump(mode="json")
        settings = parse_settings(token, merge(current, changes))
        if settings.default_device_type != current.get("default_device_type"):
            if await self._registry.get_device_type(token, settings.default_device_type) is None:
                try:
                    await self._registry.create_device_type(
                        token, default_device_type(settings.default_device_type)
                    )
                except Conflict:
                    pass  # created meanwhile: what we wanted
        updated = await self._registry.update_tenant(tenant_record(settings, record.created_ms))
        await self._publish(settings)
        log.info("tenant %s updated: %s", token, settings.model_dump_json())
        return updated

    async def delete(self, token: str, confirm: str | None) -> list[str]:
        """Remove the tenant with everything it owns; what was removed. InvalidRequest without
        the matching ``confirm``; Conflict for a tenant of the configuration file."""
        if confirm != token:
            raise ConfirmationRequired(
                f"deleting tenant {token[:70]!r} removes all its users, devices, events, invocations, "
                f"rules, connectors, batch operations and schedules: repeat its token to confirm "
                f"(?confirm={token[:70]})"
            )
        if self.is_configured(token):
            raise Conflict(
                f"tenant {token!r} is in the configuration file; remove it there (and restart) "
                "before deleting it"
            )
        await self.get(token)
        removed = await self._deprovision(token)
        log.info("tenant %s deleted: %s", token, ", ".join(removed))
        return removed

    async def _publish(self, settings: TenantSettings) -> None:
        if self._zk is not None:
            await self._zk.publish_tenant(settings.token, settings)
        if self._live is not None:
            self._live.update(settings.token, settings)

    async def _deprovision(self, token: str) -> list[str]:
        removed: list[str] = []
        if await self._registry.delete_tenant(token):
            removed.append("registry")
        if self._zk is not None:
            await self._zk.delete_tenant(token)
            removed.append(f"znode {self._zk.tenant_path(token)}")
        if self._live is not None:
            self._live.remove(token)
        if self._on_deleted is not None:
            self._on_deleted(token)
        removed += [f"topic {t}" for t in await self._bus.delete_tenant_topics(token)]
        for name, store in self._stores.owned():
            store.forget_tenant(token)
            if await store.delete_tenant(token):
                removed.append(name)
        return removed


class ConfirmationRequired(InvalidRequest):
    """A destructive request without its confirmation (REST: 400)."""
