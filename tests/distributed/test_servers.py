"""The real servers behind the distributed tests work as a client expects.

Each test talks to the session's server through the same client library fieldgate uses
(confluent-kafka, kazoo, cassandra-driver), so a failure here means the server setup is broken,
not the code under test elsewhere.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import Cluster
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from kazoo.client import KazooClient

from fieldgate.devservers import CassandraServer, KafkaServer, ZooKeeperServer
from tests.helpers.waiting import eventually_sync

pytestmark = pytest.mark.distributed


def test_kafka_delivers_a_produced_message_to_a_consumer_group(kafka: KafkaServer) -> None:
    topic = f"servers-smoke-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)

    producer = Producer({"bootstrap.servers": kafka.bootstrap, "acks": "all"})
    producer.produce(topic, key=b"device-1", value=b"hello")
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": f"smoke-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])

        def consumed() -> Any:
            message = consumer.poll(1.0)
            return message if message is not None and message.error() is None else None

        received = eventually_sync(consumed, 60, "the message consumed", interval=0)
        assert (received.key(), received.value()) == (b"device-1", b"hello")
        consumer.commit(message=received, asynchronous=False)
    finally:
        consumer.close()
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3


def test_zookeeper_stores_and_returns_a_znode(zookeeper: ZooKeeperServer) -> None:
    client = KazooClient(hosts=zookeeper.hosts)
    client.start(timeout=30)
    try:
        path = f"/fieldgate-smoke/{uuid.uuid4().hex[:8]}/config"
        client.create(path, b'{"retention_days": 7}', makepath=True)
        data, stat = client.get(path)
        assert data == b'{"retention_days": 7}'
        client.set(path, b"{}")
        assert client.get(path)[0] == b"{}"
        assert client.get(path)[1].version == stat.version + 1
    finally:
        client.stop()
        client.close()


def test_cassandra_creates_a_table_and_returns_inserted_rows(cassandra: CassandraServer) -> None:
    keyspace = f"smoke_{uuid.uuid4().hex[:8]}"
    cluster = Cluster([cassandra.host], port=cassandra.port, protocol_version=5)
    try:
        session = cluster.connect()
        assert session.execute("SELECT release_version FROM system.local").one() is not None
        session.execute(
            f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        )
        session.execute(
            f"CREATE TABLE {keyspace}.events (device text, ts bigint, value double, PRIMARY KEY (device, ts))"
        )
        insert = session.prepare(f"INSERT INTO {keyspace}.events (device, ts, value) VALUES (?, ?, ?)")
        for ts, value in ((1000, 21.5), (2000, 22.0)):
            session.execute(insert, ("device-1", ts, value))
        rows = session.execute(
            f"SELECT ts, value FROM {keyspace}.events WHERE device = %s ORDER BY ts DESC", ("device-1",)
        )
        assert [(row.ts, row.value) for row in rows] == [(2000, 22.0), (1000, 21.5)]
        session.execute(f"DROP KEYSPACE {keyspace}")
    finally:
        cluster.shutdown()


def test_a_relative_workdir_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fieldgate up --distributed` uses `.fieldgate/servers` by default: a relative path must
    not reach the JVM (it runs in its own directory and would look for it there)."""
    from fieldgate.devservers import start_zookeeper

    monkeypatch.chdir(tmp_path)
    server = start_zookeeper(Path("relative") / "servers")
    try:
        assert server.workdir.is_absolute() and server.workdir.is_relative_to(tmp_path)
        zk = KazooClient(hosts=server.hosts)
        zk.start(timeout=20)
        try:
            zk.create(f"/rel-{uuid.uuid4().hex}", b"ok")
        finally:
            zk.stop()
            zk.close()
    finally:
        server.stop()
