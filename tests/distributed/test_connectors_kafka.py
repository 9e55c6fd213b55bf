"""Distributed: the connectors stage on the Kafka bus with the Cassandra connector store,
a Kafka connector producing to a real topic (read back with confluent-kafka), and a webhook
connector whose receiver is down meanwhile — the Kafka connector keeps delivering, the
webhook's events wait (uncommitted) and arrive once it is back; definitions and dead
letters live in the tenant's Cassandra keyspace."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer

from fieldgate.cloud.bus.kafka import KafkaBus
from fieldgate.cloud.connectors.models import ConnectorSpec
from fieldgate.cloud.connectors.stage import ConnectorStage
from fieldgate.cloud.connectors.store import CassandraConnectorStore
from fieldgate.cloud.store._cassandra import CassandraSession, instance_keyspace, keyspace_name
from fieldgate.cloud.store.cassandra_registry import CassandraRegistry
from fieldgate.devservers import CassandraServer, KafkaServer
from fieldgate.v1 import model_pb2 as model
from tests.helpers.connectors import FAST, LOOPBACK_TARGETS, SECRET, TENANT, make_event, publish, webhook
from tests.helpers.waiting import eventually, eventually_sync
from tests.helpers.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.distributed


def _read_topic(bootstrap: str, topic: str, want: int, timeout_s: float = 30.0) -> list[tuple[bytes, dict]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "t-" + uuid.uuid4().hex, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    out: list[tuple[bytes, dict]] = []

    def enough() -> bool:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            out.append((msg.key(), orjson.loads(msg.value())))
        return len(out) >= want

    try:
        eventually_sync(enough, timeout_s, f"{want} records on {topic}", interval=0)
    finally:
        consumer.close()
    return out


async def test_kafka_connector_delivers_while_the_webhook_is_down(
    tmp_path: Path, kafka: KafkaServer, cassandra: CassandraServer
) -> None:
    name = "c" + uuid.uuid4().hex[:9]
    out_topic = f"{name}-outbound"
    bus = KafkaBus(kafka.bootstrap, prefix=name, partitions=2, tenants=[TENANT])
    session = CassandraSession([cassandra.host], cassandra.port)
    registry = CassandraRegistry(session, keyspace_prefix=name)
    store = CassandraConnectorStore(session, keyspace_prefix=name)
    events = [make_event(i, device=f"dev-{i % 4}") for i in range(24)]
    async with webhook_receiver(secret=SECRET) as rx:
        rx.mode = "500"
        for part in (bus, registry, store):
            await part.start()
        stage = ConnectorStage(
            bus, store, registry, topic_prefix=name, settings=FAST, targets=LOOPBACK_TARGETS
        )
        try:
            await registry.ensure_tenant(model.Tenant(token=TENANT, name=TENANT))
            kafka_spec = ConnectorSpec.model_validate(
                {
                    "id": "lake",
                    "kind": "kafka",
                    "kafka": {"bootstrap": kafka.bootstrap, "topic": out_topic},
                    "filter": {"event_types": ["measurement"]},
                }
            )
            await store.create(TENANT, kafka_spec)
            await store.create(TENANT, webhook("hook", rx.url))
            with pytest.raises(Exception, match="exists"):
                await store.create(TENANT, kafka_spec)  # the LWT refuses a second one
            await stage.start()
            await publish(bus, events, prefix=name)
            got = await asyncio.to_thread(_read_topic, kafka.bootstrap, out_topic, 24)
            assert {doc["id"] for _k, doc in got} == {e.id for e in events}
            assert all(key == doc["device"].encode() for key, doc in got)
            assert rx.accepted == []  # the webhook is still down
            rx.mode = "ok"
            await eventually(
                lambda: set(rx.event_ids()) == {e.id for e in events}, what="webhook", timeout=60
            )
            assert rx.bad_signatures == 0
            # Dead letters and re-drive on Cassandra.
            hook = stage.runner(TENANT, "hook")
            assert hook is not None
            assert (await store.get(TENANT, "lake")) == kafka_spec
            rx.mode = "400"
            await publish(bus, [make_event(99)], prefix=name)
            letters = await eventually(
                lambda: store.list_dead_letters(TENANT, "hook", 10), what="dead letter", timeout=30
            )
            assert letters[0].event_id == make_event(99).id and "HTTP 400" in letters[0].reason
            rx.mode = "ok"
            assert await store.request_redrive(TENANT, "hook") == 1
            await eventually(lambda: make_event(99).id in rx.event_ids(), what="re-drive", timeout=30)
            await eventually(lambda: _zero(store), what="dead letter removed", timeout=10)
        finally:
            await stage.stop()
            # The session's Cassandra is shared by the whole run: drop what this test made.
            for ks in (keyspace_name(TENANT, name), instance_keyspace(name)):
                await session.execute(f"DROP KEYSPACE IF EXISTS {ks}")
            for part in (store, registry, bus):
                await part.stop()


async def _zero(store: CassandraConnectorStore) -> bool:
    return await store.count_dead_letters(TENANT, "hook") == 0
