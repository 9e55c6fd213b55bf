"""Re-export of :mod:`fieldgate.devservers.cassandra` (the servers moved into the fieldgate package)."""

from __future__ import annotations

from fieldgate.devservers.cassandra import (
    CassandraServer,
    cassandra_server,
    cassandra_yaml,
    logback_xml,
    start_cassandra,
)

__all__ = ["CassandraServer", "cassandra_server", "cassandra_yaml", "logback_xml", "start_cassandra"]
