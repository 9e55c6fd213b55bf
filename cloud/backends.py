"""Build the bus and the event store the configuration asks for.

The one choice between the one-machine default (embedded SQLite log, SQLite event files) and
the distributed mode (Apache Kafka, Apache Cassandra) lives here, so ``cloud/app.py`` only
orchestrates. The Kafka and Cassandra modules are imported only when chosen: the default
installation never loads their client libraries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fieldgate.cloud.bus import Bus
from fieldgate.cloud.config import CloudConfig
from fieldgate.cloud.store import EventStore


def build_bus(config: CloudConfig, *, client_id: str = "fieldgate") -> Bus:
    """The pipeline's bus. ``client_id`` names this process to Kafka (its logs and metrics)."""
    bus = config.bus
    if bus.kind == "kafka":
        from fieldgate.cloud.bus.kafka import KafkaBus

        return KafkaBus(
            bus.bootstrap,
            prefix=bus.topic_prefix,
            partitions=bus.partitions,
            replication=bus.replication,
            client_id=client_id,
            tenants=[t.token for t in config.tenants],
        )
    from fieldgate.cloud.bus.embedded import EmbeddedBus

    return EmbeddedBus(config.data_dir / "bus.db")


def build_event_store(
    config: CloudConfig,
    *,
    tenants: Iterable[str] = (),
    ttl_s_by_tenant: Mapping[str, int] | None = None,
) -> EventStore:
    """The event store. ``tenants`` get their Cassandra keyspace created at start (others on
    their first write); ``ttl_s_by_tenant`` is the per-tenant retention (Cassandra only)."""
    store = config.store
    if store.kind == "cassandra":
        from fieldgate.cloud.store.cassandra_events import CassandraEventStore

        return CassandraEventStore(
            list(store.hosts),
            store.port,
            replication=store.replication,
            ttl_s_by_tenant=ttl_s_by_tenant,
            tenants=tenants,
            keyspace_prefix=store.keyspace_prefix,
        )
    from fieldgate.cloud.store.sqlite_events import SqliteEventStore

    return SqliteEventStore(config.data_dir / "events")
