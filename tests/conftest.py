"""Fixtures for tests that need the real distributed servers (Kafka, ZooKeeper, Cassandra).

Those tests (tests/distributed/, and the ``distributed`` backend of the end-to-end tests in
tests/e2e/) are marked ``distributed`` and are skipped unless ``FIELDGATE_DISTRIBUTED=1``.
scripts/test.sh (``make test``, CI) runs them in a second pytest run of their own with that
set, after the others, so the JVMs never share the machine with the timing-sensitive tests of
the first run. The ``kafka``, ``zookeeper`` and
``cassandra`` fixtures are session-scoped: one server of each kind is started on first use in a
temporary directory and stopped by PID at the end of the session, so tests must keep their data
apart (unique topic names, znode paths, keyspaces).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldgate.devservers import (
    CassandraServer,
    KafkaServer,
    ZooKeeperServer,
    cassandra_server,
    kafka_server,
    zookeeper_server,
)

ENABLE_VARIABLE = "FIELDGATE_DISTRIBUTED"


def distributed_enabled() -> bool:
    return os.environ.get(ENABLE_VARIABLE) == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "distributed: needs Kafka, ZooKeeper or Cassandra (run with FIELDGATE_DISTRIBUTED=1)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if distributed_enabled():
        return
    skip = pytest.mark.skip(reason=f"needs the real servers: set {ENABLE_VARIABLE}=1 to run")
    for item in items:
        if "distributed" in item.keywords:
            item.add_marker(skip)


def _workdir(factory: pytest.TempPathFactory, name: str) -> Path:
    return factory.mktemp(name, numbered=True)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """A single-node KRaft Kafka on 127.0.0.1 shared by the session (``.bootstrap``)."""
    with kafka_server(_workdir(tmp_path_factory, "kafka")) as server:
        yield server


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """A standalone ZooKeeper on 127.0.0.1 shared by the session (``.hosts``)."""
    with zookeeper_server(_workdir(tmp_path_factory, "zookeeper")) as server:
        yield server


@pytest.fixture(scope="session")
def cassandra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CassandraServer]:
    """A single-node Cassandra on 127.0.0.1 shared by the session (``.host``, ``.port``)."""
    with cassandra_server(_workdir(tmp_path_factory, "cassandra")) as server:
        yield server
