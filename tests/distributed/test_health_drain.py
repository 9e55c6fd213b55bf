"""Health and graceful shutdown on the distributed backends (real Kafka and Cassandra).

* Readiness follows the bus: an ingest process on a Kafka of its own is ready; the Kafka stops;
  ``/readyz`` goes 503 naming the bus and the gRPC health service says NOT_SERVING, while
  ``/healthz`` stays 200 (a restart would not bring Kafka back).
* SIGTERM of an ``ingest`` replica under load: two ``fieldgate cloud run ingest`` processes, each
  with a data dir of its own; the one holding the edge's stream gets SIGTERM in the middle of an
  MQTT load. It drains (no new batches, acks what it committed, ends the stream with
  UNAVAILABLE) and exits 0; the edge moves to the other replica; every event the broker
  acknowledged is stored exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.config import BusConfig, CloudConfig, HealthConfig, StoreConfig, TenantConfig
from fieldgate.devservers import CassandraServer, KafkaServer, kafka_server
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
from tests.distributed.test_distributed_e2e import _start_service, _stop
from tests.distributed.test_ingest_replicas import _connected_to, _measurements
from tests.helpers.publisher import AckedPublisher
from tests.helpers.waiting import eventually, free_port, never

pytestmark = [pytest.mark.distributed, pytest.mark.integration]

LOAD_DEVICES = 4
LOAD_COUNT = 200
LOAD_RATE_HZ = 40.0
ARRIVAL_S = 90


async def _grpc_status(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)


async def test_readiness_follows_kafka_and_liveness_does_not(
    tmp_path: Path, cassandra: CassandraServer
) -> None:
    run = uuid.uuid4().hex[:8]
    with kafka_server(tmp_path / "kafka") as kafka:
        config = CloudConfig(
            data_dir=tmp_path / "cloud",
            grpc_port=0,
            rest_port=0,
            health=HealthConfig(port=0),
            tenants=(TenantConfig(token=f"th{run}"),),
            bus=BusConfig(kind="kafka", bootstrap=kafka.bootstrap, topic_prefix=f"fg{run}", partitions=1),
            store=StoreConfig(
                kind="cassandra", hosts=(cassandra.host,), port=cassandra.port, keyspace_prefix=f"h{run[:8]}"
            ),
        )
        app = CloudApp(config, ["ingest"])
        await app.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.health_port}", timeout=10) as http:
                ready = await http.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert {"bus", "registry", "invocations", "event_store"} <= set(ready.json()["checks"])
                assert await _grpc_status(app.grpc_port) == health_pb2.HealthCheckResponse.SERVING

                kafka.stop()

                async def bus_down() -> dict[str, str] | None:
                    r = await http.get("/readyz")
                    return r.json()["checks"] if r.status_code == 503 else None

                checks = await eventually(bus_down, timeout=30, interval=0.5, what="readiness false")
                assert checks["bus"] != "ok" and checks["registry"] == "ok", checks
                assert (await http.get("/healthz")).status_code == 200
                await eventually(
                    lambda: _grpc_is(app.grpc_port, health_pb2.HealthCheckResponse.NOT_SERVING),
                    timeout=15,
                    what="gRPC health NOT_SERVING",
                )
        finally:
            await app.stop()


async def _grpc_is(port: int, want: int) -> bool:
    return await _grpc_status(port) == want


async def test_sigterm_of_the_edges_ingest_replica_under_load_loses_nothing(
    tmp_path: Path, kafka: KafkaServer, cassandra: CassandraServer
) -> None:
    run = uuid.uuid4().hex[:8]
    tenant = f"td{run}"
    ports = {"a": free_port(), "b": free_port()}
    config = CloudConfig(
        data_dir=tmp_path / "cloud",
        grpc_port=0,
        rest_port=0,
        drain_timeout_s=10,
        tenants=(TenantConfig(token=tenant),),
        bus=BusConfig(kind="kafka", bootstrap=kafka.bootstrap, topic_prefix=f"fg{run}", partitions=2),
        store=StoreConfig(kind="cassandra", hosts=(cassandra.host,), port=cassandra.port),
    )
    files: dict[str, Path] = {}
    for name, port in ports.items():
        # Each replica its own data dir: nothing on disk is shared.
        data = json.loads(
            config.model_copy(
                update={"grpc_port": port, "data_dir": tmp_path / f"ingest-{name}"}
            ).model_dump_json()
        )
        files[name] = tmp_path / f"ingest-{name}.yaml"
        files[name].write_text(json.dumps(data))  # JSON is YAML
    logs = {name: tmp_path / f"ingest-{name}.log" for name in ports}

    async with CloudApp(config, ["inbound", "registration", "event-store"]) as app:
        replicas = {name: await _start_service(files[name], "ingest", logs[name]) for name in ports}
        mqtt_port = free_port()
        edge_id = f"edge-{run}"
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
        publisher = AckedPublisher("127.0.0.1", mqtt_port)
        stop_load = threading.Event()
        try:
            async with edge:
                assert await edge.uplink.wait_connected(30), "edge never connected"
                await eventually(lambda: _connected_to(logs, edge_id), timeout=20, what="edge in a log")
                victim = _connected_to(logs, edge_id)[0]
                survivor = "b" if victim == "a" else "a"

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
                replicas[victim].send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(replicas[victim].wait(), timeout=config.drain_timeout_s + 30)
                assert code == 0, f"the drained replica exited with {code}; see {logs[victim]}"
                victim_log = logs[victim].read_text()
                assert "ingest: draining 1 edge stream(s)" in victim_log
                assert "still open after" not in victim_log  # the stream ended within the drain

                await eventually(
                    lambda: survivor in _connected_to(logs, edge_id),
                    timeout=30,
                    what="edge on the survivor",
                )
                for t in threads:
                    await asyncio.to_thread(t.join, 60)
                assert not any(t.is_alive() for t in threads), "load did not finish"
                assert await asyncio.to_thread(publisher.wait_all_acked, 30)
                assert len(publisher.acked) == LOAD_DEVICES * LOAD_COUNT

                async def all_stored() -> bool:
                    for d in devices:
                        if len(await _measurements(app, tenant, d)) < LOAD_COUNT:
                            return False
                    return True

                await eventually(all_stored, timeout=ARRIVAL_S, interval=1.0, what="every event stored")

                async def stored_twice() -> list[str]:
                    return [d for d in devices if len(await _measurements(app, tenant, d)) > LOAD_COUNT]

                # A duplicate still in flight would land now: none may.
                await never(stored_twice, within=1.0, interval=0.25, what="an event stored twice")
                for d in devices:
                    values = sorted(await _measurements(app, tenant, d))
                    assert values == [float(i) for i in range(LOAD_COUNT)], d  # each exactly once
        finally:
            stop_load.set()
            publisher.close()
            for proc in replicas.values():
                await _stop(proc)
