"""Typed models of the configuration kept in ZooKeeper, and the per-tenant settings registry.

ZooKeeper holds two kinds of znodes (layout in docs/operations/zookeeper.md):

* ``/fieldgate/<instance>/instance`` — :class:`InstanceSettings`, the instance-wide part of
  :class:`~fieldgate.cloud.config.CloudConfig` that is safe to share (bus, store, token
  lifetime); never secrets, which stay in the file/environment of each service.
* ``/fieldgate/<instance>/tenants/<tenant>`` — :class:`TenantSettings`, a superset of
  :class:`~fieldgate.cloud.config.TenantConfig` with the settings a running pipeline can
  change live (registration policy, retention, decoders, pipeline knobs).

Both parse through :func:`fieldgate.config.validate` like the file configuration, so a bad
znode is refused with the same "key: reason" message a bad file would give. Parsing is pure
(no I/O) so it is the one place that decides what is valid.

:class:`TenantSettingsRegistry` is what stages ask for "the current settings of tenant X": it
starts from the file configuration and is updated by the ZooKeeper watcher
(:meth:`fieldgate.cloud.zk.source.ZkConfigSource.watch_tenants`). It lives on the asyncio loop
(no locks): every update arrives there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from fieldgate.cloud.config import BusConfig, CloudConfig, StoreConfig, TenantConfig
from fieldgate.config import Frozen, validate
from fieldgate.errors import ConfigError
from fieldgate.protocol.topics import Format

log = logging.getLogger(__name__)

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"

ALL_DECODERS: tuple[Format, ...] = ("json", "protobuf", "sitewhere")


class PipelineSettings(Frozen):
    """Per-tenant pipeline knobs a running stage can pick up without a restart."""

    # When false the event-store stage commits the tenant's records without storing them
    # (a tenant being migrated or suspended); events stay in the bus for replay.
    persist_events: bool = True
    # Most events the event-store stage writes in one store call for this tenant (the
    # default is the stage's own limit).
    max_batch_events: int = Field(10_000, ge=1, le=10_000)


class TenantSettings(Frozen):
    """One tenant's configuration: the fields of TenantConfig plus live-changeable settings."""

    token: str = Field(pattern=TENANT_PATTERN)
    name: str = ""
    auto_register: bool = True
    default_device_type: str = Field("default", min_length=1)
    # Events older than this are dropped by the event store (Cassandra: USING TTL). None = keep.
    retention_days: int | None = Field(None, ge=1, le=36_500)
    # Payload formats the tenant's devices may use; others go to [failed-decode].
    decoders: tuple[Format, ...] = ALL_DECODERS
    pipeline: PipelineSettings = PipelineSettings()
    # Seconds without an event after which the state stage marks a device missing (a device
    # type's override is in the tenant's rule configuration, docs/rules.md).
    presence_interval_s: int = Field(300, ge=1, le=30 * 86_400)
    # Rate limit of ingest (a token bucket per tenant and ingest replica): at most this many
    # events per second on average, bursts up to ``burst_events`` (default: one second's
    # worth). A batch over the rate is held unacknowledged until the bucket allows it, so the
    # edge keeps it buffered. None = unlimited.
    max_events_per_s: float | None = Field(None, gt=0, le=1_000_000)
    burst_events: int | None = Field(None, ge=1, le=10_000_000)

    @property
    def allows_every_format(self) -> bool:
        """True when ``decoders`` lists every format (no event needs checking)."""
        return set(ALL_DECODERS) <= set(self.decoders)

    @property
    def ttl_s(self) -> int | None:
        """The event time-to-live in seconds (None = events are kept)."""
        return None if self.retention_days is None else self.retention_days * 86_400

    @classmethod
    def from_tenant_config(cls, cfg: TenantConfig) -> TenantSettings:
        return cls(
            token=cfg.token,
            name=cfg.name,
            auto_register=cfg.auto_register,
            default_device_type=cfg.default_device_type,
        )

    def tenant_config(self) -> TenantConfig:
        """The file-config view, for code that still takes TenantConfig."""
        return TenantConfig(
            token=self.token,
            name=self.name,
            auto_register=self.auto_register,
            default_device_type=self.default_device_type,
        )


class InstanceSettings(Frozen):
    """The instance-wide, shareable part of CloudConfig (no secrets, no listen addresses)."""

    bus: BusConfig = BusConfig()
    store: StoreConfig = StoreConfig()
    token_ttl_s: int = Field(3600, ge=60)
    default_command_ttl_s: int = Field(3600, ge=1)

    @classmethod
    def from_cloud_config(cls, cfg: CloudConfig) -> InstanceSettings:
        return cls(
            bus=cfg.bus,
            store=cfg.store,
            token_ttl_s=cfg.auth.token_ttl_s,
            default_command_ttl_s=cfg.default_command_ttl_s,
        )


@dataclass(frozen=True, slots=True)
class ZkConfig:
    """What ZooKeeper currently says (the last VALID version of every znode)."""

    instance: InstanceSettings
    tenants: Mapping[str, TenantSettings] = field(default_factory=dict)

    def apply_to(self, base: CloudConfig) -> CloudConfig:
        """``base`` (the service's file config, which keeps secrets and addresses) with the
        instance settings and tenants from ZooKeeper; tenants only in the file stay."""
        tenants = {t.token: t for t in base.tenants}
        for token, settings in self.tenants.items():
            tenants[token] = settings.tenant_config()
        # Secrets stay the file's (a key or a mounted key file); only the lifetime comes from ZK.
        auth = base.auth.model_copy(update={"token_ttl_s": self.instance.token_ttl_s})
        return base.model_copy(
            update={
                "bus": self.instance.bus,
                "store": self.instance.store,
                "auth": auth,
                "default_command_ttl_s": self.instance.default_command_ttl_s,
                "tenants": tuple(tenants[k] for k in sorted(tenants)),
            }
        )


def _json_object(data: bytes, origin: str) -> dict[str, Any]:
    try:
        loaded = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{origin}: not valid JSON: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{origin}: (top level): expected a JSON object, got {type(loaded).__name__}")
    return loaded


def parse_tenant(token: str, data: bytes, origin: str | None = None) -> TenantSettings:
    """Validate a tenant znode. The znode's name is the token; a ``token`` key, if present,
    must agree. Raises ConfigError naming the key and the reason."""
    origin = origin or f"tenant {token}"
    obj = _json_object(data, origin)
    given = obj.setdefault("token", token)
    if given != token:
        raise ConfigError(f"{origin}: token: {given!r} does not match the znode name {token!r}")
    return validate(TenantSettings, obj, origin)


def parse_instance(data: bytes, origin: str = "instance") -> InstanceSettings:
    return validate(InstanceSettings, _json_object(data, origin), origin)


def to_json(settings: Frozen) -> bytes:
    """The znode bytes of a model (only explicitly-set and default fields, no secrets)."""
    return settings.model_dump_json().encode()


Listener = Callable[[TenantSettings], None]


class TenantSettingsRegistry:
    """Current settings per tenant, for stages to consult per batch (a dict lookup).

    Seeded from the file configuration; :meth:`update` is the ZooKeeper watcher's callback.
    Listeners registered with :meth:`listen` are told about each change of a tenant, on the
    asyncio loop, so a stage can rebuild per-tenant state (e.g. a decoder set) eagerly.
    """

    def __init__(self, initial: Iterable[TenantSettings | TenantConfig] = ()) -> None:
        self._settings: dict[str, TenantSettings] = {}
        self._listeners: list[Listener] = []
        self.updates = 0
        for item in initial:
            s = item if isinstance(item, TenantSettings) else TenantSettings.from_tenant_config(item)
            self._settings[s.token] = s

    def get(self, tenant: str) -> TenantSettings | None:
        return self._settings.get(tenant)

    def tenants(self) -> list[str]:
        return sorted(self._settings)

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove(self, tenant: str) -> bool:
        """Forget a deleted tenant's settings; True if it had any."""
        return self._settings.pop(tenant, None) is not None

    def update(self, tenant: str, settings: TenantSettings) -> None:
        """Install new settings for ``tenant`` (already validated) and tell the listeners."""
        if settings.token != tenant:
            raise ConfigError(f"tenant {tenant}: settings carry token {settings.token!r}")
        if self._settings.get(tenant) == settings:
            return
        self._settings[tenant] = settings
        self.updates += 1
        for listener in self._listeners:
            listener(settings)
