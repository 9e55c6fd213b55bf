"""Two ``ingest`` replicas: command delivery follows the edge, and the edge fails over.

Two ``fieldgate cloud run ingest`` processes (each its own consumer group on
[command-invocations], ``command-delivery.<host>-<grpc_port>``) and, in this process, the other
stages and the REST API, on the session's real Kafka and Cassandra. One edge agent whose
uplink target lists both replicas. Under MQTT load the replica the edge is connected to is
killed with SIGKILL: the edge reconnects to the other one and re-sends its buffer; every
event the broker acknowledged is stored exactly once; commands to online devices are then
answered through the surviving replica, and a command that was QUEUED (created while the edge
was on the killed replica, for a device not yet heard of) is delivered once its device speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.config import BusConfig, CloudConfig, StoreConfig, TenantConfig
from fieldgate.cloud.store.events import EventQuery
from fieldgate.devservers import CassandraServer, KafkaServer
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.timeutil import now_ms
from fieldgate.v1 import model_pb2 as model
from tests.distributed.test_distributed_e2e import _start_service, _stop, publish_once
from tests.helpers.edge_mqtt import CommandDevice
from tests.helpers.publisher import AckedPublisher
from tests.helpers.waiting import eventually, free_port, never

pytestmark = [pytest.mark.distributed, pytest.mark.integration]

PASSWORD = "replicas-pw"
ARRIVAL_S = 90
LOAD_DEVICES = 4
LOAD_COUNT = 150  # messages per load device (bounded)
LOAD_RATE_HZ = 40.0
ACTORS = 6  # online devices answering commands


async def _api(rest_port: int, user: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{rest_port}", timeout=20)
    r = await client.post("/api/v1/auth/token", data={"username": user, "password": PASSWORD})
    r.raise_for_status()
    client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    return client


async def _invocation(api: httpx.AsyncClient, inv_id: str) -> dict[str, Any]:
    r = await api.get(f"/api/v1/invocations/{inv_id}")
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


async def _command(api: httpx.AsyncClient, device: str) -> str:
    r = await api.post(f"/api/v1/devices/{device}/commands", json={"command": "ping", "params": {}})
    assert r.status_code == 201, r.text
    inv: str = r.json()["id"]
    return inv


async def _answered(api: httpx.AsyncClient, inv_id: str) -> dict[str, Any] | None:
    body = await _invocation(api, inv_id)
    return body if body["status"] == "answered" else None


def _connected_to(logs: dict[str, Path], edge_id: str) -> list[str]:
    """The replicas whose log says the edge connected, in the order of the mapping."""
    return [name for name, path in logs.items() if f"edge {edge_id} connected" in path.read_text()]


async def _measurements(app: CloudApp, tenant: str, device: str) -> list[float]:
    page = await app.parts.event_store.list_device_events(
        EventQuery(tenant=tenant, device=device, kind="measurement", page_size=1000)
    )
    return [dict(ev.measurement.values).get("n", -1.0) for ev in page.items]


async def test_edge_fails_over_and_commands_follow_it(
    tmp_path: Path, kafka: KafkaServer, cassandra: CassandraServer
) -> None:
    run = uuid.uuid4().hex[:8]
    tenant = f"tr{run}"
    edge_id = f"edge-{run}"
    ports = {"a": free_port(), "b": free_port()}
    config = CloudConfig(
        data_dir=tmp_path / "cloud",
        grpc_port=0,
        rest_port=0,
        tenants=(TenantConfig(token=tenant),),
        bus=BusConfig(kind="kafka", bootstrap=kafka.bootstrap, topic_prefix=f"fg{run}", partitions=2),
        store=StoreConfig(kind="cassandra", hosts=(cassandra.host,), port=cassandra.port),
    )
    files: dict[str, Path] = {}
    for name, port in ports.items():
        # replica_id left unset: the default (<host>-<grpc_port>) differs between the two.
        data = json.loads(config.model_copy(update={"grpc_port": port}).model_dump_json())
        files[name] = tmp_path / f"ingest-{name}.yaml"
        files[name].write_text(json.dumps(data))  # JSON is YAML
    logs = {name: tmp_path / f"ingest-{name}.log" for name in ports}

    async with CloudApp(config, ["inbound", "registration", "event-store", "api"]) as app:
        await app.parts.users.set_password("user", PASSWORD, tenant=tenant)
        # Known to the registry, silent until after the failover.
        await app.parts.registry.create_device(
            model.Device(token="late-1", tenant=tenant, device_type="default", created_ms=now_ms())
        )
        replicas = {name: await _start_service(files[name], "ingest", logs[name]) for name in ports}
        mqtt_port = free_port()
        edge = EdgeAgent(
            EdgeConfig(
                edge_id=edge_id,
                data_dir=tmp_path / "edge",
                tenants=(tenant,),
                mqtt=MqttConfig(mode="embedded", port=mqtt_port),
                uplink=UplinkConfig(
                    target=f"ipv4:127.0.0.1:{ports['a']},127.0.0.1:{ports['b']}",
                    backoff_initial_s=0.1,
                    backoff_max_s=1.0,
                ),
            )
        )
        api = await _api(app.rest_port, "user")
        actors = {f"actor-{i}": CommandDevice(mqtt_port, tenant, f"actor-{i}") for i in range(ACTORS)}
        late = CommandDevice(mqtt_port, tenant, "late-1")
        publisher = AckedPublisher("127.0.0.1", mqtt_port)
        stop_load = threading.Event()
        try:
            async with edge:
                assert await edge.uplink.wait_connected(30), "edge never connected"
                await eventually(lambda: _connected_to(logs, edge_id), timeout=20, what="edge in a log")
                first = _connected_to(logs, edge_id)
                assert len(first) == 1, first
                victim = first[0]
                survivor = "b" if victim == "a" else "a"

                # A command to an online device while both replicas run: the replica with the
                # edge delivers it, the other one leaves it alone.
                # Several devices, so that their invocations land on both partitions (both
                # replicas' delivery consumers see them whatever the partitioning).
                for actor in actors.values():
                    await asyncio.to_thread(actor.start)
                    await asyncio.to_thread(
                        publish_once,
                        mqtt_port,
                        tenant,
                        actor.device,
                        {"type": "measurement", "values": {"n": -1}},
                    )
                for name in actors:
                    await eventually(
                        lambda d=name: _measurements(app, tenant, d),
                        timeout=ARRIVAL_S,
                        what=f"{name}'s event",
                    )
                before = {name: await _command(api, name) for name in actors}
                for inv in before.values():
                    await eventually(lambda i=inv: _answered(api, i), timeout=ARRIVAL_S, what="first answers")

                # A command for a device no replica has a route to: QUEUED on both.
                queued = await _command(api, "late-1")

                async def not_queued() -> str | None:
                    status = str((await _invocation(api, queued))["status"])
                    return status if status != "queued" else None

                # Both replicas read it meanwhile (and could not send it): it stays QUEUED.
                await never(not_queued, within=3, what="the unroutable command leaving QUEUED")

                # Load, and kill -9 the edge's replica in the middle of it.
                await asyncio.to_thread(publisher.connect)
                devices = [f"load-{i}" for i in range(LOAD_DEVICES)]
                threads = [
                    threading.Thread(
                        target=publisher.publish_measurements,
                        args=(tenant, d, LOAD_COUNT),
                        kwargs={"prefix": d, "rate_hz": LOAD_RATE_HZ, "stop": stop_load},
                        daemon=True,
                    )
                    for d in devices
                ]
                for t in threads:
                    t.start()
                await eventually(
                    lambda: len(publisher.acked) >= LOAD_DEVICES * LOAD_COUNT // 3,
                    timeout=60,
                    what="a third of the load acknowledged",
                )
                sessions_before = edge.uplink.stats.sessions
                replicas[victim].send_signal(signal.SIGKILL)
                await replicas[victim].wait()
                await eventually(
                    lambda: edge.uplink.stats.sessions > sessions_before and edge.uplink.connected,
                    timeout=30,
                    what="edge reconnected",
                )
                await eventually(
                    lambda: survivor in _connected_to(logs, edge_id),
                    timeout=10,
                    what="edge on the survivor",
                )
                for t in threads:
                    await asyncio.to_thread(t.join, 60)
                assert not any(t.is_alive() for t in threads), "load did not finish"
                assert await asyncio.to_thread(publisher.wait_all_acked, 30)
                acked = list(publisher.acked)
                assert len(acked) == LOAD_DEVICES * LOAD_COUNT  # the broker took every message

                # Every acknowledged event stored exactly once.
                async def all_stored() -> bool:
                    for d in devices:
                        if len(await _measurements(app, tenant, d)) < LOAD_COUNT:
                            return False
                    return True

                await eventually(all_stored, timeout=ARRIVAL_S, interval=1.0, what="every event stored")
                for d in devices:
                    values = sorted(await _measurements(app, tenant, d))
                    assert values == [float(i) for i in range(LOAD_COUNT)], d  # each once

                # The online device is reachable through the survivor once it speaks there.
                for name in actors:
                    await asyncio.to_thread(
                        publish_once, mqtt_port, tenant, name, {"type": "measurement", "values": {"n": -2}}
                    )
                after = {name: await _command(api, name) for name in actors}
                for inv in after.values():
                    final = await eventually(
                        lambda i=inv: _answered(api, i), timeout=ARRIVAL_S, what="answers via survivor"
                    )
                    assert final["response"] == {"pong": True}
                for name, actor in actors.items():  # each delivered once
                    assert [c["invocation"] for c in actor.received] == [before[name], after[name]], name

                # The invocation QUEUED before the failover: delivered by the survivor as soon
                # as its device is heard through the edge.
                assert (await _invocation(api, queued))["status"] == "queued"
                await asyncio.to_thread(late.start)
                await asyncio.to_thread(
                    publish_once, mqtt_port, tenant, "late-1", {"type": "measurement", "values": {"n": 0}}
                )
                final = await eventually(
                    lambda: _answered(api, queued), timeout=ARRIVAL_S, what="queued answered"
                )
                assert final["response"] == {"pong": True}
                assert [c["invocation"] for c in late.received] == [queued]
                assert f"edge {edge_id} connected" in logs[survivor].read_text()
        finally:
            stop_load.set()
            for dev in (*actors.values(), late):
                with contextlib.suppress(Exception):  # one that never started
                    dev.stop()
            publisher.close()
            await api.aclose()
            for proc in replicas.values():
                await _stop(proc)
