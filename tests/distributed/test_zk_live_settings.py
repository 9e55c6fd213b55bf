"""Tenant settings from a real ZooKeeper applied live in a RUNNING CloudApp, per tenant.

Two tenants, A and B. Tenant A's znode changes while the cloud runs; the effect is checked
where a user would notice it — events in the store, in A's ``[failed-decode]`` topic, the TTL
of the rows Cassandra wrote — and tenant B, whose znode does not change, must be unaffected.
An invalid znode is rejected with a logged reason and the previous settings stay in force.
The instance znode is read at start (written from the file if absent) and a later change is
reported as "restart needed", not applied.

Most tests use the embedded bus and the SQLite event store with a real ZooKeeper (the effect of
decoders/persist_events is in the pipeline, not in Kafka); retention needs Cassandra, and the
last test runs the whole path on Kafka + Cassandra. Names are unique per test (the servers
are shared by the session).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from kazoo.client import KazooClient
from paho.mqtt.enums import CallbackAPIVersion

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.bus import DECODED, FAILED_DECODE, topic_name
from fieldgate.cloud.config import BusConfig, CloudConfig, StoreConfig, TenantConfig, ZookeeperConfig
from fieldgate.cloud.pipeline.ingest.service import IngestService
from fieldgate.cloud.pipeline.persistence import EventPersistence
from fieldgate.cloud.pipeline.stage import messages_by_device
from fieldgate.cloud.store.cassandra.events import keyspace_name
from fieldgate.cloud.store.events import EventQuery
from fieldgate.cloud.zk.models import InstanceSettings, PipelineSettings, TenantSettings
from fieldgate.cloud.zk.source import ZkConfigSource
from fieldgate.devservers import CassandraServer, KafkaServer, ZooKeeperServer
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.protocol.topics import FORMAT_METADATA_KEY
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model
from tests.helpers.waiting import eventually, free_port

pytestmark = [pytest.mark.distributed, pytest.mark.integration]

WAIT_S = 30.0
# Kafka consumers find a new tenant's topics on their metadata refresh; Cassandra creates a
# keyspace on a tenant's first write.
ARRIVAL_S = 90.0


def publish(port: int, topic: str, payload: bytes) -> None:
    """One QoS 1 publish, returned once the broker acknowledged it."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"zk-live-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"broker never acknowledged the publish on {topic}"
    finally:
        client.loop_stop()
        client.disconnect()


def json_event(value: float, ident: str) -> bytes:
    return f'{{"type": "measurement", "values": {{"v": {value}}}, "id": "{ident}"}}'.encode()


def pb_event(value: float, ident: str) -> bytes:
    ev = pb.Event(alternate_id=ident, event_time_ms=now_ms(), measurement=pb.Measurement(values={"v": value}))
    return pb.EventBatch(events=[ev]).SerializeToString()


@dataclass
class Stack:
    app: CloudApp
    edge: EdgeAgent
    mqtt_port: int
    a: str
    b: str
    zk: ZkConfigSource  # the operator's writer (a separate session)

    def send_json(self, tenant: str, device: str, value: float) -> None:
        topic = f"fieldgate/{tenant}/devices/{device}/events"
        publish(self.mqtt_port, topic, json_event(value, f"{device}-{value}"))

    def send_pb(self, tenant: str, device: str, value: float) -> None:
        topic = f"fieldgate/{tenant}/devices/{device}/events/pb"
        publish(self.mqtt_port, topic, pb_event(value, f"{device}-pb-{value}"))

    async def values(self, tenant: str, device: str) -> set[float]:
        page = await self.app.parts.event_store.list_device_events(
            EventQuery(tenant=tenant, device=device, page_size=1000)
        )
        return {v for ev in page.items for v in ev.measurement.values.values()}

    async def has(self, tenant: str, device: str, value: float) -> bool:
        return value in await self.values(tenant, device)

    async def set_tenant(self, token: str, **kw: Any) -> TenantSettings:
        settings = TenantSettings(token=token, name=f"Tenant {token}", **kw)
        await self.zk.publish_tenant(token, settings)

        async def applied() -> bool:
            return self.app.tenant_settings.get(token) == settings

        await eventually(applied, timeout=WAIT_S, what=f"tenant {token}'s new settings applied")
        return settings

    def ingest(self) -> IngestService:
        assert self.app.ingest is not None
        return self.app.ingest

    def persistence(self) -> EventPersistence:
        return next(s for s in self.app.runs if isinstance(s, EventPersistence))


async def failed_decodes(app: CloudApp, tenant: str, group: str) -> list[pb.FailedDecode]:
    """Everything in ``tenant``'s [failed-decode] topic so far (a fresh consumer group)."""
    out: list[pb.FailedDecode] = []
    want = topic_name(tenant, FAILED_DECODE, app.config.bus.topic_prefix)
    async with app.parts.bus.consumer(group, FAILED_DECODE) as consumer:
        for _ in range(6):
            records = await consumer.poll(500, 0.5)
            out.extend(pb.FailedDecode.FromString(r.value) for r in records if r.topic == want)
            if records:
                await consumer.commit(records)
    return out


@pytest.fixture
async def stack(tmp_path: Path, zookeeper: ZooKeeperServer) -> AsyncIterator[Stack]:
    run = uuid.uuid4().hex[:8]
    a, b = f"za{run}", f"zb{run}"
    zk_conf = ZookeeperConfig(hosts=zookeeper.hosts, instance=f"live{run}")
    config = CloudConfig(
        data_dir=tmp_path / "cloud",
        grpc_port=0,
        rest_port=0,
        tenants=(TenantConfig(token=a), TenantConfig(token=b)),
        zookeeper=zk_conf,
    )
    async with ZkConfigSource(zk_conf.hosts, zk_conf.instance) as zk:
        for t in (a, b):  # in ZooKeeper before start: loaded at start, then watched
            await zk.publish_tenant(t, TenantSettings(token=t, name=f"Tenant {t}"))
        async with CloudApp(config) as app:
            mqtt_port = free_port()
            edge = EdgeAgent(
                EdgeConfig(
                    edge_id=f"edge-{run}",
                    data_dir=tmp_path / "edge",
                    tenants=(a, b),
                    mqtt=MqttConfig(mode="embedded", port=mqtt_port),
                    uplink=UplinkConfig(target=f"127.0.0.1:{app.grpc_port}"),
                )
            )
            async with edge:
                yield Stack(app, edge, mqtt_port, a, b, zk)


async def test_decoders_change_live_for_one_tenant(stack: Stack) -> None:
    a, b = stack.a, stack.b
    for t in (a, b):
        await asyncio.to_thread(stack.send_json, t, "d1", 1.0)
    for t in (a, b):
        await eventually(lambda t=t: stack.has(t, "d1", 1.0), timeout=WAIT_S, what=f"{t}: JSON before")
    page = await stack.app.parts.event_store.list_device_events(EventQuery(tenant=a, device="d1"))
    (measured,) = [ev for ev in page.items if ev.WhichOneof("payload") == "measurement"]
    assert measured.metadata[FORMAT_METADATA_KEY] == "json"  # the edge says how it decoded

    await stack.set_tenant(a, decoders=("protobuf",))

    await asyncio.to_thread(stack.send_json, a, "d1", 2.0)  # A: JSON no longer allowed
    await asyncio.to_thread(stack.send_pb, a, "d1", 3.0)  # A: protobuf still is
    await asyncio.to_thread(stack.send_json, b, "d1", 2.0)  # B: untouched
    await eventually(lambda: stack.has(a, "d1", 3.0), timeout=WAIT_S, what="A's protobuf event stored")
    await eventually(lambda: stack.has(b, "d1", 2.0), timeout=WAIT_S, what="B's JSON event stored")
    assert await stack.values(a, "d1") == {1.0, 3.0}

    # A's JSON event is in A's [failed-decode] topic with the reason and the event itself.
    fails = await eventually(
        lambda: failed_decodes(stack.app, a, f"fd-{uuid.uuid4().hex[:6]}"),
        timeout=WAIT_S,
        what="A's dead letter",
    )
    assert len(fails) == 1 and "'json' is not among" in fails[0].reason and "protobuf" in fails[0].reason
    dead = pb.Event.FromString(fails[0].payload)
    assert dead.device == "d1" and dict(dead.measurement.values) == {"v": 2.0}
    assert stack.ingest().stats.rejected_format == 1
    assert await failed_decodes(stack.app, b, f"fd-{uuid.uuid4().hex[:6]}") == []

    # Allowing JSON again applies to the next event.
    await stack.set_tenant(a, decoders=("json", "protobuf"))
    await asyncio.to_thread(stack.send_json, a, "d1", 4.0)
    await eventually(lambda: stack.has(a, "d1", 4.0), timeout=WAIT_S, what="A's JSON accepted again")
    assert stack.ingest().stats.rejected_format == 1


async def test_persist_events_off_live_for_one_tenant(stack: Stack) -> None:
    a, b = stack.a, stack.b
    persistence = stack.persistence()
    for t in (a, b):
        await asyncio.to_thread(stack.send_json, t, "d1", 1.0)
    for t in (a, b):
        await eventually(lambda t=t: stack.has(t, "d1", 1.0), timeout=WAIT_S, what=f"{t}: stored before")

    await stack.set_tenant(a, pipeline=PipelineSettings(persist_events=False))
    await asyncio.to_thread(stack.send_json, a, "d1", 2.0)
    await asyncio.to_thread(stack.send_json, b, "d1", 2.0)

    async def skipped() -> bool:
        return persistence.stats.not_persisted >= 1

    await eventually(skipped, timeout=WAIT_S, what="A's event reached the event store stage and was skipped")
    await eventually(lambda: stack.has(b, "d1", 2.0), timeout=WAIT_S, what="B still stored")
    assert await stack.values(a, "d1") == {1.0}
    # A's measurement, and any link changes of A's device (connected/disconnected) that came
    # with it: none of A's events is stored while persist_events is off.
    assert persistence.stats.not_persisted >= 1

    # Back on, with a small batch cap: A's next events are stored again, in chunks.
    await stack.set_tenant(a, pipeline=PipelineSettings(persist_events=True, max_batch_events=1))
    await asyncio.to_thread(stack.send_json, a, "d1", 3.0)
    await eventually(lambda: stack.has(a, "d1", 3.0), timeout=WAIT_S, what="A stored again")
    assert await stack.values(a, "d1") == {1.0, 3.0}  # the skipped event stays skipped


async def test_invalid_znode_keeps_the_running_settings(
    stack: Stack, zookeeper: ZooKeeperServer, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = stack.a, stack.b
    good = await stack.set_tenant(a, decoders=("protobuf",), auto_register=False)
    b_before = stack.app.tenant_settings.get(b)
    zk = stack.app.zk
    assert zk is not None
    path = zk.tenant_path(a)
    operator = KazooClient(hosts=zookeeper.hosts, timeout=10.0)
    operator.start(10.0)
    try:
        with caplog.at_level(logging.ERROR, logger="fieldgate.cloud.zk.source"):
            operator.set(path, b'{"decoders": ["xml"]}')

            async def rejected() -> bool:
                return bool(zk.stats.rejected >= 1)

            await eventually(rejected, timeout=WAIT_S, what="the invalid version is rejected")
            operator.set(path, b"{not json")
            await eventually(lambda: zk.stats.rejected >= 2, timeout=WAIT_S, what="bad JSON rejected")
    finally:
        operator.stop()
        operator.close()
    assert stack.app.tenant_settings.get(a) == good
    assert stack.app.tenant_settings.get(b) == b_before
    text = " ".join(r.getMessage() for r in caplog.records)
    assert f"tenant {a} rejected" in text and "decoders" in text and "not valid JSON" in text

    # The previous settings are really in force: JSON is still refused for A, B unaffected.
    await asyncio.to_thread(stack.send_json, b, "d9", 1.0)
    await asyncio.to_thread(stack.send_json, a, "d9", 1.0)
    await eventually(lambda: stack.has(b, "d9", 1.0), timeout=WAIT_S, what="B's event stored")

    async def refused() -> bool:
        return stack.ingest().stats.rejected_format >= 1

    await eventually(refused, timeout=WAIT_S, what="A's JSON refused under the kept settings")
    assert await stack.values(a, "d9") == set()


# ---------------------------------------------------------------- instance znode


def _config(tmp_path: Path, zk_conf: ZookeeperConfig, **kw: Any) -> CloudConfig:
    return CloudConfig(data_dir=tmp_path / "cloud", grpc_port=0, rest_port=0, zookeeper=zk_conf, **kw)


async def test_instance_znode_written_when_absent_and_applied_when_present(
    tmp_path: Path, zookeeper: ZooKeeperServer, caplog: pytest.LogCaptureFixture
) -> None:
    run = uuid.uuid4().hex[:8]
    zk_conf = ZookeeperConfig(hosts=zookeeper.hosts, instance=f"inst{run}")
    config = _config(tmp_path, zk_conf, default_command_ttl_s=123)
    async with CloudApp(config) as app:
        assert app.config == config  # absent: the file's settings are used ...
    async with ZkConfigSource(zk_conf.hosts, zk_conf.instance) as zk:
        await zk.load()
        assert zk.instance_exists  # ... and written for the other services
        assert zk.current().instance == InstanceSettings.from_cloud_config(config)
        # The operator changes the instance: the next start uses it over the file.
        await zk.publish_instance(
            InstanceSettings(bus=BusConfig(topic_prefix=f"p{run}"), default_command_ttl_s=77)
        )
    async with CloudApp(config) as app:
        assert app.config.bus.topic_prefix == f"p{run}" and app.config.default_command_ttl_s == 77
        assert app.file_config == config
        assert app.config.data_dir == config.data_dir  # addresses/paths stay the file's

        # A change while running: logged as "restart needed", not applied.
        with caplog.at_level(logging.WARNING, logger="fieldgate.cloud.app"):
            async with ZkConfigSource(zk_conf.hosts, zk_conf.instance) as zk:
                await zk.publish_instance(
                    InstanceSettings(bus=BusConfig(topic_prefix=f"q{run}"), default_command_ttl_s=77)
                )

            async def noticed() -> list[str]:
                return app.restart_needed

            assert await eventually(noticed, timeout=WAIT_S, what="the change noticed") == [
                "bus.topic_prefix"
            ]
        assert app.config.bus.topic_prefix == f"p{run}"
        assert any(
            "restart" in r.getMessage() and "bus.topic_prefix" in r.getMessage() for r in caplog.records
        )


async def test_invalid_instance_znode_at_start_uses_the_file(
    tmp_path: Path, zookeeper: ZooKeeperServer, caplog: pytest.LogCaptureFixture
) -> None:
    run = uuid.uuid4().hex[:8]
    zk_conf = ZookeeperConfig(hosts=zookeeper.hosts, instance=f"bad{run}")
    config = _config(tmp_path, zk_conf, tenants=(TenantConfig(token=f"t{run}"),))
    operator = KazooClient(hosts=zookeeper.hosts, timeout=10.0)
    operator.start(10.0)
    try:
        operator.create(f"/fieldgate/bad{run}/instance", b'{"bus": {"kind": "rabbit"}}', makepath=True)
        operator.create(f"/fieldgate/bad{run}/tenants/t{run}", b'{"retention_days": 30}', makepath=True)
        with caplog.at_level(logging.WARNING):
            async with CloudApp(config) as app:
                assert app.config == config
                # SQLite has no TTL: said once, events are kept.
                settings = app.tenant_settings.get(f"t{run}")
                assert settings is not None and settings.retention_days == 30
        # Unchanged: a bad znode is never overwritten by a service.
        assert operator.get(f"/fieldgate/bad{run}/instance")[0] == b'{"bus": {"kind": "rabbit"}}'
    finally:
        operator.stop()
        operator.close()
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "instance settings rejected" in text and "bus.kind" in text
    assert "runs with its file configuration" in text
    assert "retention_days=30 is not supported by the sqlite event store" in text


# ---------------------------------------------------------------- Kafka + Cassandra


async def _ttls(app: CloudApp, tenant: str, cassandra: CassandraServer) -> list[int | None]:
    """TTL (seconds left) of each row of ``tenant``'s events_by_key table."""
    from cassandra.cluster import Cluster

    def query() -> list[int | None]:
        cluster = Cluster(contact_points=[cassandra.host], port=cassandra.port)
        try:
            session = cluster.connect()
            ks = keyspace_name(tenant, app.config.store.keyspace_prefix)
            return [row[0] for row in session.execute(f"SELECT TTL(data) FROM {ks}.events_by_key")]
        finally:
            cluster.shutdown()

    return await asyncio.to_thread(query)


async def test_retention_changes_live_on_kafka_and_cassandra(
    tmp_path: Path, kafka: KafkaServer, zookeeper: ZooKeeperServer, cassandra: CassandraServer
) -> None:
    run = uuid.uuid4().hex[:8]
    a, b = f"ra{run}", f"rb{run}"
    prefix = f"zl{run}"
    zk_conf = ZookeeperConfig(hosts=zookeeper.hosts, instance=f"ret{run}")
    config = CloudConfig(
        data_dir=tmp_path / "cloud",
        grpc_port=0,
        rest_port=0,
        tenants=(TenantConfig(token=a), TenantConfig(token=b)),
        bus=BusConfig(kind="kafka", bootstrap=kafka.bootstrap, topic_prefix=prefix, partitions=1),
        store=StoreConfig(kind="cassandra", hosts=(cassandra.host,), port=cassandra.port),
        zookeeper=zk_conf,
    )

    async def send(app: CloudApp, tenant: str, n: int) -> None:
        t = now_ms()
        ev = pb.Event(
            tenant=tenant,
            device="d1",
            alternate_id=f"e{n}",
            event_time_ms=t,
            received_time_ms=t,
            measurement=pb.Measurement(values={"v": float(n)}),
        )
        await app.parts.bus.publish(topic_name(tenant, DECODED, prefix), messages_by_device([ev]))

    async def stored(app: CloudApp, tenant: str, n: int) -> bool:
        page = await app.parts.event_store.list_device_events(
            EventQuery(tenant=tenant, device="d1", page_size=100)
        )
        return len(page.items) >= n

    async with CloudApp(config) as app, ZkConfigSource(zk_conf.hosts, zk_conf.instance) as zk:
        for t in (a, b):  # registered up front: no registration event among the rows
            await app.parts.registry.create_device(
                model.Device(token="d1", tenant=t, device_type="default", created_ms=now_ms())
            )
            await send(app, t, 1)
        for t in (a, b):
            await eventually(lambda t=t: stored(app, t, 1), timeout=ARRIVAL_S, what=f"{t}: first event")
        assert await _ttls(app, a, cassandra) == [None]

        new = TenantSettings(token=a, retention_days=1)
        await zk.publish_tenant(a, new)

        async def applied() -> bool:
            return app.tenant_settings.get(a) == new

        await eventually(applied, timeout=WAIT_S, what="A's retention applied")
        for t in (a, b):
            await send(app, t, 2)
        for t in (a, b):
            await eventually(lambda t=t: stored(app, t, 2), timeout=ARRIVAL_S, what=f"{t}: second event")
        a_ttls = await _ttls(app, a, cassandra)
        assert None in a_ttls  # the event written before the change keeps no TTL
        live = [x for x in a_ttls if x is not None]
        assert len(live) == 1 and 86_400 - 600 < live[0] <= 86_400
        assert await _ttls(app, b, cassandra) == [None, None]  # B: untouched
