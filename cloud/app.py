"""The cloud process: every stage (or a chosen few) in one event loop, wired through the bus.

Stages never call each other; they share only the bus, the stores and (for command delivery,
which must reach the edge streams that ingest hosts) the :class:`EdgeSessions` object.

With ``services=None`` (the default) one process runs everything — the only choice with the
embedded bus. On Kafka, ``services`` picks the stages this process runs (``fieldgate cloud
run <service>``), so each stage can run as its own process and as several replicas (they
share the stage's partitions through Kafka consumer groups):

* ``inbound``, ``registration``, ``event-store`` — one consumer stage each;
* ``ingest`` — the gRPC server (edge uplink and the gRPC APIs) *and* command delivery:
  delivering a command means writing to the edge's open uplink stream, which only the process
  hosting that stream has (``command-delivery`` names the same process). Its replicas do not
  share [command-invocations]: each reads all of it in its own group
  (``command-delivery.<replica_id>``) and sends what its edges own;
* ``state`` — device state, presence and rules → alerts (consumer group ``state`` on
  [persisted]; may run as several replicas; docs/rules.md);
* ``api`` — the REST API (command requests go to the bus like everywhere else), and the
  batch-operation runner and the scheduler (cloud/services/batch.py, scheduler.py): they only call CommandService, so
  they need no stage of their own; several ``api`` replicas are safe (schedule runs are
  claimed once per due time, batch invocations have derived ids);
* ``connectors`` — outbound connectors (consumer group ``connectors`` on [persisted]; may run
  as several replicas; docs/connectors.md).

The bus and the stores come from :mod:`fieldgate.cloud.store.backend`. When
``config.zookeeper`` is set, every process — whichever services it runs — reads ZooKeeper at
start and watches it (docs/operations/zookeeper.md):

* the instance znode: applied at start over the file's bus/store/token settings (written from
  the file if absent; the file's config is used if it is invalid); a change at run time is
  logged as "restart needed", never applied live;
* the tenant znodes: one :class:`TenantSettingsRegistry` per process, handed to the stages
  that use it, so one tenant's change applies from its next batch, in every running service,
  without touching other tenants — registration policy (registration), allowed payload
  formats (ingest), persist/batch knobs (event store), retention (the event store's TTL,
  applied here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Collection, Iterator, Mapping
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import uvicorn
from fastapi import FastAPI

from fieldgate.cloud.api.grpc.server import ApiAuth, add_grpc_api
from fieldgate.cloud.api.rest.app import create_api
from fieldgate.cloud.config import CloudConfig
from fieldgate.cloud.domain.connectors.targets import TargetPolicy
from fieldgate.cloud.errors import CloudError
from fieldgate.cloud.health import CloudHealth, GrpcHealth, health_app
from fieldgate.cloud.ids import event_id
from fieldgate.cloud.pipeline.connectors.stage import ConnectorStage, ConnectorStageSettings
from fieldgate.cloud.pipeline.delivery import CommandDelivery
from fieldgate.cloud.pipeline.inbound import InboundProcessing
from fieldgate.cloud.pipeline.ingest.edges import EdgeTracker
from fieldgate.cloud.pipeline.ingest.service import IngestService
from fieldgate.cloud.pipeline.persistence import EventPersistence
from fieldgate.cloud.pipeline.registration import Registration
from fieldgate.cloud.pipeline.rules import RuleBook
from fieldgate.cloud.pipeline.sessions import EdgeSessions
from fieldgate.cloud.pipeline.stage import ConsumerStage
from fieldgate.cloud.pipeline.state import DeviceStateStage
from fieldgate.cloud.pipeline.zones import ZonePolygons
from fieldgate.cloud.services.access import Role
from fieldgate.cloud.services.auth import TokenAuthority, UserSessions
from fieldgate.cloud.services.batch import BatchOperations
from fieldgate.cloud.services.commands import CommandService
from fieldgate.cloud.services.connectors import ConnectorAdmin
from fieldgate.cloud.services.live import LiveHub
from fieldgate.cloud.services.rules import RuleService
from fieldgate.cloud.services.scheduler import Scheduler
from fieldgate.cloud.services.tenants import TenantAdmin, TenantStores, record_settings, tenant_record
from fieldgate.cloud.store.backend import (
    build_bus,
    build_cassandra,
    build_edge_directory,
    build_event_store,
    build_invocation_store,
    build_registry,
    build_site_store,
    build_state_store,
    build_users,
    load_previous_secrets,
    load_token_secret,
)
from fieldgate.cloud.store.batch import build_batch_store
from fieldgate.cloud.store.connectors import build_connector_store
from fieldgate.cloud.tls import ServerTls
from fieldgate.cloud.zk.models import InstanceSettings, TenantSettings, TenantSettingsRegistry, ZkConfig
from fieldgate.errors import ConfigError
from fieldgate.v1 import model_pb2 as model

log = logging.getLogger(__name__)

ADMIN_USER = "admin"

# The services `fieldgate cloud run <service>` can run on their own (see the module docstring).
SERVICES: tuple[str, ...] = ("inbound", "registration", "event-store", "state", "ingest", "api", "connectors")
# Command delivery needs the edge sessions that ingest hosts: it is part of the ingest process.
SERVICE_ALIASES: dict[str, str] = {"command-delivery": "ingest"}


def resolve_services(config: CloudConfig, services: Collection[str] | None) -> frozenset[str]:
    """The services one process runs; raises ConfigError for unknown names, or for a subset
    with the embedded bus (its SQLite log is private to one process)."""
    if services is None:
        return frozenset(SERVICES)
    chosen = set()
    for name in services:
        name = SERVICE_ALIASES.get(name, name)
        if name not in SERVICES:
            known = ", ".join((*SERVICES, *SERVICE_ALIASES))
            raise ConfigError(f"cloud service {name!r} is unknown (services: {known})")
        chosen.add(name)
    if not chosen:
        raise ConfigError("no cloud service chosen")
    if chosen != set(SERVICES) and config.bus.kind == "embedded":
        raise ConfigError(
            "bus.kind: the embedded bus works within one process only; running single services "
            f"({', '.join(sorted(chosen))}) needs bus.kind: kafka (docs/operations/distributed.md), "
            "or run `fieldgate cloud run` without a service for the all-in-one process"
        )
    return frozenset(chosen)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the process owner decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _tenant_record(settings: TenantSettings) -> model.Tenant:
    return tenant_record(settings)


def _running_check(stage: ConsumerStage) -> Callable[[], bool]:
    return lambda: stage.running


@runtime_checkable
class _ForgetsTenants(Protocol):
    """A part of the process that caches something per tenant."""

    def forget_tenant(self, tenant: str) -> None: ...


def _unique(parts: list[Any]) -> list[Any]:
    """``parts`` without repeats (by identity), in order."""
    seen: set[int] = set()
    out: list[Any] = []
    for part in parts:
        if id(part) not in seen:
            seen.add(id(part))
            out.append(part)
    return out


@runtime_checkable
class _TtlStore(Protocol):
    """An event store with per-tenant retention (the Cassandra store)."""

    def set_ttl(self, tenant: str, ttl_s: int | None) -> None: ...


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two model dumps (nested dicts descended)."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(_changed_keys(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


class CloudApp:
    """Bus, stores, pipeline stages, gRPC (ingest + APIs) and REST in one process."""

    def __init__(
        self,
        config: CloudConfig,
        services: Collection[str] | None = None,
        *,
        admin: bool = False,
        admin_password: str | None = None,
    ) -> None:
        """``admin=True``: make sure user ``admin`` exists (with ``admin_password`` if given, see
        :meth:`ensure_admin`) before the REST API serves, so a login right after readiness
        finds it; a password generated for it is in :attr:`generated_admin_password`."""
        self._ensure_admin_at_start = admin
        self._admin_password = admin_password
        self.generated_admin_password: str | None = None
        self.services = resolve_services(config, services)
        # The configuration this process was given; self.config is what it runs with (the
        # file's, or the file's with ZooKeeper's instance settings applied at start).
        self.file_config = config
        # Live per-tenant settings: the file's tenants, then ZooKeeper's (read at start and
        # watched) when `zookeeper:` is configured. Stages consult it per batch.
        self.tenant_settings = TenantSettingsRegistry(config.tenants)
        self.tenant_settings.listen(self._on_tenant_settings)
        self.zk: Any = None
        if config.zookeeper is not None:
            from fieldgate.cloud.zk.source import ZkConfigSource

            self.zk = ZkConfigSource(config.zookeeper.hosts, config.zookeeper.instance)
        # Instance keys changed in ZooKeeper since start (not applied: need a restart).
        self.restart_needed: list[str] = []
        self._retention_unsupported: set[str] = set()  # tenants already warned about (SQLite)
        self._tenant_tasks: set[asyncio.Task[None]] = set()
        self._running = False
        self._build(config)
        self._rest: _EmbeddedUvicorn | None = None
        self.rest_app: FastAPI | None = None  # the REST API served (with the ``api`` service)
        self._rest_task: asyncio.Task[None] | None = None
        self._health_server: _EmbeddedUvicorn | None = None
        self._health_task: asyncio.Task[None] | None = None
        self.health_port = 0  # the bound port of the health listener (0: none)
        self._started: list[Any] = []

    def _build(self, config: CloudConfig) -> None:
        """Create (not start) the bus, stores and stages for ``config``. Called again at start
        when ZooKeeper's instance settings differ from the file's — before anything connects."""
        self.config = config
        prefix = config.bus.topic_prefix
        live = self.tenant_settings
        self.bus = build_bus(config, client_id="fieldgate-" + "-".join(sorted(self.services)))
        # SQLite files in data_dir, or Cassandra: one connection shared by the stores (None on SQLite).
        self.cassandra = build_cassandra(config)
        self.registry = build_registry(config, cassandra=self.cassandra)
        self.invocations = build_invocation_store(config, cassandra=self.cassandra)
        self.event_store = build_event_store(
            config, tenants=[t.token for t in config.tenants], cassandra=self.cassandra
        )
        self.users = build_users(config, cassandra=self.cassandra)
        # Outbound connector definitions and dead letters (the api and connectors services).
        self.connector_store = build_connector_store(config, cassandra=self.cassandra)
        # Where connectors may send (the operator's connectors.allow_networks), checked by the
        # api at creation and by the connectors service at every connect.
        self.connector_targets = TargetPolicy.from_networks(config.connectors.allow_networks)
        self.connector_admin = ConnectorAdmin(
            self.connector_store, self.bus, self.connector_targets, topic_prefix=prefix
        )
        # Device states and rules (the state and api services); rule changes reach every
        # replica through ZooKeeper when it is configured (cloud/zk/rules.py).
        self.state_store = build_state_store(config, cassandra=self.cassandra)
        # Areas, zones, assets, device groups (the api service; the state stage reads zones).
        self.site_store = build_site_store(config, cassandra=self.cassandra)
        self.zone_polygons = ZonePolygons(self.site_store, self.registry)
        # Edge agents seen by ingest (written there, read by the api's /api/v1/edges).
        self.edge_directory = build_edge_directory(config, cassandra=self.cassandra)
        self.edge_tracker = EdgeTracker(self.edge_directory) if "ingest" in self.services else None
        # The api's live events (SSE): its own tail consumers of the bus (cloud/services/live.py).
        self.live = (
            LiveHub(self.bus, self.invocations, topic_prefix=prefix) if "api" in self.services else None
        )
        self.rule_book = RuleBook(self.state_store)
        self.zk_rules: Any = None
        # The state stage evaluates the rules; api and ingest serve them (REST, gRPC) and delete a
        # deleted tenant's set.
        if config.zookeeper is not None and self.services & {"state", "api", "ingest"}:
            from fieldgate.cloud.zk.rules import ZkRules

            self.zk_rules = ZkRules(config.zookeeper.hosts, config.zookeeper.instance)
        self.rule_service = RuleService(
            self.state_store, self.rule_book, self.zk_rules.publish if self.zk_rules is not None else None
        )
        self.sessions = EdgeSessions()
        # Whether a token's user still is what the token says: REST and gRPC check each request
        # (cloud/services/auth.py); a deleted tenant's users are dropped from it here.
        self.user_sessions = UserSessions(self.users)
        self.commands = CommandService(
            self.registry,
            self.invocations,
            self.bus,
            config.default_command_ttl_s,
            topic_prefix=prefix,
        )
        # Batch operations and schedules (the api service; cloud/services/batch.py, scheduler.py).
        self.batch_store = build_batch_store(config, cassandra=self.cassandra)
        self.batch = BatchOperations(self.batch_store, self.registry, self.commands, groups=self.site_store)
        self.scheduler = Scheduler(
            self.batch_store,
            self.registry,
            self.commands,
            self.batch,
            replica=config.effective_replica_id(),
        )
        # Every store that keeps data of a tenant (THE list, cloud/services/tenants.py): provisioned and
        # deleted with the tenant, forgotten by every process when another deletes it.
        self.tenant_stores = TenantStores(
            users=self.users,
            states=self.state_store,
            site=self.site_store,
            connectors=self.connector_store,
            batch=self.batch_store,
            edges=self.edge_directory,
            invocations=self.invocations,
            events=self.event_store,
            rules_zk=self.zk_rules,
        )
        # Tenant lifecycle (REST /api/v1/tenants, gRPC TenantManagement): provisions and removes
        # what a tenant owns; the file's tenants cannot be deleted.
        self.tenants = TenantAdmin(
            self.registry,
            self.tenant_stores,
            self.bus,
            configured=[t.token for t in self.file_config.tenants],
            live=self.tenant_settings,
            zk=self.zk,
            on_deleted=self._forget_tenant,
        )
        self.stages: list[Any] = []
        if "registration" in self.services:
            self.stages.append(
                Registration(
                    self.bus,
                    self.registry,
                    config.tenants,
                    topic_prefix=prefix,
                    tenant_settings=live,
                )
            )
        if "inbound" in self.services:
            self.stages.append(
                InboundProcessing(self.bus, self.registry, self.invocations, topic_prefix=prefix)
            )
        if "event-store" in self.services:
            self.stages.append(
                EventPersistence(self.bus, self.event_store, topic_prefix=prefix, tenant_settings=live)
            )
        if "state" in self.services:
            self.stages.append(
                DeviceStateStage(
                    self.bus,
                    self.state_store,
                    self.registry,
                    self.rule_book,
                    topic_prefix=prefix,
                    tenant_settings=live,
                    polygons=self.zone_polygons,
                )
            )
        if "connectors" in self.services:
            self.stages.append(
                ConnectorStage(
                    self.bus,
                    self.connector_store,
                    self.registry,
                    site=self.site_store,
                    topic_prefix=prefix,
                    targets=self.connector_targets,
                    settings=ConnectorStageSettings(
                        refresh_s=config.connectors.refresh_s, max_in_flight=config.connectors.max_in_flight
                    ),
                )
            )
        self.ingest: IngestService | None = None
        # TLS of the gRPC port (files read now: a bad one fails here); the gRPC APIs' check,
        # made at start once the token secret is loaded.
        self.server_tls = (
            ServerTls(config.tls) if config.tls is not None and "ingest" in self.services else None
        )
        self._grpc_auth: ApiAuth | None = None
        self._previous_secrets: list[str] = []
        # Liveness/readiness of this process (docs/operations/kubernetes.md); checks are added
        # at start, for the parts this process really started.
        self.health = CloudHealth()
        self.grpc_health: GrpcHealth | None = None
        if "ingest" in self.services:
            # Each ingest replica reads every invocation (group command-delivery.<replica>);
            # the one hosting the device's edge stream sends it.
            self.stages.append(
                CommandDelivery(
                    self.bus,
                    self.sessions,
                    self.invocations,
                    self.event_store,
                    topic_prefix=prefix,
                    replica_id=config.effective_replica_id(),
                )
            )
            ingest = IngestService(
                self.bus,
                self.registry,
                self.sessions,
                config.grpc_host,
                config.grpc_port,
                topic_prefix=prefix,
                tenant_settings=live,
                tls=self.server_tls,
                edges=self.edge_tracker,
            )
            ingest.add_servicers(
                lambda server: add_grpc_api(
                    server,
                    registry=self.registry,
                    event_store=self.event_store,
                    invocations=self.invocations,
                    commands=self.commands,
                    auth=self._api_auth(),
                    tenants=self.tenants,
                    site=self.site_store,
                    states=self.state_store,
                    rules=self.rule_service,
                )
            )
            grpc_health = GrpcHealth(self.health, ("fieldgate.v1.EdgeUplink",))
            ingest.add_servicers(grpc_health.add_to)
            self.grpc_health = grpc_health
            self.ingest = ingest
        self.rest_port = config.rest_port

    def _api_auth(self) -> ApiAuth:
        if self._grpc_auth is None:  # start() loads the secret before it starts ingest
            raise CloudError("the gRPC APIs' token check is not ready (the token secret is not loaded)")
        return self._grpc_auth

    @property
    def grpc_port(self) -> int:
        """The gRPC port (0 when this process does not run ingest)."""
        return int(self.ingest.port) if self.ingest is not None else 0

    async def ensure_admin(self, password: str | None) -> str | None:
        """Create/refresh user ``admin``: a given password is always set; without one, a password
        is generated and returned when the user store has no admin yet (None otherwise). The
        store decides, not a file in data_dir, so replicas without a common directory agree;
        of two replicas creating the admin at once only one's password is stored and returned."""
        if password is not None:
            await self.users.set_password(ADMIN_USER, password, role=Role.INSTANCE_ADMIN)
            return None
        existing = await self.users.get(ADMIN_USER)
        if existing is not None:
            if existing.role is not Role.INSTANCE_ADMIN:  # a store from before roles
                await self.users.update(ADMIN_USER, role=Role.INSTANCE_ADMIN)
            return None
        generated = secrets.token_urlsafe(12)
        created = await self.users.create(ADMIN_USER, generated, role=Role.INSTANCE_ADMIN)
        return generated if created else None

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        secret = ""
        try:
            if self.zk is not None:
                await self.zk.start()
                self._started.append(self.zk)
                await self._load_zookeeper()
            parts: list[Any] = [self.bus, self.registry, self.invocations]
            if self.services & {"event-store", "ingest", "api"}:
                parts.append(self.event_store)
            if "api" in self.services:
                parts.append(self.users)
            if self.services & {"api", "connectors"}:
                parts.append(self.connector_store)
            # ingest serves the gRPC APIs (SiteManagement, DeviceStates); connectors filter by
            # device group and area through the site store.
            if self.services & {"state", "api", "ingest"}:
                parts.append(self.state_store)
            if self.services & {"state", "api", "ingest", "connectors"}:
                parts.append(self.site_store)
            if "state" in self.services:  # geofence rules naming zones
                parts.append(self.zone_polygons)
            if "api" in self.services:
                parts.append(self.batch_store)
            if self.services & {"api", "ingest"}:
                parts.append(self.edge_directory)
            if self.edge_tracker is not None:
                parts.append(self.edge_tracker)
            if self.services & {"api", "ingest"}:
                # Tenant management (REST on api, gRPC on ingest) provisions and deletes every
                # tenant-owned store; tokens are checked against the users (REST and gRPC).
                parts += [s for _n, s in self.tenant_stores.owned() if s is not self.zk_rules]
            for part in _unique(parts):
                await part.start()
                self._started.append(part)
            if self.services & {"api", "ingest"}:
                # auth.secret_key, auth.secret_file, or the store's (generated once, shared):
                # the REST API signs tokens with it, the gRPC APIs (on ingest) verify them.
                secret = await load_token_secret(self.config, cassandra=self.cassandra)
                self._previous_secrets = load_previous_secrets(self.config)
                self._grpc_auth = ApiAuth(
                    TokenAuthority(secret, self.config.auth.token_ttl_s, self._previous_secrets),
                    self.server_tls,
                    self.user_sessions,
                )
            if self.zk_rules is not None:
                await self.zk_rules.start()
                self._started.append(self.zk_rules)
                await self.zk_rules.watch(self.rule_book.install)
            # Tenants created through the API keep their settings in their record (ZooKeeper's,
            # when configured, were loaded above and win).
            for record in await self.registry.list_tenants():
                if self.tenant_settings.get(record.token) is None and record.settings_json:
                    self.tenant_settings.update(record.token, record_settings(record))
            # The file's tenants, with ZooKeeper's settings where it has them.
            for token in self.tenant_settings.tenants():
                settings = self.tenant_settings.get(token)
                if settings is not None:
                    await self.registry.ensure_tenant(_tenant_record(settings))
                    self._apply_retention(settings)
            self._running = True
            for stage in self.stages:
                await stage.start()
                self._started.append(stage)
            if self.ingest is not None:
                await self.ingest.start()
                self._started.append(self.ingest)
            self._add_health_checks()
            if self.grpc_health is not None:
                await self.grpc_health.start()
                self._started.append(self.grpc_health)
            if "api" in self.services:
                for runner in (self.batch, self.scheduler):  # resumes unfinished batches
                    await runner.start()
                    self._started.append(runner)
                if self.live is not None:
                    await self.live.start()
                    self._started.append(self.live)
                if self._ensure_admin_at_start:
                    self.generated_admin_password = await self.ensure_admin(self._admin_password)
                await self._start_rest(secret)
            if self.config.health.port is not None:
                await self._start_health_listener()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "cloud up (%s): gRPC %s:%d, REST http://%s:%d",
            ", ".join(sorted(self.services)),
            self.config.grpc_host,
            self.grpc_port,
            self.config.rest_host,
            self.rest_port,
        )

    async def _load_zookeeper(self) -> None:
        """Instance settings (applied before anything connects) and tenant settings from
        ZooKeeper, then watch both (docs/operations/zookeeper.md)."""
        zk = self.zk
        assert zk is not None
        loaded = await zk.load()
        if not zk.instance_exists:
            if await zk.create_instance(InstanceSettings.from_cloud_config(self.file_config)):
                log.info(
                    "zookeeper: %s did not exist; written from this service's configuration",
                    zk.instance_path,
                )
            else:
                loaded = await zk.load()  # another service created it meanwhile
        if zk.instance_valid:
            effective = ZkConfig(instance=zk.current().instance).apply_to(self.file_config)
            changed = _changed_keys(
                InstanceSettings.from_cloud_config(self.config).model_dump(),
                InstanceSettings.from_cloud_config(effective).model_dump(),
            )
            if changed:
                resolve_services(effective, self.services)
                log.info(
                    "zookeeper: instance settings from %s replace the file's: %s",
                    zk.instance_path,
                    ", ".join(changed),
                )
                self._build(effective)
        elif zk.instance_exists:
            log.error(
                "zookeeper: %s is invalid (%s); this service runs with its file configuration",
                zk.instance_path,
                zk.last_rejection.get(zk.instance_path, "see above"),
            )
        for token, settings in loaded.tenants.items():
            self.tenant_settings.update(token, settings)
        log.info("zookeeper: %d tenant configuration(s) loaded", len(loaded.tenants))
        await zk.watch_tenants(self.tenant_settings.update, self._forget_tenant)
        await zk.watch_instance(self._on_instance_settings)

    def _on_instance_settings(self, settings: InstanceSettings) -> None:
        """A new valid instance znode at run time: not applied (bus and store are connected);
        logged with the keys that differ from what this process runs with."""
        changed = _changed_keys(
            InstanceSettings.from_cloud_config(self.config).model_dump(), settings.model_dump()
        )
        self.restart_needed = changed
        if changed:
            log.warning(
                "zookeeper: instance settings changed (%s); not applied to the running service: "
                "restart it to use them",
                ", ".join(changed),
            )

    def _on_tenant_settings(self, settings: TenantSettings) -> None:
        """A tenant's settings changed (ZooKeeper): retention now, the registry's tenant record
        in the background; the stages read the rest per batch."""
        self._apply_retention(settings)
        if self._running:
            task = asyncio.get_running_loop().create_task(self._ensure_tenant(settings))
            self._tenant_tasks.add(task)
            task.add_done_callback(self._tenant_tasks.discard)

    async def _ensure_tenant(self, settings: TenantSettings) -> None:
        try:
            await self.registry.ensure_tenant(_tenant_record(settings))
        except CloudError as err:  # task top: the live settings apply anyway; the record is cosmetic
            log.error("tenant %s: cannot update the tenant record: %s", settings.token, err)

    def _forget_tenant(self, token: str) -> None:
        """A tenant was deleted (here, or by another process: its znode went): forget its
        settings and what this process caches of it — every tenant-owned store of the list, the
        registry, and :meth:`tenant_caches` — so nothing here serves or recreates it. (The
        connectors stage also checks each tenant's incarnation itself, for processes that are
        not told: cloud/pipeline/connectors/stage.py.)"""
        self.tenant_settings.remove(token)
        self.registry.forget_tenant(token)
        for _name, store in self.tenant_stores.owned():
            store.forget_tenant(token)
        for cache in self.tenant_caches():
            cache.forget_tenant(token)
        log.info("tenant %s deleted: forgotten by this process", token)

    def tenant_caches(self) -> list[_ForgetsTenants]:
        """What this process caches per tenant besides the stores (tests/integration/
        test_tenant_lifecycle.py checks that every part of the app with a ``forget_tenant`` is
        here, in :attr:`tenant_stores` or the registry)."""
        caches: list[_ForgetsTenants] = [
            self.bus,
            self.zone_polygons,
            self.rule_book,
            self.user_sessions,
            self.batch,
            self.scheduler,
        ]
        if self.ingest is not None:
            caches.append(self.ingest)
        if self.edge_tracker is not None:
            caches.append(self.edge_tracker)
        # Stages that keep per-tenant state say so with a forget_tenant of their own.
        caches += [stage for stage in self.stages if isinstance(stage, _ForgetsTenants)]
        return caches

    def _apply_retention(self, settings: TenantSettings) -> None:
        store = self.event_store
        if isinstance(store, _TtlStore):
            store.set_ttl(settings.token, settings.ttl_s)
            return
        if settings.retention_days is not None and settings.token not in self._retention_unsupported:
            self._retention_unsupported.add(settings.token)
            if "event-store" in self.services:
                log.warning(
                    "tenant %s: retention_days=%d is not supported by the %s event store; events are kept",
                    settings.token,
                    settings.retention_days,
                    self.config.store.kind,
                )

    async def _start_rest(self, secret: str) -> None:
        api = create_api(
            registry=self.registry,
            event_store=self.event_store,
            invocations=self.invocations,
            commands=self.commands,
            users=self.users,
            auth=self.config.auth,
            secret=secret,
            health=self.health,
            tenants=self.tenants,
            connectors=self.connector_admin,
            state_store=self.state_store,
            rules=self.rule_service,
            site=self.site_store,
            labels_base_url=self.config.labels.base_url,
            batch=self.batch,
            previous_secrets=self._previous_secrets,
            live=self.live,
            edges=self.edge_directory,
            sessions=self.user_sessions,
        )
        self.rest_app = api
        server = _EmbeddedUvicorn(
            uvicorn.Config(
                api,
                host=self.config.rest_host,
                port=self.config.rest_port,
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        self._rest = server
        self._rest_task = asyncio.create_task(server.serve(), name="rest")
        while not server.started:
            if self._rest_task.done():
                self._rest_task.result()
                raise RuntimeError("REST server stopped while starting")
            await asyncio.sleep(0.01)
        sock = server.servers[0].sockets[0]
        self.rest_port = int(sock.getsockname()[1])

    def _add_health_checks(self) -> None:
        """Readiness: each dependency this process started answers a real read; liveness:
        each stage's task (and the REST server) is still running."""
        health = self.health
        started = {id(part) for part in self._started}
        health.add_ready("bus", self.bus.ping)
        probe_tenant = self.tenant_settings.tenants()[0] if self.tenant_settings.tenants() else "default"
        health.add_ready("registry", self.registry.list_tenants)
        health.add_ready("invocations", lambda: self.invocations.get(probe_tenant, "readiness-probe"))
        if id(self.event_store) in started:
            probe_id = event_id(probe_tenant, "readiness-probe", "readiness-probe")
            health.add_ready("event_store", lambda: self.event_store.get_event(probe_tenant, probe_id))
        if id(self.users) in started:
            health.add_ready("users", lambda: self.users.tenant_of(ADMIN_USER))
        for stage in self.stages:
            if isinstance(stage, ConnectorStage):
                health.add_live(stage.name, stage.is_running)
            for attr in ("stage", "delivery_stage", "response_stage"):
                inner = getattr(stage, attr, None)
                if isinstance(inner, ConsumerStage):
                    health.add_live(inner.name, _running_check(inner))
        if "api" in self.services:
            health.add_live("rest", lambda: self._rest_task is None or not self._rest_task.done())

    async def _start_health_listener(self) -> None:
        server = _EmbeddedUvicorn(
            uvicorn.Config(
                health_app(self.health),
                host=self.config.health.host,
                port=self.config.health.port or 0,
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        self._health_server = server
        self._health_task = asyncio.create_task(server.serve(), name="health")
        while not server.started:
            if self._health_task.done():
                self._health_task.result()
                raise CloudError(
                    f"health: cannot listen on {self.config.health.host}:{self.config.health.port}"
                )
            await asyncio.sleep(0.01)
        self.health_port = int(server.servers[0].sockets[0].getsockname()[1])
        log.info("health: http://%s:%d/healthz and /readyz", self.config.health.host, self.health_port)

    async def drain(self) -> None:
        """Graceful shutdown, first half (SIGTERM): readiness goes false (HTTP and gRPC), ingest
        stops taking batches, acknowledges what it committed and ends its edge streams, within
        ``drain_timeout_s``. :meth:`stop` then stops the rest; the consumer stages finish the
        batch in hand before they commit and leave."""
        self.health.drain()
        if self.grpc_health is not None:
            await self.grpc_health.drain()
        if self.ingest is not None:
            await self.ingest.drain(self.config.drain_timeout_s)

    async def stop(self) -> None:
        self._running = False
        self.health.drain()
        if self._health_server is not None and self._health_task is not None:
            self._health_server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_server = self._health_task = None
        if self._tenant_tasks:
            await asyncio.gather(*self._tenant_tasks, return_exceptions=True)
        await self.rule_book.drain()
        if self.live is not None:  # open SSE responses would keep the REST server waiting
            self.live.close_streams()
        if self._rest is not None and self._rest_task is not None:
            self._rest.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._rest_task
            self._rest = self._rest_task = None
        while self._started:
            part = self._started.pop()
            await part.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
