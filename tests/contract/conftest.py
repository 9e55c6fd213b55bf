"""The store backends the contract tests run on: ``sqlite`` (files in tmp_path) and
``cassandra`` (the session's real Cassandra, marked ``distributed``; a fresh keyspace prefix
per test, so its instance keyspace and tenant keyspaces are its own)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fieldgate.cloud.config import CloudConfig, StoreConfig
from fieldgate.cloud.services.users import PasswordHasher
from fieldgate.cloud.store.backend import StorageBackend, storage_backend
from fieldgate.cloud.store.batch import BatchStore
from fieldgate.cloud.store.cassandra.session import CassandraSession
from fieldgate.cloud.store.connectors import ConnectorStore
from fieldgate.cloud.store.edges import EdgeDirectory
from fieldgate.cloud.store.events import EventStore
from fieldgate.cloud.store.invocations import InvocationStore
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.store.site import SiteStore
from fieldgate.cloud.store.state import DeviceStateStore
from fieldgate.cloud.store.users import UserStore

STORES = ["sqlite", pytest.param("cassandra", marks=pytest.mark.distributed)]


@dataclass(frozen=True)
class Backend:
    """Builds stores on one backend; each call is a new instance on the same data, with a
    provider (on Cassandra: a connection) of its own, as another replica's would be."""

    kind: str
    config: CloudConfig

    def storage(self) -> StorageBackend:
        return storage_backend(self.config)

    def registry(self) -> Registry:
        return self.storage().registry()

    def invocations(self) -> InvocationStore:
        return self.storage().invocations()

    def users(self) -> UserStore:
        return self.storage().users(PasswordHasher())

    def events(self) -> EventStore:
        return self.storage().events()

    def state(self) -> DeviceStateStore:
        return self.storage().state()

    def site(self) -> SiteStore:
        return self.storage().site()

    def edges(self) -> EdgeDirectory:
        return self.storage().edges()

    def batch(self) -> BatchStore:
        return self.storage().batch()

    def connectors(self) -> ConnectorStore:
        return self.storage().connectors()


def backend_config(request: pytest.FixtureRequest, kind: str, data_dir: Path) -> CloudConfig:
    if kind == "sqlite":
        return CloudConfig(data_dir=data_dir)
    cassandra = request.getfixturevalue("cassandra")
    prefix = "c" + uuid.uuid4().hex[:9]
    return CloudConfig(
        data_dir=data_dir,
        store=StoreConfig(
            kind="cassandra", hosts=(cassandra.host,), port=cassandra.port, keyspace_prefix=prefix
        ),
    )


async def drop_keyspaces(cassandra: Any, prefix: str) -> None:
    """Drop every keyspace of ``prefix`` (its instance keyspace and its tenants'). The session's
    one Cassandra has a small heap and every table costs some of it: tests that make keyspaces
    of their own drop them, or a long distributed run ends in an OutOfMemoryError."""
    session = CassandraSession(cassandra.host, cassandra.port)
    await session.start()
    try:
        rows = await session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
        for (name,) in rows:
            if str(name).startswith(prefix + "_"):
                await session.execute(f"DROP KEYSPACE IF EXISTS {name}")
    finally:
        await session.stop()


@pytest.fixture(params=STORES)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    kind: str = request.param
    config = backend_config(request, kind, tmp_path / "cloud")
    yield Backend(kind, config)
    if kind == "cassandra":
        await drop_keyspaces(request.getfixturevalue("cassandra"), config.store.keyspace_prefix)
