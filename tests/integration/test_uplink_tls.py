"""Mutual TLS between a real uplink and a real cloud (CloudApp: ingest, pipeline, SQLite event
store) on 127.0.0.1, with certificates of a CA made by fieldgate.pki: who gets in, who does
not, and what a certificate lets an edge send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.config import CloudConfig, TenantConfig, TlsConfig
from fieldgate.cloud.ids import event_id
from fieldgate.edge.buffer import EventBuffer
from fieldgate.edge.config import BufferConfig, UplinkConfig
from fieldgate.edge.uplink import CONNECT_METHOD, Uplink
from fieldgate.pki import CertificateAuthority
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.waiting import eventually, free_port, never

pytestmark = pytest.mark.integration

FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "batch_max_delay_ms": 2.0}


def events(prefix: str, n: int, tenant: str = "default", device: str = "dev-1") -> list[pb.Event]:
    out = []
    for i in range(n):
        e = pb.Event(tenant=tenant, device=device, alternate_id=f"{prefix}-{i}")
        e.measurement.values["n"] = float(i)
        out.append(e)
    return out


@dataclass
class Pki:
    ca: CertificateAuthority
    other: CertificateAuthority  # a CA the cloud does not trust

    def uplink(
        self, target: str, edge: str | None, *, ca: CertificateAuthority | None = None, **kw: object
    ) -> UplinkConfig:
        issuer = ca or self.ca
        files: dict[str, object] = {"ca_file": self.ca.cert_path}
        if edge is not None:
            cert, key = issuer.edge_paths(edge)
            files |= {"cert_file": cert, "key_file": key}
        return UplinkConfig.model_validate({"target": target, **FAST, **files, **kw})


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority(tmp_path / "pki")
    ca.init(days=2)
    ca.issue_server(["127.0.0.1", "localhost"])
    ca.issue_edge("edge-a", ["default"])
    ca.issue_edge("edge-b", ["beta"])
    ca.issue_edge("edge-r", ["default"])
    other = CertificateAuthority(tmp_path / "other")
    other.init(days=2)
    other.issue_edge("edge-a", ["default"])  # the right name, the wrong CA
    return Pki(ca, other)


def cloud_config(tmp_path: Path, pki: Pki, port: int = 0) -> CloudConfig:
    return CloudConfig(
        data_dir=tmp_path / "cloud",
        grpc_port=port,
        rest_port=0,
        tenants=(TenantConfig(token="default"), TenantConfig(token="beta")),
        tls=TlsConfig(
            cert_file=pki.ca.directory / "server.pem",
            key_file=pki.ca.directory / "server.key",
            client_ca_file=pki.ca.cert_path,
            crl_file=pki.ca.crl_path,
        ),
    )


@pytest.fixture
async def cloud(tmp_path: Path, pki: Pki) -> AsyncIterator[CloudApp]:
    async with CloudApp(cloud_config(tmp_path, pki)) as app:
        yield app


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[EventBuffer]:
    async with EventBuffer(BufferConfig(), tmp_path / "buffer.db") as buf:
        yield buf


async def no_commands(_: svc.CommandDown) -> None:
    raise AssertionError("no command expected")


def target(app: CloudApp) -> str:
    return f"127.0.0.1:{app.grpc_port}"


async def stored(app: CloudApp, tenant: str, device: str, alternate_ids: list[str]) -> list[bool]:
    return [
        await app.parts.event_store.get_event(tenant, event_id(tenant, device, alt)) is not None
        for alt in alternate_ids
    ]


async def wait_stored(app: CloudApp, tenant: str, device: str, alternate_ids: list[str]) -> None:
    async def all_stored() -> bool:
        return all(await stored(app, tenant, device, alternate_ids))

    await eventually(all_stored, 30, f"{tenant}/{device}: all of {len(alternate_ids)} events stored")


async def test_mutual_tls_edge_connects_and_its_events_are_stored(
    cloud: CloudApp, pki: Pki, buffer: EventBuffer
) -> None:
    evs = events("a", 50)
    await buffer.append(evs)
    uplink = Uplink(pki.uplink(target(cloud), "edge-a"), "edge-a", buffer, no_commands)
    await uplink.start()
    try:
        assert await uplink.wait_connected(10)
        await eventually(lambda: buffer.depth == 0, 20, "buffer acked")
        await wait_stored(cloud, "default", "dev-1", [e.alternate_id for e in evs])
        assert cloud.ingest is not None and cloud.ingest.stats.streams_unauthenticated == 0
        assert uplink.stats.events_refused == 0
    finally:
        await uplink.stop()


async def test_a_server_name_override_checks_the_certificate_against_that_name(
    cloud: CloudApp, pki: Pki, buffer: EventBuffer
) -> None:
    """Dialled by an address its certificate does not name, the cloud is refused by the edge
    unless ``server_name`` names a SAN of the certificate."""
    name = f"localhost:{cloud.grpc_port}"  # "localhost" is a SAN; so is 127.0.0.1
    good = Uplink(pki.uplink(name, "edge-a", server_name="localhost"), "edge-a", buffer, no_commands)
    await good.start()
    try:
        assert await good.wait_connected(10)
    finally:
        await good.stop()
    bad = Uplink(
        pki.uplink(target(cloud), "edge-a", server_name="cloud.example.org"), "edge-a", buffer, no_commands
    )
    await bad.start()
    try:
        assert not await bad.wait_connected(1.5)
        assert "UNAVAILABLE" in bad.stats.last_error
    finally:
        await bad.stop()


@pytest.mark.parametrize("who", ["no certificate", "another CA", "plaintext"])
async def test_an_edge_without_a_trusted_certificate_is_refused(
    cloud: CloudApp, pki: Pki, buffer: EventBuffer, who: str
) -> None:
    await buffer.append(events("x", 5))
    if who == "no certificate":
        config = pki.uplink(target(cloud), None)
    elif who == "another CA":
        config = pki.uplink(target(cloud), "edge-a", ca=pki.other)
    else:
        config = UplinkConfig.model_validate({"target": target(cloud), **FAST})
    uplink = Uplink(config, "edge-a", buffer, no_commands)
    await uplink.start()
    try:
        assert not await uplink.wait_connected(2.0)
        # The TLS handshake fails: the stream never reaches ingest.
        assert uplink.stats.sessions == 0 and uplink.stats.reconnects >= 2
        assert "UNAVAILABLE" in uplink.stats.last_error
        assert cloud.ingest is not None and cloud.ingest.stats.streams_total == 0
        assert buffer.depth == 5
        assert await stored(cloud, "default", "dev-1", ["x-0"]) == [False]
    finally:
        await uplink.stop()


async def test_a_hello_naming_another_edge_is_refused(cloud: CloudApp, pki: Pki, buffer: EventBuffer) -> None:
    await buffer.append(events("h", 3))
    # edge-a's certificate, but the agent says it is edge-r (whose routes and stream it could take).
    uplink = Uplink(pki.uplink(target(cloud), "edge-a"), "edge-r", buffer, no_commands)
    await uplink.start()
    try:
        await eventually(lambda: uplink.stats.auth_refusals >= 1, 10, "refusal")
        assert uplink.stats.last_error.startswith("PERMISSION_DENIED")
        assert "edge-a" in uplink.stats.last_error
        assert not uplink.connected and uplink.stats.sessions == 0
        assert cloud.ingest is not None and cloud.ingest.stats.streams_unauthenticated >= 1
        assert cloud.parts.sessions.connected_edges == []
        assert buffer.depth == 3
    finally:
        await uplink.stop()


async def test_a_certificate_revoked_after_it_connected_is_refused_on_reconnect(
    cloud: CloudApp, pki: Pki, buffer: EventBuffer
) -> None:
    before = events("before", 10)
    await buffer.append(before)
    uplink = Uplink(pki.uplink(target(cloud), "edge-r"), "edge-r", buffer, no_commands)
    await uplink.start()
    try:
        assert await uplink.wait_connected(10)
        await wait_stored(cloud, "default", "dev-1", [e.alternate_id for e in before])
    finally:
        await uplink.stop()

    revoked = pki.ca.revoke(edge_id="edge-r")  # rewrites crl.pem; the cloud is not restarted
    assert len(revoked) == 1
    after = events("after", 5)
    await buffer.append(after)
    uplink = Uplink(pki.uplink(target(cloud), "edge-r"), "edge-r", buffer, no_commands)
    await uplink.start()
    try:
        await eventually(lambda: uplink.stats.auth_refusals >= 1, 10, "refusal")
        assert uplink.stats.last_error.startswith("UNAUTHENTICATED")
        assert "revoked" in uplink.stats.last_error
        assert uplink.stats.sessions == 0

        async def any_stored() -> bool:
            return any(await stored(cloud, "default", "dev-1", [e.alternate_id for e in after]))

        await never(any_stored, within=0.5, what="an event of the revoked edge stored")
        assert buffer.depth == 5
    finally:
        await uplink.stop()
    # Another edge of the same CA is unaffected.
    other = Uplink(pki.uplink(target(cloud), "edge-a"), "edge-a", buffer, no_commands)
    await other.start()
    try:
        assert await other.wait_connected(10)
    finally:
        await other.stop()


async def test_an_edge_of_tenant_b_cannot_send_or_route_for_tenant_a(
    cloud: CloudApp, pki: Pki, buffer: EventBuffer
) -> None:
    theirs = events("spoof", 7, tenant="default", device="a-dev")
    ours = events("own", 4, tenant="beta", device="b-dev")
    await buffer.append(theirs + ours)
    uplink = Uplink(pki.uplink(target(cloud), "edge-b"), "edge-b", buffer, no_commands)
    await uplink.start()
    try:
        assert await uplink.wait_connected(10)
        await eventually(lambda: buffer.depth == 0, 20, "buffer acked")
        await wait_stored(cloud, "beta", "b-dev", [e.alternate_id for e in ours])
        assert cloud.ingest is not None
        assert cloud.ingest.stats.rejected_foreign_tenant == 7
        assert uplink.stats.events_refused == 7  # reported in BatchAck.rejected
        assert await stored(cloud, "default", "a-dev", [e.alternate_id for e in theirs]) == [False] * 7
        assert await cloud.parts.registry.get_device("default", "a-dev") is None
        # A command status naming tenant A's device must not make this edge its route.
        await uplink.send_status(
            svc.CommandStatusUpdate(
                tenant="default", device="a-dev", invocation="inv-1", status=svc.COMMAND_STATUS_DELIVERED
            )
        )
        await buffer.append(
            events("more", 1, tenant="beta", device="b-dev")
        )  # a later ack confirms it was read
        await eventually(lambda: buffer.depth == 0, 20, "buffer acked")
        assert cloud.ingest.stats.statuses_foreign_tenant == 1
        assert cloud.parts.sessions.edge_of("default", "a-dev") is None
        assert cloud.parts.sessions.edge_of("beta", "b-dev") == "edge-b"
    finally:
        await uplink.stop()


async def test_the_backoff_probe_works_over_tls(tmp_path: Path, pki: Pki, buffer: EventBuffer) -> None:
    """While the uplink backs off (a long backoff), its TLS probe notices the cloud coming up
    and the session starts long before the backoff ends."""
    port = free_port()
    config = pki.uplink(
        f"127.0.0.1:{port}", "edge-a", backoff_initial_s=30.0, backoff_max_s=30.0, probe_interval_s=0.2
    )
    await buffer.append(events("p", 3))
    uplink = Uplink(config, "edge-a", buffer, no_commands)
    await uplink.start()
    try:
        await eventually(lambda: uplink.stats.reconnects >= 1, 10, "first failure")
        assert uplink.stats.last_backoff_s >= 15.0  # equal jitter: at least half the cap
        async with CloudApp(cloud_config(tmp_path, pki, port)) as app:
            # Connected while at least ~10 s of that wait remain: the probe ended it.
            assert await uplink.wait_connected(10)
            assert uplink.stats.probe_shortcuts >= 1
            await eventually(lambda: buffer.depth == 0, 20, "buffer acked")
            await wait_stored(app, "default", "dev-1", ["p-0", "p-1", "p-2"])
    finally:
        await uplink.stop()


async def test_no_probe_hammering_after_an_auth_refusal(
    cloud: CloudApp, pki: Pki, buffer: EventBuffer
) -> None:
    """A refused edge waits its whole backoff (the probe would succeed at once and retry)."""
    config = pki.uplink(
        target(cloud), "edge-a", backoff_initial_s=0.4, backoff_max_s=0.4, probe_interval_s=0.05
    )
    uplink = Uplink(config, "edge-r", buffer, no_commands)  # Hello names another edge
    loop = asyncio.get_running_loop()
    started = loop.time()
    await uplink.start()
    try:
        await eventually(lambda: uplink.stats.auth_refusals >= 4, 30, "four refusals")
        # Three whole waits of 0.2-0.4 s between them; a probe shortcut would take milliseconds.
        assert loop.time() - started >= 0.6
        assert uplink.stats.probe_shortcuts == 0
    finally:
        await uplink.stop()


async def test_a_raw_stream_with_the_right_certificate_but_no_hello_is_still_a_protocol_error(
    cloud: CloudApp, pki: Pki
) -> None:
    cert, key = pki.ca.edge_paths("edge-a")
    creds = grpc.ssl_channel_credentials(pki.ca.cert_path.read_bytes(), key.read_bytes(), cert.read_bytes())
    async with grpc.aio.secure_channel(target(cloud), creds) as channel:
        call = channel.stream_stream(
            CONNECT_METHOD, svc.EdgeMessage.SerializeToString, svc.CloudMessage.FromString
        )(None)
        await call.write(svc.EdgeMessage(batch=svc.EventBatchUp(seq=1)))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
