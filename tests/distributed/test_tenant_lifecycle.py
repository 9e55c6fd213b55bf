"""A tenant created through REST on a running distributed cloud (Kafka, Cassandra, ZooKeeper)
is usable at once: its keyspace, topics and znode exist when the POST returns, an edge sends
events for it and they are stored and readable — no restart; deleting it (confirmed) removes
its keyspace, topics, znodes (settings and rules) and users (their tokens refused at once),
checked with the Cassandra, Kafka and ZooKeeper clients; created again under the same token it
starts empty (no events, rules or users of the old one) and an edge's new events are stored."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import AdminClient
from kazoo.client import KazooClient

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.bus import STAGES, topic_name
from fieldgate.cloud.config import BusConfig, CloudConfig, StoreConfig, TenantConfig, ZookeeperConfig
from fieldgate.cloud.store.cassandra.session import CassandraSession, keyspace_name
from fieldgate.devservers import CassandraServer, KafkaServer, ZooKeeperServer
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
from tests.distributed.test_zk_live_settings import json_event, publish
from tests.helpers.waiting import eventually, free_port

pytestmark = [pytest.mark.distributed, pytest.mark.integration]

PASSWORD = "lifecycle-secret"


def topics(bootstrap: str, prefix: str, tenant: str) -> set[str]:
    names = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return {t for t in names if t.startswith(f"{prefix}.tenant.{tenant}.")}


async def keyspace_exists(cassandra: CassandraServer, ks: str) -> bool:
    session = CassandraSession(cassandra.host, cassandra.port)
    await session.start()
    try:
        return await session.keyspace_exists(ks)
    finally:
        await session.stop()


async def test_tenant_created_used_and_deleted_on_a_running_cloud(
    tmp_path: Path, kafka: KafkaServer, zookeeper: ZooKeeperServer, cassandra: CassandraServer
) -> None:
    run = uuid.uuid4().hex[:8]
    prefix, tenant = f"tl{run}", f"new{run}"
    zk_conf = ZookeeperConfig(hosts=zookeeper.hosts, instance=f"tl{run}")
    config = CloudConfig(
        data_dir=tmp_path / "cloud",
        grpc_port=0,
        rest_port=0,
        tenants=(TenantConfig(token=f"base{run}"),),
        bus=BusConfig(kind="kafka", bootstrap=kafka.bootstrap, topic_prefix=prefix, partitions=1),
        store=StoreConfig(
            kind="cassandra", hosts=(cassandra.host,), port=cassandra.port, keyspace_prefix=prefix
        ),
        zookeeper=zk_conf,
    )
    ks = keyspace_name(tenant, prefix)
    znode = f"/fieldgate/{zk_conf.instance}/tenants/{tenant}"
    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start()
    try:
        async with CloudApp(config) as app:
            await app.ensure_admin(PASSWORD)
            base = f"http://127.0.0.1:{app.rest_port}"
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                r = await client.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
                auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
                r = await client.post(
                    "/api/v1/tenants",
                    json={"token": tenant, "name": "New", "max_events_per_s": 1000},
                    headers=auth,
                )
                assert r.status_code == 201, r.text
                # Provisioned when the POST returns.
                assert await keyspace_exists(cassandra, ks)
                assert topics(kafka.bootstrap, prefix, tenant) == {
                    topic_name(tenant, s, prefix) for s in STAGES
                }
                assert zk.exists(znode) is not None

                mqtt_port = free_port()
                edge = EdgeAgent(
                    EdgeConfig(
                        edge_id=f"edge-{run}",
                        data_dir=tmp_path / "edge",
                        tenants=(tenant,),
                        mqtt=MqttConfig(mode="embedded", port=mqtt_port),
                        uplink=UplinkConfig(target=f"127.0.0.1:{app.grpc_port}"),
                    )
                )
                as_tenant = {**auth, "X-Fieldgate-Tenant": tenant}
                r = await client.post(
                    "/api/v1/users",
                    json={
                        "name": f"u{run}",
                        "password": "user-password-1",
                        "role": "viewer",
                        "tenant": tenant,
                    },
                    headers=auth,
                )
                assert r.status_code == 201, r.text
                r = await client.post(
                    "/api/v1/auth/token", data={"username": f"u{run}", "password": "user-password-1"}
                )
                user = {"Authorization": f"Bearer {r.json()['access_token']}"}
                rule = {"id": "hot", "kind": "threshold", "measurement": "t", "operator": ">", "value": 1}
                assert (await client.post("/api/v1/rules", json=rule, headers=as_tenant)).status_code == 201
                assert zk.exists(f"/fieldgate/{zk_conf.instance}/rules/{tenant}") is not None
                async with edge:
                    for i in range(3):
                        await asyncio.to_thread(
                            publish,
                            mqtt_port,
                            f"fieldgate/{tenant}/devices/d1/events",
                            json_event(i, f"e{i}"),
                        )

                    async def stored() -> bool:
                        r = await client.get("/api/v1/devices/d1/events?type=measurement", headers=as_tenant)
                        return r.status_code == 200 and r.json()["total"] == 3

                    await eventually(stored, timeout=120, what="the new tenant's events stored and listed")

                r = await client.delete(f"/api/v1/tenants/{tenant}", headers=auth)
                assert r.status_code == 400
                r = await client.delete(f"/api/v1/tenants/{tenant}?confirm={tenant}", headers=auth)
                assert r.status_code == 200, r.text
                assert (await client.get(f"/api/v1/tenants/{tenant}", headers=auth)).status_code == 404
                assert (await client.get("/api/v1/devices", headers=user)).status_code == 401

                assert not await keyspace_exists(cassandra, ks)
                assert zk.exists(znode) is None
                assert zk.exists(f"/fieldgate/{zk_conf.instance}/rules/{tenant}") is None

                async def topics_gone() -> bool:
                    return not topics(kafka.bootstrap, prefix, tenant)

                await eventually(topics_gone, timeout=60, what="the tenant's topics deleted")
                assert app.tenant_settings.get(tenant) is None

                # Created again under the same token: it starts empty, and takes events again.
                r = await client.post("/api/v1/tenants", json={"token": tenant}, headers=auth)
                assert r.status_code == 201, r.text
                r = await client.get("/api/v1/devices/d1/events?type=measurement", headers=as_tenant)
                assert r.status_code == 404 or r.json()["total"] == 0, r.text
                assert (await client.get("/api/v1/rules", headers=as_tenant)).json() == {"items": []}
                assert (await client.get(f"/api/v1/users?tenant={tenant}", headers=auth)).json() == []
                assert (await client.get("/api/v1/devices", headers=user)).status_code == 401
                again = EdgeAgent(
                    EdgeConfig(
                        edge_id=f"edge2-{run}",
                        data_dir=tmp_path / "edge2",
                        tenants=(tenant,),
                        mqtt=MqttConfig(mode="embedded", port=mqtt_port),
                        uplink=UplinkConfig(target=f"127.0.0.1:{app.grpc_port}"),
                    )
                )
                async with again:
                    for i in range(3, 5):
                        await asyncio.to_thread(
                            publish,
                            mqtt_port,
                            f"fieldgate/{tenant}/devices/d1/events",
                            json_event(i, f"e{i}"),
                        )

                    async def stored_again() -> bool:
                        r = await client.get("/api/v1/devices/d1/events?type=measurement", headers=as_tenant)
                        return r.status_code == 200 and r.json()["total"] == 2

                    await eventually(stored_again, timeout=120, what="the new tenant's events stored")
    finally:
        zk.stop()
        zk.close()
