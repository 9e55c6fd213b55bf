"""The cloud and an edge agent as two containers of fieldgate's image, over mutual TLS.

Both hardened as a production runtime would run them: ``--read-only --cap-drop ALL
--security-opt no-new-privileges --user 10001:10001``, with the configuration and certificates
mounted read-only and the state in a bind-mounted directory. The CA and the certificates come
from ``fieldgate pki`` (in the image). A device's MQTT event goes through the edge container into
the cloud container and is stored; a REST command goes back down and is answered. A client
without a certificate is turned away by the cloud's gRPC port.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.containers.podman import HARDENED, Podman, owned_by_fieldgate, unique
from tests.containers.tls import TENANT, Pki, make_pki, read_only_files, run_edge
from tests.e2e.test_end_to_end import events_of, publish_once
from tests.helpers.edge_mqtt import CommandDevice
from tests.helpers.waiting import eventually, free_port, not_yet

pytestmark = [pytest.mark.distributed, pytest.mark.containers, pytest.mark.timeout(1800)]

PASSWORD = "container-split-pw"
EDGE_ID = "edge-box-1"


def run_cloud(podman: Podman, workdir: Path, pki: Pki, *, rest: int, grpc_port: int) -> str:
    """``fieldgate cloud run`` (every service, embedded bus, SQLite) with mutual TLS on gRPC."""
    data = workdir / "cloud-data"
    data.mkdir()
    owned_by_fieldgate(data)
    conf = workdir / "cloud.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "data_dir": "/var/lib/fieldgate/data",
                "rest_host": "127.0.0.1",
                "rest_port": rest,
                "grpc_host": "127.0.0.1",
                "grpc_port": grpc_port,
                "tenants": [{"token": TENANT, "name": "Default tenant", "auto_register": True}],
                "tls": {
                    "cert_file": "/etc/fieldgate/tls/server.pem",
                    "key_file": "/etc/fieldgate/tls/server.key",
                    "client_ca_file": "/etc/fieldgate/tls/ca.pem",
                    "crl_file": "/etc/fieldgate/tls/crl.pem",
                    "require_client_cert": True,
                },
            }
        )
    )
    name = unique("cloud")
    podman.run_detached(
        name,
        [
            *HARDENED,
            "--network", "host",
            "--volume", f"{data}:/var/lib/fieldgate/data",
            "--env", f"FIELDGATE_ADMIN_PASSWORD={PASSWORD}",
            *read_only_files({
                conf: "/etc/fieldgate/cloud.yaml",
                pki.server_cert: "/etc/fieldgate/tls/server.pem",
                pki.server_key: "/etc/fieldgate/tls/server.key",
                pki.ca: "/etc/fieldgate/tls/ca.pem",
                pki.crl: "/etc/fieldgate/tls/crl.pem",
            }),
        ],
        ["cloud", "run", "--config", "/etc/fieldgate/cloud.yaml"],
    )  # fmt: skip
    return name


def grpc_health(target: str, pki: Pki, *, client_cert: bool) -> str:
    """The gRPC health status of the cloud's port through TLS (trusting the test CA), with or
    without the edge's client certificate; the error code's name when the call fails."""
    cert, key = pki.edge(EDGE_ID)
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=key.read_bytes() if client_cert else None,
        certificate_chain=cert.read_bytes() if client_cert else None,
    )
    with grpc.secure_channel(target, creds) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as err:
            return str(err.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def test_cloud_and_edge_containers_over_mutual_tls(podman: Podman, tmp_path: Path) -> None:
    pki = make_pki(podman, tmp_path / "pki", (EDGE_ID,))
    rest, grpc_port, mqtt = free_port(), free_port(), free_port()
    cloud = run_cloud(podman, tmp_path, pki, rest=rest, grpc_port=grpc_port)
    edge = run_edge(podman, tmp_path, pki, EDGE_ID, target=f"127.0.0.1:{grpc_port}", mqtt_port=mqtt)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{rest}", timeout=10) as api:

        async def ready() -> object:
            podman.assert_running(cloud, edge)
            try:
                r = await api.get("/readyz")
            except httpx.TransportError as err:
                return not_yet(repr(err))
            return True if r.status_code == 200 else not_yet(f"{r.status_code} {r.text}")

        await eventually(ready, timeout=120, what="the cloud container's /readyz", interval=0.5)
        assert f"gRPC listening on 127.0.0.1:{grpc_port} (mutual TLS)" in podman.logs(cloud, tail=400)

        # The edge container connected with its certificate.
        r = await api.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
        assert r.status_code == 200, r.text
        api.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

        def edge_connected() -> object:
            podman.assert_running(cloud, edge)
            log = podman.logs(edge, tail=200)
            return "uplink connected" in log or not_yet(log[-500:])

        await eventually(
            lambda: asyncio.to_thread(edge_connected), timeout=60, what="the edge's uplink", interval=0.5
        )

        # Only a client with a certificate of the CA gets through the gRPC port.
        target = f"127.0.0.1:{grpc_port}"
        assert await asyncio.to_thread(grpc_health, target, pki, client_cert=True) == "SERVING"
        assert await asyncio.to_thread(grpc_health, target, pki, client_cert=False) == "UNAVAILABLE"

        # Device → edge container's broker → mutual TLS → cloud container → store.
        await asyncio.to_thread(
            publish_once,
            mqtt,
            f"fieldgate/{TENANT}/devices/box-dev-1/events",
            {"type": "measurement", "values": {"temperature": 19.5}},
        )

        async def stored() -> list[dict[str, Any]]:
            podman.assert_running(cloud, edge)
            return [e for e in await events_of(api, "box-dev-1") if e["type"] == "measurement"]

        events = await eventually(stored, timeout=60, what="the measurement stored by the cloud container")
        assert events[0]["values"] == {"temperature": 19.5}

        # A command back down: REST → cloud → mutual TLS → edge → the device, and its answer up.
        device = CommandDevice(mqtt, TENANT, "box-dev-1")
        await asyncio.to_thread(device.start)
        try:
            r = await api.post("/api/v1/devices/box-dev-1/commands", json={"command": "ping", "params": {}})
            assert r.status_code == 201, r.text
            invocation = r.json()["id"]

            async def answered() -> dict[str, Any] | object:
                body: dict[str, Any] = (await api.get(f"/api/v1/invocations/{invocation}")).json()
                return body if body["status"] == "answered" else not_yet(body)

            final = await eventually(answered, timeout=60, what="the ping answered through the containers")
            assert final["response"] == {"pong": True}
            assert device.received[0]["command"] == "ping"
        finally:
            device.stop()

    for name in (cloud, edge):
        assert podman.inspect(name, "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}") == "10001:10001 true"
        assert "CapEff:\t0000000000000000" in podman("exec", name, "cat", "/proc/1/status").stdout
        # The root filesystem refuses writes, even to the image's own state directory.
        denied = podman("exec", name, "touch", "/var/lib/fieldgate/x", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied
