"""Health endpoints of the cloud (HTTP and the gRPC health protocol) and of the edge agent, and
the ingest drain that SIGTERM starts, on the embedded backends.

What a kubelet (or an operator with curl) would see: ``/healthz`` and ``/readyz`` on the health
listener and on the REST port, ``grpc.health.v1.Health/Check`` on ingest's port; readiness
false while draining and liveness false when a stage died; the agent's probes beside its
metrics, liveness false when its event loop is blocked.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.composition import Part
from fieldgate.cloud.config import CloudConfig, HealthConfig
from fieldgate.cloud.pipeline.inbound import InboundProcessing
from fieldgate.cloud.store.events import EventQuery
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.edge.probes import AgentProbes
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc
from tests.helpers.publisher import AckedPublisher
from tests.helpers.waiting import eventually, eventually_sync, free_port, never

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def cloud_config(tmp_path: Path, **kw: object) -> CloudConfig:
    return CloudConfig(
        data_dir=tmp_path / "cloud", grpc_port=0, rest_port=0, health=HealthConfig(port=0), **kw
    )


async def grpc_status(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


async def test_cloud_probes_answer_and_drain_turns_readiness_off(tmp_path: Path) -> None:
    async with CloudApp(cloud_config(tmp_path)) as app, httpx.AsyncClient(timeout=10) as http:
        assert app.health_port
        for base in (f"http://127.0.0.1:{app.health_port}", f"http://127.0.0.1:{app.rest_port}"):
            live = await http.get(base + "/healthz")
            assert live.status_code == 200 and live.json()["status"] == "ok"
            ready = await http.get(base + "/readyz")
            assert ready.status_code == 200, ready.text
            checks = ready.json()["checks"]
            assert {"bus", "registry", "invocations", "event_store", "users"} <= set(checks)
            assert set(checks.values()) == {"ok"}
        assert await grpc_status(app.grpc_port) == SERVING
        assert await grpc_status(app.grpc_port, "fieldgate.v1.EdgeUplink") == SERVING

        await app.drain()

        ready = await http.get(f"http://127.0.0.1:{app.health_port}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"draining": "shutting down"}
        assert (await http.get(f"http://127.0.0.1:{app.rest_port}/readyz")).status_code == 503
        # Still alive: draining is not a reason to be restarted.
        assert (await http.get(f"http://127.0.0.1:{app.health_port}/healthz")).status_code == 200
        assert await grpc_status(app.grpc_port) == NOT_SERVING
        # A new edge stream is refused, so the edge goes to another replica. The refusal may
        # come before the hello is written (the server ends the stream at once) or after it.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            call = svc_grpc.EdgeUplinkStub(channel).Connect(None)  # None: the test writes
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.write(svc.EdgeMessage(hello=svc.Hello(edge_id="late-edge")))
                await call.read()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_dead_stage_fails_liveness_not_only_readiness(tmp_path: Path) -> None:
    async with CloudApp(cloud_config(tmp_path)) as app, httpx.AsyncClient(timeout=10) as http:
        base = f"http://127.0.0.1:{app.health_port}"
        assert (await http.get(base + "/healthz")).status_code == 200
        inbound = next(s for s in app.runs if isinstance(s, InboundProcessing))
        task = inbound.stage._task
        assert task is not None
        task.cancel()  # as if the stage's task had crashed
        await asyncio.gather(task, return_exceptions=True)
        live = await http.get(base + "/healthz")
        assert live.status_code == 503
        assert live.json()["checks"][inbound.stage.name] == "stopped unexpectedly"
        await eventually(
            lambda: _status(http, base + "/readyz", 503), timeout=5, what="readiness false as well"
        )


async def _status(http: httpx.AsyncClient, url: str, want: int) -> bool:
    return (await http.get(url)).status_code == want


async def _stored(app: CloudApp, device: str) -> list[str]:
    ids: list[str] = []
    page = 1
    while True:
        res = await app.parts.event_store.list_device_events(
            EventQuery(tenant="default", device=device, kind="measurement", page=page, page_size=1000)
        )
        ids += [e.alternate_id for e in res.items]
        if len(res.items) < 1000:
            return ids
        page += 1


async def test_drain_under_load_acks_what_it_committed_and_loses_nothing(tmp_path: Path) -> None:
    """The cloud drains (what SIGTERM does) while an edge streams a load; a new cloud on the
    same data takes over. Every event the broker acknowledged is stored exactly once."""
    total = 3000
    grpc_port = free_port()
    config = cloud_config(tmp_path).model_copy(update={"grpc_port": grpc_port})
    mqtt_port = free_port()
    edge = EdgeAgent(
        EdgeConfig(
            edge_id="edge-drain",
            data_dir=tmp_path / "edge",
            mqtt=MqttConfig(mode="embedded", port=mqtt_port),
            uplink=UplinkConfig(target=f"127.0.0.1:{grpc_port}", backoff_initial_s=0.1, backoff_max_s=0.5),
        )
    )
    cloud = CloudApp(config)
    await cloud.start()
    pub = AckedPublisher("127.0.0.1", mqtt_port)
    try:
        async with edge:
            assert await edge.uplink.wait_connected(20)
            await asyncio.to_thread(pub.connect)
            load = threading.Thread(
                target=pub.publish_measurements, args=("default", "drain-1", total), kwargs={"rate_hz": 600}
            )
            load.start()
            await eventually(lambda: _at_least(cloud, "drain-1", 300), timeout=30, what="300 stored")
            sessions = edge.uplink.stats.sessions
            await cloud.drain()
            assert cloud.ingest is not None and cloud.ingest.stats.streams_active == 0
            await cloud.stop()
            # The edge lost its stream with UNAVAILABLE and keeps what was not acknowledged.
            cloud = CloudApp(config)
            await cloud.start()
            await asyncio.to_thread(load.join, 60)
            assert await asyncio.to_thread(pub.wait_all_acked, 30)
            assert len(pub.acked) == total
            await eventually(
                lambda: _at_least(cloud, "drain-1", total), timeout=60, what="every event stored"
            )
            assert edge.uplink.stats.sessions > sessions
            # A duplicate still in flight (re-sent after the drain) would land now: none may.
            await never(
                lambda: _at_least(cloud, "drain-1", total + 1), within=1.0, what="an event stored twice"
            )
            ids = await _stored(cloud, "drain-1")
            assert len(ids) == total, f"{len(ids) - len(set(ids))} stored twice"
            assert set(ids) == set(pub.acked)
    finally:
        pub.close()
        await cloud.stop()


async def _at_least(app: CloudApp, device: str, n: int) -> bool:
    return len(await _stored(app, device)) >= n


# ---------------------------------------------------------------- edge agent


def edge_config(tmp_path: Path, metrics_port: int) -> EdgeConfig:
    return EdgeConfig(
        edge_id="edge-probes",
        data_dir=tmp_path / "edge",
        mqtt=MqttConfig(mode="embedded", port=free_port()),
        # Nothing listens there: the agent is ready all the same (buffering is its job).
        uplink=UplinkConfig(target=f"127.0.0.1:{free_port()}"),
        metrics_port=metrics_port,
    )


async def test_edge_agent_probes_and_metrics_share_the_port(tmp_path: Path) -> None:
    port = free_port()
    async with EdgeAgent(edge_config(tmp_path, port)), httpx.AsyncClient(timeout=10) as http:
        base = f"http://127.0.0.1:{port}"
        live = await http.get(base + "/healthz")
        assert live.status_code == 200 and live.json()["status"] == "ok"
        ready = await http.get(base + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["uplink_connected"] is False
        assert ready.json()["buffer_depth"] == 0
        metrics = await http.get(base + "/metrics")
        assert metrics.status_code == 200 and "fieldgate_" in metrics.text


async def test_edge_liveness_fails_while_its_event_loop_is_blocked(tmp_path: Path) -> None:
    port = free_port()
    agent = EdgeAgent(edge_config(tmp_path, port))
    agent.probes = AgentProbes(agent, agent.buffer, agent.uplink, 1000, interval_s=0.1, stale_s=0.5)
    async with agent:
        url = f"http://127.0.0.1:{port}/healthz"

        def status() -> int:
            return httpx.get(url, timeout=5).status_code

        async def alive() -> bool:
            return await asyncio.to_thread(status) == 200

        assert await alive()
        with ThreadPoolExecutor(1) as pool:
            # The point of the test: the agent's loop is stuck in result() (a blocking wait on
            # purpose) until the probe, served by its own thread, says 503 (stale after 0.5 s).
            stuck = pool.submit(eventually_sync, lambda: status() == 503, 30, "/healthz says 503")
            assert stuck.result()
        await eventually(alive, 30, "/healthz 200 again once the loop runs")


async def test_edge_readiness_is_false_when_its_buffer_is_full(tmp_path: Path) -> None:
    port = free_port()
    agent = EdgeAgent(edge_config(tmp_path, port))
    agent.probes = AgentProbes(agent, agent.buffer, agent.uplink, 10)
    async with agent, httpx.AsyncClient(timeout=10) as http:
        pub = AckedPublisher("127.0.0.1", agent.config.mqtt.port)
        await asyncio.to_thread(pub.connect)
        try:
            await asyncio.to_thread(pub.publish_measurements, "default", "full-1", 10)
            assert await asyncio.to_thread(pub.wait_all_acked, 10)
        finally:
            pub.close()
        ready = await http.get(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "buffer full"


async def test_the_admin_can_log_in_as_soon_as_the_rest_api_serves(tmp_path: Path) -> None:
    """``fieldgate up`` and ``fieldgate cloud run api`` make user admin before REST serves: a
    client that logs in the moment the port answers (a readiness probe, a test, an operator's
    script) is not refused. Checked from inside the start, right after the server started."""
    seen: list[int] = []

    class Probe(CloudApp):
        async def _start_run(self, part: Part) -> None:
            await super()._start_run(part)
            if part is not self._rest:
                return
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.post(
                    f"http://127.0.0.1:{self.rest_port}/api/v1/auth/token",
                    data={"username": "admin", "password": "first-login-pw"},
                )
                seen.append(r.status_code)

    async with Probe(cloud_config(tmp_path), admin=True, admin_password="first-login-pw") as app:
        assert seen == [200]
        assert app.generated_admin_password is None  # a given password is used, none generated
    generated = Probe(cloud_config(tmp_path / "second"), admin=True)
    async with generated:
        assert generated.generated_admin_password  # none given, none stored: generated, shown once
