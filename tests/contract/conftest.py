"""The store backends the contract tests run on: ``sqlite`` (files in tmp_path) and
``cassandra`` (the session's real Cassandra, marked ``distributed``; a fresh keyspace prefix
per test, so its instance keyspace and tenant keyspaces are its own)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from fieldgate.cloud.api.users import UserStore
from fieldgate.cloud.backends import build_invocation_store, build_registry, build_users
from fieldgate.cloud.config import CloudConfig, StoreConfig
from fieldgate.cloud.store import InvocationStore, Registry

STORES = ["sqlite", pytest.param("cassandra", marks=pytest.mark.distributed)]


@dataclass(frozen=True)
class Backend:
    """Builds stores on one backend; each call is a new instance (as another replica would be)
    on the same data."""

    kind: str
    config: CloudConfig

    def registry(self) -> Registry:
        return build_registry(self.config)

    def invocations(self) -> InvocationStore:
        return build_invocation_store(self.config)

    def users(self) -> UserStore:
        return build_users(self.config)


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


@pytest.fixture(params=STORES)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    kind: str = request.param
    return Backend(kind, backend_config(request, kind, tmp_path / "cloud"))
