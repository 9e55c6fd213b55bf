"""The all-in-one cloud process: every stage in one event loop, wired through the bus.

Stages never call each other; they share only the bus, the stores and (for command delivery,
which must reach the edge streams that ingest hosts) the :class:`EdgeSessions` object. The
same classes run as separate processes in the distributed mode (a later issue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn

from fieldgate.cloud.api.app import create_api
from fieldgate.cloud.api.users import SqliteUsers
from fieldgate.cloud.bus.embedded import EmbeddedBus
from fieldgate.cloud.commands import CommandDelivery
from fieldgate.cloud.config import CloudConfig
from fieldgate.cloud.grpc_api import add_grpc_api
from fieldgate.cloud.inbound import InboundProcessing
from fieldgate.cloud.ingest import EdgeSessions, IngestService
from fieldgate.cloud.invocations import CommandService
from fieldgate.cloud.persistence import EventPersistence
from fieldgate.cloud.registration import Registration
from fieldgate.cloud.store.sqlite_events import SqliteEventStore
from fieldgate.cloud.store.sqlite_registry import SqliteInvocationStore, SqliteRegistry
from fieldgate.v1 import model_pb2 as model

log = logging.getLogger(__name__)

ADMIN_USER = "admin"


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the process owner decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def load_or_create_secret(data_dir: Path) -> str:
    """The token-signing secret, generated once and kept (mode 0600) in ``data_dir``."""
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(48)
    path.touch(mode=0o600)
    path.write_text(secret)
    return secret


class CloudApp:
    """Bus, stores, pipeline stages, gRPC (ingest + APIs) and REST in one process."""

    def __init__(self, config: CloudConfig) -> None:
        self.config = config
        data = config.data_dir
        self.bus = EmbeddedBus(data / "bus.db")
        self.registry = SqliteRegistry(data / "registry")
        self.invocations = SqliteInvocationStore(data / "registry")
        self.event_store = SqliteEventStore(data / "events")
        self.users = SqliteUsers(data / "users.db")
        self.sessions = EdgeSessions()
        self.commands = CommandService(
            self.registry, self.invocations, self.bus, config.default_command_ttl_s
        )
        self.stages: list[Any] = [
            Registration(self.bus, self.registry, config.tenants),
            InboundProcessing(self.bus, self.registry),
            EventPersistence(self.bus, self.event_store),
            CommandDelivery(self.bus, self.sessions, self.invocations, self.event_store),
        ]
        self.ingest = IngestService(
            self.bus, self.registry, self.sessions, config.grpc_host, config.grpc_port
        )
        self.ingest.add_servicers(
            lambda server: add_grpc_api(
                server,
                registry=self.registry,
                event_store=self.event_store,
                invocations=self.invocations,
                commands=self.commands,
            )
        )
        self._rest: _EmbeddedUvicorn | None = None
        self._rest_task: asyncio.Task[None] | None = None
        self._started: list[Any] = []
        self.rest_port = config.rest_port

    @property
    def grpc_port(self) -> int:
        return int(self.ingest.port)

    async def ensure_admin(self, password: str | None) -> str | None:
        """Create/refresh user ``admin``. Returns a generated password the first time none is given."""
        marker = self.config.data_dir / "admin.initialized"
        generated = None
        if password is None:
            if marker.exists():
                return None
            password = generated = secrets.token_urlsafe(12)
        await self.users.set_password(ADMIN_USER, password)
        marker.touch()
        return generated

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        secret = (
            self.config.auth.secret_key.get_secret_value()
            if self.config.auth.secret_key
            else load_or_create_secret(self.config.data_dir)
        )
        try:
            for part in (self.bus, self.registry, self.invocations, self.event_store, self.users):
                await part.start()
                self._started.append(part)
            for t in self.config.tenants:
                await self.registry.ensure_tenant(
                    model.Tenant(
                        token=t.token,
                        name=t.name or t.token,
                        auto_register=t.auto_register,
                        default_device_type=t.default_device_type,
                    )
                )
            for stage in self.stages:
                await stage.start()
                self._started.append(stage)
            await self.ingest.start()
            self._started.append(self.ingest)
            api = create_api(
                registry=self.registry,
                event_store=self.event_store,
                invocations=self.invocations,
                commands=self.commands,
                users=self.users,
                auth=self.config.auth,
                secret=secret,
            )
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
        except BaseException:
            await self.stop()
            raise
        log.info(
            "cloud up: gRPC 127.0.0.1:%d, REST http://%s:%d",
            self.grpc_port,
            self.config.rest_host,
            self.rest_port,
        )

    async def stop(self) -> None:
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
