"""Distributed: the connectors stage on the Kafka bus with the Cassandra connector store,
a Kafka connector producing to a real topic (read back with confluent-kafka), and a webhook
connector whose receiver is down meanwhile — the Kafka connector keeps delivering, the
webhook's events wait (uncommitted) and arrive once it is back; definitions and dead
letters live in the tenant's Cassandra keyspace. And on the same backends: a connector the
stage notices late gets everything stored after its creation, and a dead webhook does not
make a healthy connector re-send across a restart."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer

from fieldgate.cloud.bus import PERSISTED, topic_name
from fieldgate.cloud.bus.kafka import KafkaBus
from fieldgate.cloud.domain.connectors.models import ConnectorSpec
from fieldgate.cloud.pipeline.connectors.stage import ConnectorStage, ConnectorStageSettings
from fieldgate.cloud.services.connectors import ConnectorAdmin
from fieldgate.cloud.store.cassandra.connectors import CassandraConnectorStore
from fieldgate.cloud.store.cassandra.registry import CassandraRegistry
from fieldgate.cloud.store.cassandra.session import CassandraSession, instance_keyspace, keyspace_name
from fieldgate.devservers import CassandraServer, KafkaServer
from fieldgate.v1 import model_pb2 as model
from tests.helpers.connectors import FAST, LOOPBACK_TARGETS, SECRET, TENANT, make_event, publish, webhook
from tests.helpers.waiting import eventually, eventually_sync
from tests.helpers.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.distributed


def _read_topic(
    bootstrap: str, topic: str, want: int, timeout_s: float = 30.0
) -> list[tuple[bytes, dict[str, Any]]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "t-" + uuid.uuid4().hex, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    out: list[tuple[bytes, dict[str, Any]]] = []

    def enough() -> bool:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            out.append((msg.key() or b"", orjson.loads(msg.value() or b"")))
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


async def test_late_connectors_and_a_dead_webhook_on_kafka_and_cassandra(
    tmp_path: Path, kafka: KafkaServer, cassandra: CassandraServer
) -> None:
    name = "p" + uuid.uuid4().hex[:9]
    bus = KafkaBus(kafka.bootstrap, prefix=name, partitions=2, tenants=[TENANT])
    session = CassandraSession([cassandra.host], cassandra.port)
    registry = CassandraRegistry(session, keyspace_prefix=name)
    store = CassandraConnectorStore(session, keyspace_prefix=name)
    a = [make_event(i, device=f"dev-{i % 4}") for i in range(8)]
    b = [make_event(i, device=f"dev-{i % 4}") for i in range(8, 16)]
    c = [make_event(i, device=f"dev-{i % 4}") for i in range(16, 24)]
    topic = topic_name(TENANT, PERSISTED, name)
    slow = ConnectorStageSettings(refresh_s=3600, poll_timeout_s=0.1)  # refresh() when told
    async with (
        webhook_receiver(secret=SECRET) as ok,
        webhook_receiver(secret=SECRET) as dead,
        webhook_receiver(secret=SECRET) as late,
    ):
        dead.mode = "500"
        for part in (bus, registry, store):
            await part.start()
        stage = ConnectorStage(
            bus, store, registry, topic_prefix=name, settings=slow, targets=LOOPBACK_TARGETS
        )
        try:
            await registry.ensure_tenant(model.Tenant(token=TENANT, name=TENANT))
            admin = ConnectorAdmin(store, bus, LOOPBACK_TARGETS, topic_prefix=name)
            await admin.create(TENANT, webhook("healthy", ok.url))
            await admin.create(TENANT, webhook("dead", dead.url, max_attempts=100))
            await stage.start()
            await publish(bus, a, prefix=name)
            await eventually(lambda: len(ok.event_ids()) == 8, what="healthy delivery", timeout=60)

            # Created while events flow; the stage reads on without it until told to refresh.
            await admin.create(TENANT, webhook("late", late.url))
            await publish(bus, b, prefix=name)
            await eventually(lambda: len(ok.event_ids()) == 16, what="healthy delivery", timeout=60)
            assert stage.runner(TENANT, "late") is None
            await stage.refresh()
            await eventually(lambda: len(late.event_ids()) == 8, what="late delivery", timeout=60)
            assert set(late.event_ids()) == {e.id for e in b}  # all of b, nothing of a
            assert ok.duplicates == 0

            # A restart while the dead one holds the watermark back: nobody healthy re-sends.
            assert sum((await bus.committed("connectors", topic)).values()) < 24
            await stage.stop()
            await stage.start()
            await publish(bus, c, prefix=name)
            await eventually(lambda: len(set(ok.event_ids())) == 24, what="healthy delivery", timeout=60)
            await eventually(lambda: len(set(late.event_ids())) == 16, what="late delivery", timeout=60)
            assert ok.duplicates == 0 and late.duplicates == 0
            assert set(late.event_ids()) == {e.id for e in b + c}
            positions = await store.positions(TENANT)
            assert set(positions) >= {"healthy", "dead", "late"}
            dead.mode = "ok"
            await eventually(
                lambda: set(dead.event_ids()) == {e.id for e in a + b + c},
                what="dead recovers",
                timeout=60,
            )
        finally:
            await stage.stop()
            for ks in (keyspace_name(TENANT, name), instance_keyspace(name)):
                await session.execute(f"DROP KEYSPACE IF EXISTS {ks}")
            for part in (store, registry, bus):
                await part.stop()


async def _zero(store: CassandraConnectorStore) -> bool:
    return await store.count_dead_letters(TENANT, "hook") == 0
