"""``podman kube play`` of the chart: every service's Deployment, rendered by helm with a user's
values, run from fieldgate's image against the session's real Kafka, Cassandra and ZooKeeper.

The chart is rendered as a user would for their clusters (the brokers' and contact points'
addresses, one replica each, a unique release name and key prefixes, the TLS Secret made by the
chart from ``fieldgate pki`` files). What podman 4.3 cannot play as rendered is transformed in
tests/containers/kube.py, each change with its reason; the chart is not bent to podman. Each
pod must become ready (its /readyz, checked by the test since podman runs no probes); then an
edge agent container dials the played ingest over mutual TLS, a device's event is stored in
Cassandra through Kafka and read back through the played api, and a command goes back down and
is answered.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.admin import AdminClient

from fieldgate.cloud.composition import SERVICES
from fieldgate.devservers import CassandraServer, KafkaServer, ZooKeeperServer
from tests.containers.kube import Playable, for_podman
from tests.containers.podman import STOP_TIMEOUT_S, Podman
from tests.containers.tls import TENANT, Pki, make_pki, run_edge
from tests.deploy import manifests as mf
from tests.e2e.test_end_to_end import events_of, publish_once
from tests.helpers.edge_mqtt import CommandDevice
from tests.helpers.waiting import eventually, free_port, not_yet

pytestmark = [pytest.mark.distributed, pytest.mark.containers, pytest.mark.timeout(1800)]

PASSWORD = "container-kube-pw"
EDGE_ID = "edge-kube-1"
# Seven Python services starting at once beside three JVMs on two cores; then a new tenant's
# topics and keyspace are made on first use, and consumers find new topics on a metadata refresh.
READY_S = 240
ARRIVAL_S = 120


def mebibytes(quantity: str) -> int:
    """A Kubernetes memory quantity in Mi (what the chart uses) as bytes."""
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2]) * 2**20


def render(
    helm: Path,
    podman: Podman,
    pki: Pki,
    *,
    release: str,
    kafka: KafkaServer,
    cassandra: CassandraServer,
    zookeeper: ZooKeeperServer,
    rest: int,
    grpc_port: int,
) -> list[mf.Manifest]:
    """The chart with the values a user would give it for these clusters."""
    repository, tag = podman.image.rsplit(":", 1)
    run = release[-8:]
    sets = [
        f"image.repository={repository}",
        f"image.tag={tag}",
        f"config.kafka.bootstrap={kafka.bootstrap}",
        f"config.kafka.topicPrefix=kube{run}",
        "config.kafka.partitions=2",
        "config.kafka.replication=1",
        f"config.cassandra.hosts={{{cassandra.host}}}",
        f"config.cassandra.port={cassandra.port}",
        "config.cassandra.replication=1",
        f"config.cassandra.keyspacePrefix=k{run}",
        "config.zookeeper.enabled=true",
        f"config.zookeeper.hosts={zookeeper.hosts}",
        f"config.zookeeper.instance=kube{run}",
        f"auth.adminPassword={PASSWORD}",
        f"ports.rest={rest}",
        f"ports.grpc={grpc_port}",
        "tls.existingSecret=",
        *(f"services.{service}.replicas=1" for service in SERVICES),
    ]
    set_files = [
        f"tls.pem.cert={pki.server_cert}",
        f"tls.pem.key={pki.server_key}",
        f"tls.pem.ca={pki.ca}",
        f"tls.pem.crl={pki.crl}",
    ]
    return mf.helm_template(helm, sets=sets, set_files=set_files, release=release)


def play(podman: Podman, playable: Playable, workdir: Path) -> None:
    """Create the secrets and play the Deployments; everything is the test's (removed by name)."""
    podman.pods += [playable.pod(s) for s in playable.services]
    podman.pod_containers += [playable.container(s) for s in playable.services]
    podman.volumes += playable.volumes
    for name, content in playable.secrets.items():
        podman.secrets.append(name)
        podman("secret", "create", name, "-", input=content)
    deployments = workdir / "deployments.yaml"
    deployments.write_text(playable.yaml())
    configmaps = workdir / "configmaps.yaml"
    configmaps.write_text(playable.configmap_yaml())
    podman("kube", "play", "--configmap", configmaps, deployments, timeout=300)


async def all_ready(podman: Podman, playable: Playable) -> None:
    """Every played pod's /readyz answers 200 (the readiness probe the kubelet would run)."""
    containers = [playable.container(s) for s in playable.services]
    async with httpx.AsyncClient(timeout=5) as http:

        async def ready() -> object:
            await asyncio.to_thread(podman.assert_running, *containers)
            waiting = {}
            for service, port in playable.health_ports.items():
                try:
                    r = await http.get(f"http://127.0.0.1:{port}/readyz")
                except httpx.TransportError as err:
                    waiting[service] = repr(err)
                    continue
                if r.status_code != 200:
                    waiting[service] = f"{r.status_code} {r.text[:200]}"
            return True if not waiting else not_yet(waiting)

        await eventually(ready, timeout=READY_S, what="every played pod's /readyz", interval=1.0)


async def test_the_charts_deployments_play_against_real_kafka_and_cassandra(
    podman: Podman,
    tmp_path: Path,
    helm: Path,
    kafka: KafkaServer,
    cassandra: CassandraServer,
    zookeeper: ZooKeeperServer,
) -> None:
    release = f"fgt{uuid.uuid4().hex[:8]}"
    pki = make_pki(podman, tmp_path / "pki", (EDGE_ID,))
    rest, grpc_port, mqtt = free_port(), free_port(), free_port()
    rendered = render(
        helm,
        podman,
        pki,
        release=release,
        kafka=kafka,
        cassandra=cassandra,
        zookeeper=zookeeper,
        rest=rest,
        grpc_port=grpc_port,
    )
    playable = for_podman(rendered, {service: free_port() for service in SERVICES})
    # Every service of the code has its Deployment, and each is played.
    assert sorted(playable.services) == sorted(SERVICES)

    play(podman, playable, tmp_path)
    await all_ready(podman, playable)
    topics = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10).topics
    assert any(t.startswith(f"kube{release[-8:]}.") for t in topics), sorted(topics)

    edge = run_edge(podman, tmp_path, pki, EDGE_ID, target=f"127.0.0.1:{grpc_port}", mqtt_port=mqtt)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rest}", timeout=10) as api:
        r = await api.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
        assert r.status_code == 200, r.text
        api.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

        def edge_connected() -> object:
            podman.assert_running(edge)
            log = podman.logs(edge, tail=200)
            return "uplink connected" in log or not_yet(log[-500:])

        await eventually(
            lambda: asyncio.to_thread(edge_connected),
            timeout=60,
            what="the edge's uplink to ingest",
            interval=0.5,
        )
        await asyncio.to_thread(
            publish_once,
            mqtt,
            f"fieldgate/{TENANT}/devices/kube-dev-1/events",
            {"type": "measurement", "values": {"temperature": 17.5}},
        )

        async def stored() -> list[dict[str, Any]]:
            return [e for e in await events_of(api, "kube-dev-1") if e["type"] == "measurement"]

        events = await eventually(
            stored,
            timeout=ARRIVAL_S,
            what="the event through ingest, Kafka, the stages and Cassandra",
            interval=0.5,
        )
        assert events[0]["values"] == {"temperature": 17.5}

        device = CommandDevice(mqtt, TENANT, "kube-dev-1")
        await asyncio.to_thread(device.start)
        try:
            r = await api.post("/api/v1/devices/kube-dev-1/commands", json={"command": "ping", "params": {}})
            assert r.status_code == 201, r.text
            invocation = r.json()["id"]

            async def answered() -> dict[str, Any] | object:
                body: dict[str, Any] = (await api.get(f"/api/v1/invocations/{invocation}")).json()
                return body if body["status"] == "answered" else not_yet(body)

            final = await eventually(
                answered, timeout=ARRIVAL_S, what="the ping answered through the played pods"
            )
            assert final["response"] == {"pong": True}
        finally:
            device.stop()

    # The pods ran as the chart says: the image's user, read-only root, no capabilities, the
    # memory limit; ingest's replica id from the downward API (its pod's name).
    for service in playable.services:
        container = playable.container(service)
        user, read_only, memory = podman.inspect(
            container, "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.Memory}}"
        ).split()
        assert (user.split(":")[0], read_only) == ("10001", "true"), (service, user, read_only)
        assert int(memory) == mebibytes(playable.limit(service, "memory")), (service, memory)
        status = podman("exec", container, "cat", "/proc/1/status").stdout
        assert "CapEff:\t0000000000000000" in status, (service, status)
    environ = podman("exec", playable.container("ingest"), "cat", "/proc/1/environ").stdout.split("\0")
    assert f"FIELDGATE_CLOUD__REPLICA_ID={playable.pod('ingest')}" in environ, environ

    # SIGTERM, as the kubelet sends it: every service drains and exits 0 within the grace
    # period (podman's --time here: podman 4.3 does not take terminationGracePeriodSeconds).
    pods = [playable.pod(s) for s in playable.services]
    podman("pod", "stop", "--time", str(STOP_TIMEOUT_S), *pods, timeout=STOP_TIMEOUT_S * len(pods) + 60)
    states = {
        s: podman.inspect(playable.container(s), "{{.State.Status}} {{.State.ExitCode}}") for s in SERVICES
    }
    assert set(states.values()) == {"exited 0"}, states
