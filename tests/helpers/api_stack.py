"""A real cloud API stack for tests: SQLite stores, the embedded bus and the REST app, in tmp_path.

Nothing is mocked: the stores, the bus and the FastAPI app are the production classes, and the
HTTP client talks to the app through ``httpx.ASGITransport`` (the same ASGI calls uvicorn makes).
Two tenants exist. Users (:data:`USERS`): ``admin`` (tenant admin of ``default``), ``bob``
(tenant admin of ``beta``), ``root`` (instance admin, tenant ``default``), and in ``default`` the
operator ``olga``, the viewer ``vera`` and ``cora``, a user of customer ``c1``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from fieldgate.cloud.api.rest.app import create_api
from fieldgate.cloud.bus.embedded import EmbeddedBus
from fieldgate.cloud.composition import TenantStores
from fieldgate.cloud.config import AuthConfig
from fieldgate.cloud.services.access import Role
from fieldgate.cloud.services.auth import LoginThrottle
from fieldgate.cloud.services.batch import BatchOperations
from fieldgate.cloud.services.commands import CommandService
from fieldgate.cloud.services.users import PasswordHasher
from fieldgate.cloud.store.sqlite.batch import SqliteBatchStore
from fieldgate.cloud.store.sqlite.connectors import SqliteConnectorStore
from fieldgate.cloud.store.sqlite.edges import SqliteEdgeDirectory
from fieldgate.cloud.store.sqlite.events import SqliteEventStore
from fieldgate.cloud.store.sqlite.invocations import SqliteInvocationStore
from fieldgate.cloud.store.sqlite.registry import SqliteRegistry
from fieldgate.cloud.store.sqlite.site import SqliteSiteStore
from fieldgate.cloud.store.sqlite.state import SqliteStateStore
from fieldgate.cloud.store.sqlite.users import SqliteUsers
from fieldgate.v1 import model_pb2 as model

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
USERS: dict[str, tuple[str, str, Role, str | None]] = {
    "admin": ("admin-pw", "default", Role.TENANT_ADMIN, None),
    "bob": ("bob-pw-12", "beta", Role.TENANT_ADMIN, None),
    "root": ("root-pw-12", "default", Role.INSTANCE_ADMIN, None),
    "olga": ("olga-pw-12", "default", Role.OPERATOR, None),
    "vera": ("vera-pw-12", "default", Role.VIEWER, None),
    "cora": ("cora-pw-12", "default", Role.CUSTOMER, "c1"),
}
TENANTS = ("default", "beta")

# A device type with one command of every parameter type.
THERMOSTAT: dict[str, Any] = {
    "token": "thermostat",
    "name": "Thermostat",
    "description": "test device type",
    "commands": [
        {"name": "ping", "description": "are you there", "params": []},
        {
            "name": "configure",
            "params": [
                {"name": "seconds", "type": "int", "required": True},
                {"name": "target", "type": "float", "required": False},
                {"name": "label", "type": "string", "required": False},
                {"name": "enabled", "type": "bool", "required": False},
            ],
        },
    ],
}


@dataclass
class ApiStack:
    registry: SqliteRegistry
    invocations: SqliteInvocationStore
    event_store: SqliteEventStore
    bus: EmbeddedBus
    commands: CommandService
    users: SqliteUsers
    app: FastAPI
    site: SqliteSiteStore
    batch_store: SqliteBatchStore
    states: SqliteStateStore
    connectors: SqliteConnectorStore
    edges: SqliteEdgeDirectory

    def tenant_stores(self) -> TenantStores:
        """Every tenant-owned store of the stack (for a TenantAdmin over it)."""
        return TenantStores(
            users=self.users,
            states=self.states,
            site=self.site,
            connectors=self.connectors,
            batch=self.batch_store,
            edges=self.edges,
            invocations=self.invocations,
            events=self.event_store,
        )

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://fieldgate.test"
        )


async def login(client: httpx.AsyncClient, user: str) -> dict[str, str]:
    """Bearer headers for ``user`` (one of :data:`USERS`)."""
    password = USERS[user][0]
    r = await client.post("/api/v1/auth/token", data={"username": user, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@asynccontextmanager
async def api_stack(
    tmp_path: Path,
    *,
    token_ttl_s: int = 3600,
    previous_secrets: tuple[str, ...] = (),
    secret: str = SECRET,
    throttle: LoginThrottle | None = None,
    static_dir: Path | None = None,
) -> AsyncIterator[ApiStack]:
    registry = SqliteRegistry(tmp_path / "registry")
    invocations = SqliteInvocationStore(tmp_path / "registry")
    event_store = SqliteEventStore(tmp_path / "events")
    bus = EmbeddedBus(tmp_path / "bus.db")
    users = SqliteUsers(tmp_path / "users.db", PasswordHasher())
    site = SqliteSiteStore(tmp_path / "site")
    batch_store = SqliteBatchStore(tmp_path / "batch")
    states = SqliteStateStore(tmp_path / "state")
    connectors = SqliteConnectorStore(tmp_path / "connectors")
    edges = SqliteEdgeDirectory(tmp_path / "edges.db")
    started: list[Any] = [batch_store]
    await batch_store.start()
    try:
        for part in (bus, registry, invocations, event_store, users, site, states, connectors, edges):
            await part.start()
            started.append(part)
        for tenant in TENANTS:
            await registry.ensure_tenant(
                model.Tenant(token=tenant, name=tenant, auto_register=True, default_device_type="default")
            )
        await asyncio.gather(
            *(
                users.set_password(name, password, tenant=tenant, role=role, customer=customer)
                for name, (password, tenant, role, customer) in USERS.items()
            )
        )
        commands = CommandService(registry, invocations, bus, default_ttl_s=3600)
        batch = BatchOperations(batch_store, registry, commands)  # routes only; no runner
        app = create_api(
            registry=registry,
            event_store=event_store,
            invocations=invocations,
            commands=commands,
            users=users,
            auth=AuthConfig(token_ttl_s=token_ttl_s),
            secret=secret,
            previous_secrets=previous_secrets,
            throttle=throttle,
            batch=batch,
            site=site,
            static_dir=static_dir,
        )
        yield ApiStack(
            registry,
            invocations,
            event_store,
            bus,
            commands,
            users,
            app,
            site,
            batch_store,
            states,
            connectors,
            edges,
        )
    finally:
        for part in reversed(started):
            await part.stop()
