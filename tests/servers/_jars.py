"""Re-export of :mod:`fieldgate.devservers._jars` (the servers moved into the fieldgate package)."""

from __future__ import annotations

from fieldgate.devservers._jars import (
    ALL_SERVERS,
    CASSANDRA,
    COMPLETE_MARKER,
    KAFKA,
    POMS,
    ZOOKEEPER,
    ServerJars,
    ServerUnavailable,
    fetch,
    jar_cache,
    java_executable,
)

__all__ = [
    "ALL_SERVERS",
    "CASSANDRA",
    "COMPLETE_MARKER",
    "KAFKA",
    "POMS",
    "ZOOKEEPER",
    "ServerJars",
    "ServerUnavailable",
    "fetch",
    "jar_cache",
    "java_executable",
]
