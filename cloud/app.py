"""The cloud process: the chosen services (all of them by default) in one event loop, wired
through the bus.

What a process is made of — THE list of services, the parts they share and one factory per
service — is :mod:`fieldgate.cloud.composition`. :class:`CloudApp` only orchestrates: it builds
the parts and the services, starts them in order (each service's needs, then what it runs),
stops them in reverse, answers the health probes and keeps the process in step with ZooKeeper.

Stages never call each other; they share only the bus, the stores and (for command delivery,
which must reach the edge streams that ingest hosts) the edge session table.

With ``services=None`` (the default) one process runs everything — the only choice with the
embedded bus. On Kafka, ``services`` picks the services this process runs (``fieldgate cloud
run <service>``), so each can run as its own process and as several replicas (they share a
stage's partitions through Kafka consumer groups; docs/operations/distributed.md).

When ``config.zookeeper`` is set, every process — whichever services it runs — reads ZooKeeper
at start and watches it (docs/operations/zookeeper.md):

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
import logging
import secrets
from collections.abc import Callable, Collection, Mapping
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from fastapi import FastAPI

from fieldgate.cloud.composition import (
    ForgetsTenants,
    Part,
    Parts,
    Service,
    build_parts,
    build_services,
    resolve_services,
)
from fieldgate.cloud.config import CloudConfig
from fieldgate.cloud.errors import CloudError
from fieldgate.cloud.health import GrpcHealth, health_app
from fieldgate.cloud.ids import event_id
from fieldgate.cloud.pipeline.connectors.stage import ConnectorStage
from fieldgate.cloud.pipeline.ingest.service import IngestService
from fieldgate.cloud.pipeline.stage import ConsumerStage
from fieldgate.cloud.services.access import Role
from fieldgate.cloud.services.live import LiveHub
from fieldgate.cloud.services.tenants import record_settings, tenant_record
from fieldgate.cloud.webserver import HttpServer
from fieldgate.cloud.zk.models import InstanceSettings, TenantSettings, TenantSettingsRegistry, ZkConfig

log = logging.getLogger(__name__)

ADMIN_USER = "admin"


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


def _running_check(stage: ConsumerStage) -> Callable[[], bool]:
    return lambda: stage.running


class CloudApp:
    """The chosen services of the cloud in one process (module docstring)."""

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
        self._health_server: HttpServer | None = None
        self.health_port = 0  # the bound port of the health listener (0: none)
        self._started: list[Part] = []
        self._compose(config)

    def _compose(self, config: CloudConfig) -> None:
        """Build (not start) the parts and the services for ``config``. Called again at start
        when ZooKeeper's instance settings differ from the file's — before anything connects."""
        self.config = config
        self.parts: Parts = build_parts(
            config,
            self.services,
            tenant_settings=self.tenant_settings,
            zk=self.zk,
            configured_tenants=[t.token for t in self.file_config.tenants],
            on_tenant_deleted=self._forget_tenant,
        )
        self.running_services: list[Service] = build_services(self.parts)
        by_name = {service.name: service for service in self.running_services}
        ingest, api = by_name.get("ingest"), by_name.get("api")
        # The parts the process itself talks to: ingest (drain, its port), the REST server
        # (its port), the live hub (its SSE streams end before the REST server stops).
        self.ingest: IngestService | None = ingest.ingest if ingest is not None else None
        self._grpc_health: GrpcHealth | None = ingest.grpc_health if ingest is not None else None
        self.live: LiveHub | None = api.live if api is not None else None
        self._rest: HttpServer | None = api.rest if api is not None else None

    @property
    def runs(self) -> list[Part]:
        """What the services of this process run (stages, servers, runners), in start order."""
        return [part for service in self.running_services for part in service.runs]

    @property
    def grpc_port(self) -> int:
        """The gRPC port (0 when this process does not run ingest)."""
        return int(self.ingest.port) if self.ingest is not None else 0

    @property
    def rest_port(self) -> int:
        """The REST API's port: the bound one once the ``api`` service runs, else the configured one."""
        return self._rest.port if self._rest is not None else self.config.rest_port

    @property
    def rest_app(self) -> FastAPI | None:
        """The REST API served (with the ``api`` service, once started)."""
        return self._rest.app if self._rest is not None else None

    async def ensure_admin(self, password: str | None) -> str | None:
        """Create/refresh user ``admin``: a given password is always set; without one, a password
        is generated and returned when the user store has no admin yet (None otherwise). The
        store decides, not a file in data_dir, so replicas without a common directory agree;
        of two replicas creating the admin at once only one's password is stored and returned."""
        users = self.parts.users
        if password is not None:
            await users.set_password(ADMIN_USER, password, role=Role.INSTANCE_ADMIN)
            return None
        existing = await users.get(ADMIN_USER)
        if existing is not None:
            if existing.role is not Role.INSTANCE_ADMIN:  # a store from before roles
                await users.update(ADMIN_USER, role=Role.INSTANCE_ADMIN)
            return None
        generated = secrets.token_urlsafe(12)
        created = await users.create(ADMIN_USER, generated, role=Role.INSTANCE_ADMIN)
        return generated if created else None

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.zk is not None:
                await self.zk.start()
                self._started.append(self.zk)
                await self._load_zookeeper()
            parts = self.parts
            for part in self._needs():
                await part.start()
                self._started.append(part)
            if parts.zk_rules is not None:
                await parts.zk_rules.start()
                self._started.append(parts.zk_rules)
                await parts.zk_rules.watch(parts.rule_book.install)
            # Tenants created through the API keep their settings in their record (ZooKeeper's,
            # when configured, were loaded above and win).
            for record in await parts.registry.list_tenants():
                if self.tenant_settings.get(record.token) is None and record.settings_json:
                    self.tenant_settings.update(record.token, record_settings(record))
            # The file's tenants, with ZooKeeper's settings where it has them.
            for token in self.tenant_settings.tenants():
                settings = self.tenant_settings.get(token)
                if settings is not None:
                    await parts.registry.ensure_tenant(tenant_record(settings))
                    self._apply_retention(settings)
            self._add_ready_checks()
            self._running = True
            for service in self.running_services:
                for part in service.runs:
                    if part is self._rest and self._ensure_admin_at_start:
                        # before the REST API serves: a login right after readiness finds it
                        self.generated_admin_password = await self.ensure_admin(self._admin_password)
                    await self._start_run(part)
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

    async def _start_run(self, part: Part) -> None:
        """Start one thing a service runs (a stage, a server, a runner) and watch its liveness."""
        await part.start()
        self._started.append(part)
        self._add_live_checks(part)

    def _needs(self) -> list[Part]:
        """Every shared part a chosen service needs, each once, in order: the bus, the registry
        and the invocation store (every service's) first."""
        parts = self.parts
        needs: list[Part] = [parts.bus, parts.registry, parts.invocations]
        for service in self.running_services:
            needs += service.needs
        seen: set[int] = set()
        out: list[Part] = []
        for part in needs:
            if id(part) not in seen:
                seen.add(id(part))
                out.append(part)
        return out

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
                self._compose(effective)
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
            await self.parts.registry.ensure_tenant(tenant_record(settings))
        except CloudError as err:  # task top: the live settings apply anyway; the record is cosmetic
            log.error("tenant %s: cannot update the tenant record: %s", settings.token, err)

    def _forget_tenant(self, token: str) -> None:
        """A tenant was deleted (here, or by another process: its znode went): forget its
        settings and what this process caches of it — every tenant-owned store of the list, the
        registry, and :meth:`tenant_caches` — so nothing here serves or recreates it. (The
        connectors stage also checks each tenant's incarnation itself, for processes that are
        not told: cloud/pipeline/connectors/stage.py.)"""
        self.tenant_settings.remove(token)
        self.parts.registry.forget_tenant(token)
        for _name, store in self.parts.tenant_stores.owned():
            store.forget_tenant(token)
        for cache in self.tenant_caches():
            cache.forget_tenant(token)
        log.info("tenant %s deleted: forgotten by this process", token)

    def tenant_caches(self) -> list[ForgetsTenants]:
        """What this process caches per tenant besides the stores: the shared parts' caches and
        whatever a service runs that has a ``forget_tenant`` (tests/contract/
        test_tenant_lifecycle_contract.py checks that every part with one is forgotten)."""
        caches = self.parts.caches()
        caches += [part for part in self.runs if isinstance(part, ForgetsTenants)]
        return caches

    def _apply_retention(self, settings: TenantSettings) -> None:
        store = self.parts.event_store
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

    def _add_ready_checks(self) -> None:
        """Readiness: each dependency this process started answers a real read."""
        parts, health = self.parts, self.parts.health
        started = {id(part) for part in self._started}
        health.add_ready("bus", parts.bus.ping)
        probe_tenant = self.tenant_settings.tenants()[0] if self.tenant_settings.tenants() else "default"
        health.add_ready("registry", parts.registry.list_tenants)
        health.add_ready("invocations", lambda: parts.invocations.get(probe_tenant, "readiness-probe"))
        if id(parts.event_store) in started:
            probe_id = event_id(probe_tenant, "readiness-probe", "readiness-probe")
            health.add_ready("event_store", lambda: parts.event_store.get_event(probe_tenant, probe_id))
        if id(parts.users) in started:
            health.add_ready("users", lambda: parts.users.tenant_of(ADMIN_USER))

    def _add_live_checks(self, part: Part) -> None:
        """Liveness: each stage's task (and the REST server) of a part just started is still running."""
        health = self.parts.health
        if isinstance(part, ConnectorStage):
            health.add_live(part.name, part.is_running)
        for attr in ("stage", "delivery_stage", "response_stage"):
            inner = getattr(part, attr, None)
            if isinstance(inner, ConsumerStage):
                health.add_live(inner.name, _running_check(inner))
        if part is self._rest:
            health.add_live("rest", self._rest.running)

    async def _start_health_listener(self) -> None:
        health = self.parts.health
        server = HttpServer(
            "health", lambda: health_app(health), self.config.health.host, self.config.health.port or 0
        )
        await server.start()
        self._health_server = server
        self.health_port = server.port
        log.info("health: http://%s:%d/healthz and /readyz", self.config.health.host, self.health_port)

    async def drain(self) -> None:
        """Graceful shutdown, first half (SIGTERM): readiness goes false (HTTP and gRPC), ingest
        stops taking batches, acknowledges what it committed and ends its edge streams, within
        ``drain_timeout_s``. :meth:`stop` then stops the rest; the consumer stages finish the
        batch in hand before they commit and leave."""
        self.parts.health.drain()
        if self._grpc_health is not None:
            await self._grpc_health.drain()
        if self.ingest is not None:
            await self.ingest.drain(self.config.drain_timeout_s)

    async def stop(self) -> None:
        self._running = False
        self.parts.health.drain()
        if self._health_server is not None:
            await self._health_server.stop()
            self._health_server = None
        if self._tenant_tasks:
            await asyncio.gather(*self._tenant_tasks, return_exceptions=True)
        await self.parts.rule_book.drain()
        if self.live is not None:  # open SSE responses would keep the REST server waiting
            self.live.close_streams()
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
