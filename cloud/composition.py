"""What a cloud process is made of: THE list of services, THE list of tenant-owned stores, the
parts the services share, and one factory per service building what it runs.

:class:`~fieldgate.cloud.app.CloudApp` only orchestrates (start, stop, drain, health,
ZooKeeper); this module decides *what* there is:

1. :func:`build_parts` builds — connecting nothing — the :class:`Parts` every service of the
   process shares: the bus, the stores (:mod:`fieldgate.cloud.store.backend` picks SQLite or
   Cassandra), the transport-neutral services over them, the edge session table, the health
   checks' registry and the token-signing key.
2. ``FACTORIES[name](parts)`` builds the :class:`Service` of each chosen service: the shared
   parts it needs started (``needs``) and what it runs (``runs``: its stages, servers and
   runners, in start order).
3. CloudApp starts every chosen service's needs (each shared part once), then each service's
   runs in :data:`SERVICES` order, and stops everything in reverse.

The services (``fieldgate cloud run <service>``; docs/operations/distributed.md):

* ``ingest`` — the gRPC server (edge uplink and the gRPC APIs) *and* command delivery:
  delivering a command means writing to the edge's open uplink stream, which only the process
  hosting that stream has (``command-delivery`` names the same service). Its replicas do not
  share [command-invocations]: each reads all of it in its own group
  (``command-delivery.<replica_id>``) and sends what its edges own;
* ``inbound``, ``registration``, ``event-store`` — one consumer stage each;
* ``state`` — device state, presence and rules → alerts (docs/rules.md);
* ``connectors`` — outbound connectors (docs/connectors.md);
* ``api`` — the REST API, and the batch-operation runner and the scheduler (they only call
  CommandService, so they need no stage of their own; several ``api`` replicas are safe:
  schedule runs are claimed once per due time, batch invocations have derived ids).

Adding a service is one place: its factory in :data:`FACTORIES`, whose names are
:data:`SERVICES` (``fieldgate cloud run --help``, the Helm chart's test and the distributed
suite read :data:`SERVICES`). Adding a tenant-owned store is one place too: a field of
:class:`TenantStores` and its construction in :func:`build_parts` — tenant provisioning and
deletion (cloud/services/tenants.py), every process's forget path (cloud/app.py) and the
lifecycle contract test (tests/contract/test_tenant_lifecycle_contract.py) iterate
:class:`TenantStores`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from fieldgate.cloud.errors import CloudError
from fieldgate.errors import ConfigError

# Only names at import time: the CLI reads SERVICES to build its help, and an edge agent or a
# `fieldgate --help` must not load the cloud. build_parts and each factory import what they
# build, so a process loads the code of its own services only.
if TYPE_CHECKING:
    from fieldgate.cloud.bus import Bus
    from fieldgate.cloud.config import CloudConfig
    from fieldgate.cloud.domain.connectors.targets import TargetPolicy
    from fieldgate.cloud.health import CloudHealth, GrpcHealth
    from fieldgate.cloud.pipeline.ingest.service import IngestService
    from fieldgate.cloud.pipeline.rules import RuleBook
    from fieldgate.cloud.pipeline.sessions import EdgeSessions
    from fieldgate.cloud.pipeline.zones import ZonePolygons
    from fieldgate.cloud.services.auth import UserSessions
    from fieldgate.cloud.services.batch import BatchOperations
    from fieldgate.cloud.services.commands import CommandService
    from fieldgate.cloud.services.connectors import ConnectorAdmin
    from fieldgate.cloud.services.live import LiveHub
    from fieldgate.cloud.services.rules import RuleService
    from fieldgate.cloud.services.scheduler import Scheduler
    from fieldgate.cloud.services.tenants import TenantAdmin
    from fieldgate.cloud.store import TenantOwned
    from fieldgate.cloud.store.backend import StorageBackend
    from fieldgate.cloud.store.batch import BatchStore
    from fieldgate.cloud.store.connectors import ConnectorStore
    from fieldgate.cloud.store.edges import EdgeDirectory
    from fieldgate.cloud.store.events import EventStore
    from fieldgate.cloud.store.invocations import InvocationStore
    from fieldgate.cloud.store.registry import Registry
    from fieldgate.cloud.store.site import SiteStore
    from fieldgate.cloud.store.state import DeviceStateStore
    from fieldgate.cloud.store.users import UserStore
    from fieldgate.cloud.webserver import HttpServer
    from fieldgate.cloud.zk.models import TenantSettingsRegistry
    from fieldgate.cloud.zk.rules import ZkRules
    from fieldgate.cloud.zk.source import ZkConfigSource

#: Other names of a service: command delivery needs the edge streams ingest hosts.
SERVICE_ALIASES: Mapping[str, str] = {"command-delivery": "ingest"}


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


@runtime_checkable
class Part(Protocol):
    """Anything a process starts and stops: the bus, a store, a stage, a server."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class ForgetsTenants(Protocol):
    """A part that caches something per tenant: told when a tenant is deleted."""

    def forget_tenant(self, tenant: str) -> None: ...


@dataclass(frozen=True, slots=True)
class TenantStores:
    """THE list of the stores that keep data of a tenant, besides the registry (which holds the
    tenant's record; cloud/services/tenants.py). Every field is a
    :class:`~fieldgate.cloud.store.TenantOwned` store; the order is the order of deletion
    (users first: their tokens stop working at once). ``rules_zk`` is ZooKeeper's copy of the
    tenants' rule sets (``/fieldgate/<instance>/rules/<t>``, cloud/zk/rules.py), when
    ZooKeeper is configured: left behind, it would give a new tenant of the token the old
    rules at the next start."""

    users: UserStore
    states: DeviceStateStore  # device states, rules, presence intervals
    site: SiteStore
    connectors: ConnectorStore  # connectors, their dead letters and positions
    batch: BatchStore  # batch operations, schedules and their runs
    edges: EdgeDirectory
    invocations: InvocationStore
    events: EventStore
    rules_zk: TenantOwned | None = None

    def owned(self) -> list[tuple[str, TenantOwned]]:
        """(name, store) of every store present, in the order of deletion."""
        out: list[tuple[str, TenantOwned]] = []
        for f in fields(self):
            store = getattr(self, f.name)
            if store is not None:
                out.append((f.name, store))
        return out


class TokenKeys:
    """The key that signs bearer tokens (``auth.secret_key``, ``auth.secret_file`` or the
    store's, generated once and shared) and the previous ones, loaded at start: the REST API
    signs tokens with it, the gRPC APIs (on ingest) verify them."""

    def __init__(self, config: CloudConfig, storage: StorageBackend) -> None:
        self._config = config
        self._storage = storage
        self._secret: str | None = None
        self.previous: list[str] = []

    async def start(self) -> None:
        from fieldgate.cloud.store.backend import load_previous_secrets

        self._secret = await self._storage.token_secret()
        self.previous = load_previous_secrets(self._config)

    async def stop(self) -> None:
        """Nothing to release (the key stays loaded)."""

    @property
    def secret(self) -> str:
        if self._secret is None:  # the process starts TokenKeys before the APIs
            raise CloudError("the API's token check is not ready (the token secret is not loaded)")
        return self._secret


@dataclass(eq=False)
class Parts:
    """What the services of one process share (module docstring); built by :func:`build_parts`."""

    config: CloudConfig
    services: frozenset[str]
    # Live per-tenant settings (the file's tenants, then ZooKeeper's); stages consult them per batch.
    tenant_settings: TenantSettingsRegistry
    bus: Bus
    # Where the stores keep their data: SQLite files in data_dir, or Cassandra (one connection
    # shared by the stores); every store comes from it.
    storage: StorageBackend
    registry: Registry
    invocations: InvocationStore
    event_store: EventStore
    users: UserStore
    # Outbound connector definitions and dead letters (the api and connectors services), and
    # where connectors may send (connectors.allow_networks: checked by the api at creation and
    # by the connectors service at every connect).
    connector_store: ConnectorStore
    connector_targets: TargetPolicy
    connector_admin: ConnectorAdmin
    # Device states and rules (state, api, ingest); rule changes reach every replica through
    # ZooKeeper when it is configured (cloud/zk/rules.py).
    state_store: DeviceStateStore
    rule_book: RuleBook
    zk_rules: ZkRules | None
    rule_service: RuleService
    # Areas, zones, assets, device groups (api, ingest's gRPC APIs; state reads zones, the
    # connectors filter by group and area).
    site_store: SiteStore
    zone_polygons: ZonePolygons
    # Edge agents seen by ingest (written there, read by the api's /api/v1/edges).
    edge_directory: EdgeDirectory
    # Which edge stream reaches which device: ingest feeds it, command delivery sends through it.
    sessions: EdgeSessions
    # Whether a token's user still is what the token says (REST and gRPC check each request).
    user_sessions: UserSessions
    commands: CommandService
    # Batch operations and schedules (the api service runs them).
    batch_store: BatchStore
    batch: BatchOperations
    scheduler: Scheduler
    tenant_stores: TenantStores
    # Tenant lifecycle (REST /api/v1/tenants on api, gRPC TenantManagement on ingest).
    tenants: TenantAdmin
    token_keys: TokenKeys
    # Liveness/readiness of this process (docs/operations/kubernetes.md).
    health: CloudHealth

    def caches(self) -> list[ForgetsTenants]:
        """The shared parts that cache something per tenant besides the stores."""
        return [self.bus, self.zone_polygons, self.rule_book, self.user_sessions, self.batch, self.scheduler]


def build_parts(
    config: CloudConfig,
    services: frozenset[str],
    *,
    tenant_settings: TenantSettingsRegistry,
    zk: ZkConfigSource | None,
    configured_tenants: Collection[str],
    on_tenant_deleted: Callable[[str], None],
) -> Parts:
    """Build (not start) the shared parts of a process running ``services`` with ``config``.
    ``configured_tenants`` are the file's (they cannot be deleted); ``on_tenant_deleted`` is
    the process's forget path, called when this process deletes a tenant."""
    from fieldgate.cloud.bus import build_bus
    from fieldgate.cloud.domain.connectors.targets import TargetPolicy
    from fieldgate.cloud.health import CloudHealth
    from fieldgate.cloud.pipeline.rules import RuleBook
    from fieldgate.cloud.pipeline.sessions import EdgeSessions
    from fieldgate.cloud.pipeline.zones import ZonePolygons
    from fieldgate.cloud.services.auth import UserSessions
    from fieldgate.cloud.services.batch import BatchOperations
    from fieldgate.cloud.services.commands import CommandService
    from fieldgate.cloud.services.connectors import ConnectorAdmin
    from fieldgate.cloud.services.rules import RuleService
    from fieldgate.cloud.services.scheduler import Scheduler
    from fieldgate.cloud.services.tenants import TenantAdmin
    from fieldgate.cloud.services.users import PasswordHasher
    from fieldgate.cloud.store.backend import storage_backend

    prefix = config.bus.topic_prefix
    bus = build_bus(config, client_id="fieldgate-" + "-".join(sorted(services)))
    storage = storage_backend(config)
    registry = storage.registry()
    invocations = storage.invocations()
    event_store = storage.events(tenants=[t.token for t in config.tenants])
    users = storage.users(PasswordHasher())
    connector_store = storage.connectors()
    connector_targets = TargetPolicy.from_networks(config.connectors.allow_networks)
    state_store = storage.state()
    site_store = storage.site()
    edge_directory = storage.edges()
    batch_store = storage.batch()
    rule_book = RuleBook(state_store)
    zk_rules: ZkRules | None = None
    # The state stage evaluates the rules; api and ingest serve them (REST, gRPC) and delete a
    # deleted tenant's set.
    if config.zookeeper is not None and services & {"state", "api", "ingest"}:
        from fieldgate.cloud.zk.rules import ZkRules

        zk_rules = ZkRules(config.zookeeper.hosts, config.zookeeper.instance)
    commands = CommandService(registry, invocations, bus, config.default_command_ttl_s, topic_prefix=prefix)
    batch = BatchOperations(batch_store, registry, commands, groups=site_store)
    tenant_stores = TenantStores(
        users=users,
        states=state_store,
        site=site_store,
        connectors=connector_store,
        batch=batch_store,
        edges=edge_directory,
        invocations=invocations,
        events=event_store,
        rules_zk=zk_rules,
    )
    return Parts(
        config=config,
        services=services,
        tenant_settings=tenant_settings,
        bus=bus,
        storage=storage,
        registry=registry,
        invocations=invocations,
        event_store=event_store,
        users=users,
        connector_store=connector_store,
        connector_targets=connector_targets,
        connector_admin=ConnectorAdmin(connector_store, bus, connector_targets, topic_prefix=prefix),
        state_store=state_store,
        rule_book=rule_book,
        zk_rules=zk_rules,
        rule_service=RuleService(state_store, rule_book, zk_rules.publish if zk_rules is not None else None),
        site_store=site_store,
        zone_polygons=ZonePolygons(site_store, registry),
        edge_directory=edge_directory,
        sessions=EdgeSessions(),
        user_sessions=UserSessions(users),
        commands=commands,
        batch_store=batch_store,
        batch=batch,
        scheduler=Scheduler(batch_store, registry, commands, batch, replica=config.effective_replica_id()),
        tenant_stores=tenant_stores,
        tenants=TenantAdmin(
            registry,
            tenant_stores,
            bus,
            configured=configured_tenants,
            live=tenant_settings,
            zk=zk,
            on_deleted=on_tenant_deleted,
        ),
        token_keys=TokenKeys(config, storage),
        health=CloudHealth(),
    )


@dataclass(frozen=True, slots=True)
class Service:
    """What one service of :data:`SERVICES` is in this process (module docstring)."""

    name: str
    # Shared parts it uses, started (each once per process) before any service runs. The bus,
    # the registry and the invocation store are every service's and not listed.
    needs: tuple[Part, ...] = ()
    # What it runs, started in this order after every need; stopped in reverse.
    runs: tuple[Part, ...] = ()
    # The parts CloudApp itself talks to (drain, ports, SSE shutdown).
    ingest: IngestService | None = None
    grpc_health: GrpcHealth | None = None
    rest: HttpServer | None = None
    live: LiveHub | None = None


def _ingest(parts: Parts) -> Service:
    from fieldgate.cloud.api.grpc.server import ApiAuth, add_grpc_api
    from fieldgate.cloud.health import GrpcHealth
    from fieldgate.cloud.pipeline.delivery import CommandDelivery
    from fieldgate.cloud.pipeline.ingest.edges import EdgeTracker
    from fieldgate.cloud.pipeline.ingest.service import IngestService
    from fieldgate.cloud.services.auth import TokenAuthority
    from fieldgate.cloud.tls import ServerTls

    config = parts.config
    prefix = config.bus.topic_prefix
    tracker = EdgeTracker(parts.edge_directory)
    # TLS of the gRPC port (files read now: a bad one fails here).
    server_tls = ServerTls(config.tls) if config.tls is not None else None
    # Each ingest replica reads every invocation (group command-delivery.<replica>); the one
    # hosting the device's edge stream sends it.
    delivery = CommandDelivery(
        parts.bus,
        parts.sessions,
        parts.invocations,
        parts.event_store,
        topic_prefix=prefix,
        replica_id=config.effective_replica_id(),
    )
    ingest = IngestService(
        parts.bus,
        parts.registry,
        parts.sessions,
        config.grpc_host,
        config.grpc_port,
        topic_prefix=prefix,
        tenant_settings=parts.tenant_settings,
        tls=server_tls,
        edges=tracker,
    )
    keys = parts.token_keys
    # The gRPC APIs share ingest's server; their token check is made when it starts (the
    # token secret is loaded by then).
    ingest.add_servicers(
        lambda server: add_grpc_api(
            server,
            registry=parts.registry,
            event_store=parts.event_store,
            invocations=parts.invocations,
            commands=parts.commands,
            auth=ApiAuth(
                TokenAuthority(keys.secret, config.auth.token_ttl_s, keys.previous),
                server_tls,
                parts.user_sessions,
            ),
            tenants=parts.tenants,
            site=parts.site_store,
            states=parts.state_store,
            rules=parts.rule_service,
        )
    )
    grpc_health = GrpcHealth(parts.health, ("fieldgate.v1.EdgeUplink",))
    ingest.add_servicers(grpc_health.add_to)
    return Service(
        "ingest",
        # The gRPC APIs (SiteManagement, DeviceStates, TenantManagement, ...) and the edge directory.
        needs=(
            parts.event_store,
            parts.state_store,
            parts.site_store,
            parts.edge_directory,
            *_tenant_owned(parts),
            parts.token_keys,
        ),
        runs=(tracker, delivery, ingest, grpc_health),
        ingest=ingest,
        grpc_health=grpc_health,
    )


def _inbound(parts: Parts) -> Service:
    from fieldgate.cloud.pipeline.inbound import InboundProcessing

    stage = InboundProcessing(
        parts.bus, parts.registry, parts.invocations, topic_prefix=parts.config.bus.topic_prefix
    )
    return Service("inbound", runs=(stage,))


def _registration(parts: Parts) -> Service:
    from fieldgate.cloud.pipeline.registration import Registration

    stage = Registration(
        parts.bus,
        parts.registry,
        parts.config.tenants,
        topic_prefix=parts.config.bus.topic_prefix,
        tenant_settings=parts.tenant_settings,
    )
    return Service("registration", runs=(stage,))


def _event_store(parts: Parts) -> Service:
    from fieldgate.cloud.pipeline.persistence import EventPersistence

    stage = EventPersistence(
        parts.bus,
        parts.event_store,
        topic_prefix=parts.config.bus.topic_prefix,
        tenant_settings=parts.tenant_settings,
    )
    return Service("event-store", needs=(parts.event_store,), runs=(stage,))


def _state(parts: Parts) -> Service:
    from fieldgate.cloud.pipeline.state import DeviceStateStage

    stage = DeviceStateStage(
        parts.bus,
        parts.state_store,
        parts.registry,
        parts.rule_book,
        topic_prefix=parts.config.bus.topic_prefix,
        tenant_settings=parts.tenant_settings,
        polygons=parts.zone_polygons,
    )
    # Geofence rules name zones (zone_polygons reads them from the site store).
    return Service("state", needs=(parts.state_store, parts.site_store, parts.zone_polygons), runs=(stage,))


def _connectors(parts: Parts) -> Service:
    from fieldgate.cloud.pipeline.connectors.stage import ConnectorStage, ConnectorStageSettings

    config = parts.config
    stage = ConnectorStage(
        parts.bus,
        parts.connector_store,
        parts.registry,
        site=parts.site_store,
        topic_prefix=config.bus.topic_prefix,
        targets=parts.connector_targets,
        settings=ConnectorStageSettings(
            refresh_s=config.connectors.refresh_s, max_in_flight=config.connectors.max_in_flight
        ),
    )
    # Connectors filter by device group and area through the site store.
    return Service("connectors", needs=(parts.connector_store, parts.site_store), runs=(stage,))


def _api(parts: Parts) -> Service:
    from fieldgate.cloud.api.rest.app import create_api
    from fieldgate.cloud.services.live import LiveHub
    from fieldgate.cloud.webserver import HttpServer

    config = parts.config
    # The api's live events (SSE): its own tail consumers of the bus (cloud/services/live.py).
    live = LiveHub(parts.bus, parts.invocations, topic_prefix=config.bus.topic_prefix)
    keys = parts.token_keys
    rest = HttpServer(
        "rest",
        lambda: create_api(
            registry=parts.registry,
            event_store=parts.event_store,
            invocations=parts.invocations,
            commands=parts.commands,
            users=parts.users,
            auth=config.auth,
            secret=keys.secret,
            health=parts.health,
            tenants=parts.tenants,
            connectors=parts.connector_admin,
            state_store=parts.state_store,
            rules=parts.rule_service,
            site=parts.site_store,
            labels_base_url=config.labels.base_url,
            batch=parts.batch,
            previous_secrets=keys.previous,
            live=live,
            edges=parts.edge_directory,
            sessions=parts.user_sessions,
        ),
        config.rest_host,
        config.rest_port,
    )
    return Service(
        "api",
        needs=(
            parts.event_store,
            parts.users,
            parts.connector_store,
            parts.state_store,
            parts.site_store,
            parts.batch_store,
            parts.edge_directory,
            *_tenant_owned(parts),
            parts.token_keys,
        ),
        # The batch runner resumes unfinished batches at start.
        runs=(parts.batch, parts.scheduler, live, rest),
        rest=rest,
        live=live,
    )


def _tenant_owned(parts: Parts) -> list[Part]:
    """Tenant management (REST on api, gRPC on ingest) provisions and deletes every
    tenant-owned store (ZooKeeper's rule copy is started with ZooKeeper, by CloudApp)."""
    out: list[Part] = []
    for name, store in parts.tenant_stores.owned():
        if store is parts.zk_rules:
            continue
        if not isinstance(store, Part):
            raise TypeError(f"tenant-owned store {name} cannot be started")
        out.append(store)
    return out


#: The cloud's services and the factory of each, in the order a process starts them (and the
#: distributed suite starts their processes): the consumer stages first, then ingest (the
#: edges' uplink and command delivery), the REST api last.
FACTORIES: Mapping[str, Callable[[Parts], Service]] = {
    "inbound": _inbound,
    "registration": _registration,
    "event-store": _event_store,
    "state": _state,
    "connectors": _connectors,
    "ingest": _ingest,
    "api": _api,
}
#: THE list of the cloud's services (``fieldgate cloud run <service>``), in start order.
SERVICES: tuple[str, ...] = tuple(FACTORIES)


def build_services(parts: Parts) -> list[Service]:
    """The chosen services of ``parts.services``, in :data:`SERVICES` order."""
    return [FACTORIES[name](parts) for name in SERVICES if name in parts.services]
