"""Real Apache Kafka, ZooKeeper and Cassandra servers for tests and for one machine.

The jars come from Maven Central through ``mvn`` (see ``_jars.py`` and ``poms/``) and are cached
under ``~/.cache/fieldgate/jars`` (``FIELDGATE_JAR_CACHE``). Each server runs as its own JVM on
127.0.0.1 with a small heap, in a directory of its own under the given workdir, and is stopped by
PID when the ``with`` block ends::

    from fieldgate.devservers import kafka_server

    with kafka_server(tmp_path) as kafka:
        producer = Producer({"bootstrap.servers": kafka.bootstrap})

``start_kafka`` / ``start_zookeeper`` / ``start_cassandra`` return the same handles without the
``with`` (the caller calls ``stop()``; ``.pid`` is the JVM's pid, e.g. for a kill -9 test).
``python -m fieldgate.devservers fetch`` fills the cache (CI runs it before the tests);
``python -m fieldgate.devservers run kafka|zookeeper|cassandra`` runs one server until Ctrl-C.
See docs/operations/servers.md.
"""

from __future__ import annotations

from fieldgate.devservers._jars import ALL_SERVERS, ServerJars, ServerUnavailable, fetch, jar_cache
from fieldgate.devservers.cassandra import CassandraServer, cassandra_server, start_cassandra
from fieldgate.devservers.kafka import KafkaServer, kafka_server, start_kafka
from fieldgate.devservers.zookeeper import ZooKeeperServer, start_zookeeper, zookeeper_server

__all__ = [
    "ALL_SERVERS",
    "CassandraServer",
    "KafkaServer",
    "ServerJars",
    "ServerUnavailable",
    "ZooKeeperServer",
    "cassandra_server",
    "fetch",
    "jar_cache",
    "kafka_server",
    "start_cassandra",
    "start_kafka",
    "start_zookeeper",
    "zookeeper_server",
]
