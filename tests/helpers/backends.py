"""The cloud's backends for parametrised end-to-end tests: embedded (SQLite log + SQLite events)
or distributed (Kafka + Cassandra + ZooKeeper, the session's real servers from tests/conftest.py).

Each distributed use gets names of its own (topic prefix, keyspace prefix, ZooKeeper instance),
so tests sharing the servers never see each other's data.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from fieldgate.cloud.config import BusConfig, StoreConfig, ZookeeperConfig

BACKENDS = ["embedded", pytest.param("distributed", marks=pytest.mark.distributed)]


@dataclass(frozen=True)
class Backends:
    bus: BusConfig | None = None
    store: StoreConfig | None = None
    zookeeper: ZookeeperConfig | None = None


def backends_for(request: pytest.FixtureRequest, kind: str) -> Backends:
    """``kind`` "embedded" → the defaults; "distributed" → the session's servers, fresh names."""
    if kind == "embedded":
        return Backends()
    kafka = request.getfixturevalue("kafka")
    cassandra = request.getfixturevalue("cassandra")
    zookeeper = request.getfixturevalue("zookeeper")
    name = "e" + uuid.uuid4().hex[:9]
    return Backends(
        bus=BusConfig(kind="kafka", bootstrap=kafka.bootstrap, topic_prefix=name, partitions=2),
        store=StoreConfig(
            kind="cassandra", hosts=(cassandra.host,), port=cassandra.port, keyspace_prefix=name
        ),
        zookeeper=ZookeeperConfig(hosts=zookeeper.hosts, instance=name),
    )
