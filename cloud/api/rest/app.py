"""Assembles the REST API: one FastAPI application per cloud, built from injected stores.

:func:`create_api` holds no state of its own beyond what it is given; the routers are built by
factories that close over their dependencies, so two apps (two clouds in one test) never share
anything. OpenAPI is served at ``/openapi.json`` and interactive docs at ``/docs`` and ``/redoc``,
from the package (cloud/api/rest/api_docs.py: no CDN).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fastapi import Depends, FastAPI
from pydantic import BaseModel

from fieldgate import __version__
from fieldgate.cloud.api.rest.api_docs import api_docs_router
from fieldgate.cloud.api.rest.auth import AccessPolicy, auth_router
from fieldgate.cloud.api.rest.dashboard import DashboardFiles, dashboard_router, install_spa_fallback
from fieldgate.cloud.api.rest.errors import install_error_handlers, limit_bodies
from fieldgate.cloud.api.rest.routes.batch import batch_router
from fieldgate.cloud.api.rest.routes.commands import commands_router
from fieldgate.cloud.api.rest.routes.connectors import connectors_router
from fieldgate.cloud.api.rest.routes.customers import customers_router
from fieldgate.cloud.api.rest.routes.dashboard import dashboard_api_router
from fieldgate.cloud.api.rest.routes.events import events_router
from fieldgate.cloud.api.rest.routes.labels import labels_router
from fieldgate.cloud.api.rest.routes.registry import registry_router
from fieldgate.cloud.api.rest.routes.rules import rules_router
from fieldgate.cloud.api.rest.routes.site import site_router
from fieldgate.cloud.api.rest.routes.state import state_router
from fieldgate.cloud.api.rest.routes.tenants import tenants_router
from fieldgate.cloud.api.rest.routes.users import users_router
from fieldgate.cloud.config import AuthConfig
from fieldgate.cloud.health import CloudHealth, health_routes
from fieldgate.cloud.services.access import Permission, check_routes, public
from fieldgate.cloud.services.auth import LoginThrottle, TokenAuthority, UserSessions
from fieldgate.cloud.services.batch import BatchOperations
from fieldgate.cloud.services.commands import CommandService
from fieldgate.cloud.services.connectors import ConnectorAdmin
from fieldgate.cloud.services.customers import CustomerManagement
from fieldgate.cloud.services.fleet import FleetQueries
from fieldgate.cloud.services.live import LiveHub
from fieldgate.cloud.services.management import Management
from fieldgate.cloud.services.rules import RuleService
from fieldgate.cloud.services.tenants import TenantAdmin
from fieldgate.cloud.store.edges import EdgeDirectory
from fieldgate.cloud.store.events import EventStore
from fieldgate.cloud.store.invocations import InvocationStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.store.site import SiteStore
from fieldgate.cloud.store.state import DeviceStateStore
from fieldgate.cloud.store.users import Users

MAX_BODY_BYTES = 1024 * 1024


class Health(BaseModel):
    status: str


def create_api(
    *,
    registry: Registry,
    event_store: EventStore,
    invocations: InvocationStore,
    commands: CommandService,
    users: Users,
    auth: AuthConfig,
    secret: str,
    tenant: str = "default",
    health: CloudHealth | None = None,
    tenants: TenantAdmin | None = None,
    connectors: ConnectorAdmin | None = None,
    previous_secrets: Sequence[str] = (),
    throttle: LoginThrottle | None = None,
    state_store: DeviceStateStore | None = None,
    rules: RuleService | None = None,
    site: SiteStore | None = None,
    labels_base_url: str = "http://127.0.0.1:8080",
    batch: BatchOperations | None = None,
    live: LiveHub | None = None,
    edges: EdgeDirectory | None = None,
    static_dir: Path | None = None,
    live_keepalive_s: float = 15.0,
    sessions: UserSessions | None = None,
) -> FastAPI:
    """The REST API over the given stores.

    ``secret`` signs bearer tokens (lifetime ``auth.token_ttl_s``); tokens signed with one of
    ``previous_secrets`` are still accepted (key rotation). ``throttle`` counts failed logins
    (a new one per app by default). ``tenant`` is the tenant of
    users whose record names none. ``invocations`` is accepted for symmetry with the gRPC API;
    invocation reads go through ``commands``, which scopes them to the caller's tenant.
    ``health`` (the process's checks) serves ``/healthz`` and ``/readyz``; without it
    ``/healthz`` only says the server answers. ``connectors`` (the connector admin) adds
    ``/api/v1/connectors`` (tenant admins: definitions carry secrets and dead letters hold
    every customer's events). ``batch`` adds ``/api/v1/batch-operations`` and
    ``/api/v1/schedules`` (cloud/services/batch.py, scheduler.py). ``live`` (the process's live hub, started by its
    owner, who also closes its streams before stopping the server) serves ``/api/v1/live``;
    ``edges`` (the edge directory) feeds ``/api/v1/edges``; ``static_dir`` is the dashboard
    build to serve (default: the package's, cloud/api/rest/dashboard.py).
    ``sessions`` checks each token's user (cloud/services/auth.py; the process's own, so that its
    tenant deletions clear it; a new one over ``users`` by default).
    """
    del invocations  # read through ``commands``
    app = FastAPI(
        title="fieldgate",
        version=__version__,
        description="Device management, event queries and command invocation. "
        "Get a bearer token from POST /api/v1/auth/token (OAuth2 password form).",
        # Not FastAPI's /docs and /redoc: they load their scripts from a CDN (api_docs.py).
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(api_docs_router(app), dependencies=[Depends(public())])
    install_error_handlers(app)
    # Requests are small JSON documents; refuse bigger bodies (413) before buffering them.
    limit_bodies(app, MAX_BODY_BYTES)
    authority = TokenAuthority(secret, auth.token_ttl_s, previous_secrets)
    # Every request checks that the token's user still is what the token says (cloud/services/auth.py);
    # the routes' own user changes clear that check's cache at once.
    sessions = sessions if sessions is not None else UserSessions(users)
    users = sessions.tracking(users)
    policy = AccessPolicy(authority, registry, sessions)
    mgmt = Management(registry, event_store, site, states=state_store, rules=rules)

    fleet = FleetQueries(registry, mgmt, commands, states=state_store, site=site, edges=edges)
    logins = throttle if throttle is not None else LoginThrottle()
    app.include_router(auth_router(users, authority, logins, tenant))
    app.include_router(registry_router(mgmt, policy, search=fleet))
    app.include_router(events_router(mgmt, policy))
    app.include_router(commands_router(commands, mgmt, policy))
    app.include_router(
        customers_router(
            CustomerManagement(registry), policy.require(Permission.READ), policy.require(Permission.WRITE)
        )
    )
    if tenants is not None:  # tenant management (instance administrators)
        app.include_router(tenants_router(tenants, policy.require(Permission.INSTANCE_ADMIN)))
    app.include_router(users_router(users, registry, policy))
    if connectors is not None:
        app.include_router(connectors_router(connectors, policy.require(Permission.ADMIN)))
    if state_store is not None:  # device state and presence (cloud/pipeline/state.py)
        app.include_router(state_router(mgmt, policy))
    if rules is not None:  # rules -> alerts (docs/rules.md)
        app.include_router(rules_router(rules, policy, mgmt))
    if batch is not None:  # batch operations and schedules (cloud/services/batch.py, scheduler.py)
        app.include_router(batch_router(batch, policy))
    if site is not None:  # areas, zones, assets, device groups (docs/model.md)
        app.include_router(
            site_router(site, mgmt, policy.require(Permission.READ), policy.require(Permission.WRITE))
        )
    # QR labels of devices (and of assets and areas with the site store)
    app.include_router(labels_router(site, mgmt, policy.require(Permission.READ), labels_base_url))
    app.include_router(
        dashboard_api_router(mgmt, fleet, registry, policy, live, keepalive_s=live_keepalive_s)
    )
    dashboard_files = DashboardFiles(static_dir)
    app.include_router(dashboard_router(dashboard_files), dependencies=[Depends(public())])
    install_spa_fallback(app, dashboard_files)

    if health is not None:
        # Plain Starlette routes: probes, not part of the documented API.
        app.router.routes.extend(health_routes(health))
    else:

        @app.get("/healthz", tags=["health"], dependencies=[Depends(public())])
        async def healthz() -> Health:
            """Liveness: the REST server answers (no authentication)."""
            return Health(status="ok")

    check_routes(app)  # every route declares its access policy (cloud/services/access.py)
    return app
