"""The cloud on the real distributed servers, end to end.

An edge agent (embedded MQTT broker, gRPC uplink) in front of a CloudApp whose bus is Kafka,
whose event store is Cassandra and whose tenant settings come from ZooKeeper: a paho publish
reaches REST, a REST command reaches the device and is answered, and a tenant's
``auto_register`` switched off in ZooKeeper stops that tenant (only) from registering unknown
devices, without a restart. Every name (topic prefix, tenants = keyspaces, ZooKeeper instance)
is unique per test, since the servers are shared by the session.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.bus import DECODED, topic_name
from fieldgate.cloud.config import BusConfig, CloudConfig, StoreConfig, TenantConfig, ZookeeperConfig
from fieldgate.cloud.pipeline.registration import Registration
from fieldgate.cloud.pipeline.stage import messages_by_device
from fieldgate.cloud.store.events import EventQuery
from fieldgate.cloud.zk.models import TenantSettings
from fieldgate.cloud.zk.source import ZkConfigSource
from fieldgate.devservers import CassandraServer, KafkaServer, ZooKeeperServer
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import model_pb2 as model
from tests.helpers.edge_mqtt import CommandDevice
from tests.helpers.publisher import AckedPublisher
from tests.helpers.waiting import eventually, eventually_sync, free_port, not_yet

pytestmark = [pytest.mark.distributed, pytest.mark.integration]

PASSWORD = "dist-e2e-pw"
# The Kafka consumers find a new tenant's topics on their next metadata refresh (5 s), and
# Cassandra creates a keyspace on a tenant's first write: first events take a while.
ARRIVAL_S = 90


class Stack:
    """CloudApp (Kafka + Cassandra + ZooKeeper) and one edge agent serving two tenants."""

    def __init__(self, app: CloudApp, edge: EdgeAgent, mqtt_port: int, tenants: tuple[str, str]) -> None:
        self.app = app
        self.edge = edge
        self.mqtt_port = mqtt_port
        self.tenant_a, self.tenant_b = tenants

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.app.rest_port}"

    def registration(self) -> Registration:
        return next(s for s in self.app.runs if isinstance(s, Registration))

    async def stored(self, tenant: str, device: str) -> list[Any]:
        page = await self.app.parts.event_store.list_device_events(
            EventQuery(tenant=tenant, device=device, page_size=1000)
        )
        return list(page.items)


@pytest.fixture
async def stack(
    tmp_path: Path, kafka: KafkaServer, zookeeper: ZooKeeperServer, cassandra: CassandraServer
) -> AsyncIterator[Stack]:
    run = uuid.uuid4().hex[:8]
    tenants = (f"ta{run}", f"tb{run}")
    zk_conf = ZookeeperConfig(hosts=zookeeper.hosts, instance=f"e2e{run}")
    # Tenant A's settings are in ZooKeeper before start: loaded at start, then watched.
    async with ZkConfigSource(zk_conf.hosts, zk_conf.instance) as zk:
        await zk.publish_tenant(tenants[0], TenantSettings(token=tenants[0], name="Tenant A from ZK"))
    config = CloudConfig(
        data_dir=tmp_path / "cloud",
        grpc_port=0,
        rest_port=0,
        tenants=tuple(TenantConfig(token=t, name=t) for t in tenants),
        bus=BusConfig(kind="kafka", bootstrap=kafka.bootstrap, topic_prefix=f"fg{run}", partitions=2),
        store=StoreConfig(kind="cassandra", hosts=(cassandra.host,), port=cassandra.port),
        zookeeper=zk_conf,
    )
    app = CloudApp(config)
    await app.start()
    try:
        for t in tenants:
            await app.parts.users.set_password(f"user-{t}", PASSWORD, tenant=t)
        mqtt_port = free_port()
        edge = EdgeAgent(
            EdgeConfig(
                edge_id=f"edge-{run}",
                data_dir=tmp_path / "edge",
                tenants=tenants,
                mqtt=MqttConfig(mode="embedded", port=mqtt_port),
                uplink=UplinkConfig(target=f"127.0.0.1:{app.grpc_port}"),
            )
        )
        async with edge:
            yield Stack(app, edge, mqtt_port, tenants)
    finally:
        await app.stop()


async def login(stack: Stack, tenant: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=stack.rest_url, timeout=20)
    r = await client.post("/api/v1/auth/token", data={"username": f"user-{tenant}", "password": PASSWORD})
    r.raise_for_status()
    client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    return client


async def rest_events(api: httpx.AsyncClient, device: str, **params: Any) -> list[dict[str, Any]]:
    r = await api.get(f"/api/v1/devices/{device}/events", params={"page_size": 1000, **params})
    if r.status_code == 404:
        return []
    r.raise_for_status()
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def publish_once(port: int, tenant: str, device: str, payload: Any) -> None:
    pub = AckedPublisher("127.0.0.1", port)
    pub.connect()
    pub.publish(f"fieldgate/{tenant}/devices/{device}/events", payload, "x")
    assert pub.wait_all_acked(10), "broker never acknowledged the QoS 1 publish"
    pub.close()


async def test_event_reaches_rest_and_command_is_answered(stack: Stack) -> None:
    tenant = stack.tenant_a
    assert stack.app.tenant_settings is not None
    settings = stack.app.tenant_settings.get(tenant)
    assert settings is not None and settings.name == "Tenant A from ZK"  # loaded at start

    api = await login(stack, tenant)
    dev = CommandDevice(stack.mqtt_port, tenant, "actor-1")
    try:
        await asyncio.to_thread(dev.start)
        await asyncio.to_thread(
            publish_once, stack.mqtt_port, tenant, "actor-1", {"type": "measurement", "values": {"t": 21.5}}
        )
        events = await eventually(
            lambda: rest_events(api, "actor-1", type="measurement"), timeout=ARRIVAL_S, what="event in REST"
        )
        assert events[0]["values"] == {"t": 21.5}
        r = await api.get("/api/v1/devices/actor-1")
        assert r.status_code == 200 and r.json()["device_type"] == "default"  # auto-registered

        r = await api.post("/api/v1/devices/actor-1/commands", json={"command": "ping", "params": {}})
        assert r.status_code == 201, r.text
        inv = r.json()

        async def answered() -> dict[str, Any] | None:
            body: dict[str, Any] = (await api.get(f"/api/v1/invocations/{inv['id']}")).json()
            return body if body["status"] == "answered" else None

        final = await eventually(answered, timeout=ARRIVAL_S, what="invocation answered")
        assert final["response"] == {"pong": True}
        assert dev.received and dev.received[0]["command"] == "ping"
        # Tenant isolation through the API: tenant B does not see tenant A's device.
        other = await login(stack, stack.tenant_b)
        assert await rest_events(other, "actor-1") == []
        await other.aclose()
    finally:
        dev.stop()
        await api.aclose()


async def test_auto_register_switched_off_live_in_zookeeper(stack: Stack) -> None:
    a, b = stack.tenant_a, stack.tenant_b
    app = stack.app
    assert app.tenant_settings is not None and app.config.zookeeper is not None
    # Both tenants are running (and their topics known to the consumers) before the change.
    for tenant in (a, b):
        await asyncio.to_thread(
            publish_once, stack.mqtt_port, tenant, "known-1", {"type": "measurement", "values": {"x": 1}}
        )
    for tenant in (a, b):
        await eventually(lambda t=tenant: stack.stored(t, "known-1"), timeout=ARRIVAL_S, what="warm-up")

    async with ZkConfigSource(app.config.zookeeper.hosts, app.config.zookeeper.instance) as zk:
        await zk.publish_tenant(a, TenantSettings(token=a, name="Tenant A from ZK", auto_register=False))

    async def switched_off() -> bool:
        live = app.tenant_settings.get(a) if app.tenant_settings else None
        return live is not None and not live.auto_register

    await eventually(switched_off, timeout=30, what="the running cloud saw the new setting")
    kept_before = stack.registration().stats.events_kept_unregistered

    for tenant in (a, b):
        await asyncio.to_thread(
            publish_once, stack.mqtt_port, tenant, "stranger-1", {"type": "measurement", "values": {"y": 2}}
        )
    # Tenant B (unchanged) still registers unknown devices and stores their events.
    await eventually(lambda: stack.stored(b, "stranger-1"), timeout=ARRIVAL_S, what="tenant B's new device")
    assert await app.parts.registry.get_device(b, "stranger-1") is not None

    # Tenant A keeps the unknown device's events in [unregistered]: not registered, not stored.
    async def kept() -> bool:
        return stack.registration().stats.events_kept_unregistered > kept_before

    await eventually(kept, timeout=ARRIVAL_S, what="tenant A's event kept unregistered")
    assert await app.parts.registry.get_device(a, "stranger-1") is None
    assert await stack.stored(a, "stranger-1") == []
    # Tenant A's known device still flows.
    await asyncio.to_thread(
        publish_once, stack.mqtt_port, a, "known-1", {"type": "measurement", "values": {"x": 3}}
    )
    await eventually(
        lambda: _has_value(stack, a, "known-1", 3.0), timeout=ARRIVAL_S, what="known device after change"
    )


async def _has_value(stack: Stack, tenant: str, device: str, value: float) -> bool:
    for ev in await stack.stored(tenant, device):
        if ev.WhichOneof("payload") == "measurement" and value in dict(ev.measurement.values).values():
            return True
    return False


# ---------------------------------------------------------------- separate service processes


async def _start_service(config_file: Path, service: str, log: Path) -> asyncio.subprocess.Process:
    """``fieldgate cloud run <service>`` as a child process, returned once it says it is up."""
    out = log.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fieldgate.cli",
        "cloud",
        "run",
        "--config",
        str(config_file),
        service,
        stdout=asyncio.subprocess.PIPE,
        stderr=out,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert b"cloud up" in line, f"{service} did not start: {line!r}; see {log}"
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_inbound_replica_killed_under_load_loses_and_duplicates_nothing(
    tmp_path: Path, kafka: KafkaServer, cassandra: CassandraServer
) -> None:
    run = uuid.uuid4().hex[:8]
    tenant = f"tk{run}"
    prefix = f"fg{run}"
    data_dir = tmp_path / "cloud"
    config = CloudConfig(
        data_dir=data_dir,
        grpc_port=0,
        rest_port=0,
        tenants=(TenantConfig(token=tenant),),
        bus=BusConfig(kind="kafka", bootstrap=kafka.bootstrap, topic_prefix=prefix, partitions=4),
        store=StoreConfig(kind="cassandra", hosts=(cassandra.host,), port=cassandra.port),
    )
    config_file = tmp_path / "cloud.yaml"
    config_file.write_text(json.dumps(json.loads(config.model_dump_json())))  # JSON is YAML
    devices = [f"dev-{i:02d}" for i in range(12)]
    rounds = 40
    # This process runs every stage but inbound; two `fieldgate cloud run inbound` replicas
    # share the [decoded] partitions.
    async with CloudApp(config, ["registration", "event-store", "ingest"]) as app:
        for d in devices:  # registered up front: inbound sends their events straight on
            await app.parts.registry.create_device(
                model.Device(token=d, tenant=tenant, device_type="default", created_ms=now_ms())
            )
        replicas = [
            await _start_service(config_file, "inbound", tmp_path / f"inbound-{i}.log") for i in range(2)
        ]
        try:
            sent = 0
            killed = False
            for r in range(rounds):
                now = now_ms()
                batch = [
                    pb.Event(
                        tenant=tenant,
                        device=d,
                        alternate_id=f"{d}-{r}",
                        event_time_ms=now,
                        received_time_ms=now,
                        measurement=pb.Measurement(values={"round": float(r)}),
                    )
                    for d in devices
                ]
                await app.parts.bus.publish(topic_name(tenant, DECODED, prefix), messages_by_device(batch))
                sent += len(batch)
                if r == rounds // 3:
                    # Both replicas are working before one of them dies.
                    await eventually(
                        lambda: _count_stored(app, tenant, devices, at_least=1),
                        timeout=ARRIVAL_S,
                        what="first events stored",
                    )
                if r == rounds // 2 and not killed:
                    replicas[0].send_signal(signal.SIGKILL)
                    await replicas[0].wait()
                    killed = True
                await asyncio.sleep(0.05)

            async def all_stored() -> bool:
                return await _count_stored(app, tenant, devices, at_least=rounds)

            await eventually(all_stored, timeout=ARRIVAL_S, interval=1.0, what="every event stored")
            for d in devices:
                page = await app.parts.event_store.list_device_events(
                    EventQuery(tenant=tenant, device=d, kind="measurement", page_size=1000)
                )
                alternates = [ev.alternate_id for ev in page.items]
                assert sorted(alternates) == sorted(f"{d}-{r}" for r in range(rounds)), d  # once each
            assert sent == len(devices) * rounds
        finally:
            for proc in replicas:
                await _stop(proc)


async def _count_stored(app: CloudApp, tenant: str, devices: list[str], *, at_least: int) -> bool:
    for d in devices:
        page = await app.parts.event_store.list_device_events(
            EventQuery(tenant=tenant, device=d, kind="measurement", page_size=1000)
        )
        if len(page.items) < at_least:
            return False
    return True


# ---------------------------------------------------------------- tenant isolation


def _records_of_topics(bootstrap: str, topics: list[str]) -> list[tuple[str, bytes, bytes]]:
    """Every record (topic, key, value) in ``topics``, read from the beginning to the end."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"iso-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    try:
        metadata = consumer.list_topics(timeout=20)
        parts = [TopicPartition(t, p, 0) for t in topics for p in metadata.topics[t].partitions]
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=20)[1] for tp in parts}
        consumer.assign(parts)
        remaining = {k for k, end in ends.items() if end > 0}
        records: list[tuple[str, bytes, bytes]] = []

        def at_the_end() -> object:
            msg = consumer.poll(0.1)
            if msg is not None and not msg.error():
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                assert topic is not None and partition is not None and offset is not None
                records.append((topic, msg.key() or b"", msg.value() or b""))
                if offset + 1 >= ends[(topic, partition)]:
                    remaining.discard((topic, partition))
            return True if not remaining else not_yet(f"partitions not read to the end: {sorted(remaining)}")

        eventually_sync(at_the_end, 60, "every partition read to the end", interval=0)
        return records
    finally:
        consumer.close()


def _keyspace_rows(host: str, port: int, keyspace: str) -> list[str]:
    """Every row of every table of ``keyspace``, as text."""
    from cassandra import InvalidRequest
    from cassandra.cluster import Cluster

    cluster = Cluster([host], port=port)
    try:
        session = cluster.connect()
        tables = [
            r.table_name
            for r in session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,)
            )
        ]
        assert tables, f"no tables in {keyspace}"

        def rows_of(table: str) -> tuple[list[str]] | None:
            # A store of another process may be creating its tables in the keyspace right now
            # (the batch store migrates a tenant's keyspace on first use): system_schema lists
            # such a table a moment before it can be read.
            try:
                return ([repr(tuple(row)) for row in session.execute(f"SELECT * FROM {keyspace}.{table}")],)
            except InvalidRequest as err:
                if "does not exist" not in str(err):
                    raise
                return None

        rows: list[str] = []
        for table in tables:
            found = eventually_sync(functools.partial(rows_of, table), 30, f"{keyspace}.{table} readable")
            assert found is not None
            rows.extend(found[0])
        return rows
    finally:
        cluster.shutdown()


async def test_tenant_isolation_in_topics_keyspaces_and_api(stack: Stack) -> None:
    """Tenant A's events never appear in tenant B's Kafka topics, Cassandra keyspace or REST."""
    from fieldgate.cloud.store.cassandra.events import keyspace_name

    a, b = stack.tenant_a, stack.tenant_b
    device_a, device_b = f"only-in-{a}", f"only-in-{b}"
    for tenant, device in ((a, device_a), (b, device_b)):
        await asyncio.to_thread(
            publish_once, stack.mqtt_port, tenant, device, {"type": "measurement", "values": {"v": 1.0}}
        )
    for tenant, device in ((a, device_a), (b, device_b)):
        await eventually(
            lambda t=tenant, d=device: stack.stored(t, d), timeout=ARRIVAL_S, what=f"{device} stored"
        )

    # REST: each tenant's user sees its own device only.
    for tenant, own, other in ((a, device_a, device_b), (b, device_b, device_a)):
        api = await login(stack, tenant)
        try:
            assert await rest_events(api, own)
            assert await rest_events(api, other) == []
            assert (await api.get(f"/api/v1/devices/{other}")).status_code == 404
        finally:
            await api.aclose()

    # Kafka: every topic of one tenant holds only that tenant's devices.
    prefix = stack.app.config.bus.topic_prefix
    bootstrap = stack.app.config.bus.bootstrap
    from confluent_kafka.admin import AdminClient

    listed = await asyncio.to_thread(AdminClient({"bootstrap.servers": bootstrap}).list_topics, timeout=20)
    for tenant, foreign in ((a, device_b), (b, device_a)):
        topics = sorted(t for t in listed.topics if t.startswith(f"{prefix}.tenant.{tenant}."))
        assert topics, f"no topics for {tenant}"
        records = await asyncio.to_thread(_records_of_topics, bootstrap, topics)
        assert records, f"tenant {tenant}'s topics are empty"
        leaked = [r for r in records if foreign.encode() in r[1] or foreign.encode() in r[2]]
        assert leaked == [], f"{foreign} leaked into {tenant}'s topics: {leaked[:3]}"

    # Cassandra: each tenant's keyspace holds only that tenant's devices.
    store = stack.app.config.store
    for tenant, own, foreign in ((a, device_a, device_b), (b, device_b, device_a)):
        rows = await asyncio.to_thread(
            _keyspace_rows, store.hosts[0], store.port, keyspace_name(tenant, store.keyspace_prefix)
        )
        assert any(own in row for row in rows), f"{own} not in its own keyspace"
        assert not [row for row in rows if foreign in row], f"{foreign} leaked into {tenant}'s keyspace"
