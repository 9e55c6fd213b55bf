"""Device credentials, topic ACLs, enrollment and TLS on the embedded broker (``mqtt.auth``).

A real EdgeAgent (embedded amqtt, durable buffer, uplink to the test cloud) and real paho
clients: what the cloud receives is what a forger could or could not inject.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fieldgate.edge.adapters.mqtt import EmbeddedMqttAdapter, build_mqtt_adapter
from fieldgate.edge.adapters.mqtt.credentials import CredentialStore, new_identity
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.errors import ConfigError
from fieldgate.protocol import topics
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.edge_cloud import TestCloud
from tests.helpers.mqtt_devices import Device, measurement
from tests.helpers.mqtt_sinks import OnlineRecorder, RecordingSink
from tests.helpers.waiting import free_port

pytestmark = pytest.mark.integration

SECRET = "tenant-enrollment-secret-1"
PASSWORDS = {"dev-a": "password-of-dev-a", "dev-b": "password-of-dev-b", "gw-1": "password-of-gw-1"}


def write_credentials(path: Path) -> None:
    store = CredentialStore(path)
    store.add(new_identity("dev-a", "default", "dev-a", PASSWORDS["dev-a"], mosquitto=False))
    store.add(new_identity("dev-b", "default", "dev-b", PASSWORDS["dev-b"], mosquitto=False))
    store.add(new_identity("gw-1", "default", "gw-1", PASSWORDS["gw-1"], devices=["sim-*"], mosquitto=False))
    store.save()


def auth_config(credentials: Path, **extra: Any) -> dict[str, Any]:
    return {"mode": "password", "credentials_file": credentials, **extra}


class Client(Device):
    """A paho device that logs in and records CONNACK and SUBACK codes."""

    def __init__(self, port: int, username: str | None, password: str | None, **kwargs: Any) -> None:
        super().__init__("127.0.0.1", port, **kwargs)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connack: Any = None
        self._connack = threading.Event()
        self.suback_codes: dict[int, list[int]] = {}
        self.client.on_connect = self._record_connect
        self.client.on_subscribe = self._record_subscribe

    def _record_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        self._connack.set()
        if not reason.is_failure:
            self._connected.set()

    def _record_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self.suback_codes[mid] = [c.value for c in codes]
        self._subacks.setdefault(mid, threading.Event()).set()

    async def login(self) -> Any:
        """Connect and return the CONNACK reason (success or not)."""

        def run() -> None:
            self.client.connect(self.host, self.port, keepalive=30)
            self.client.loop_start()
            if not self._connack.wait(10):
                raise TimeoutError("no CONNACK")

        await asyncio.to_thread(run)
        return self.connack

    async def subscribe_code(self, topic: str) -> int:
        rc, mid = self.client.subscribe(topic, 1)
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        event = self._subacks.setdefault(mid, threading.Event())
        assert await asyncio.to_thread(event.wait, 10), f"no SUBACK for {topic}"
        return self.suback_codes[mid][0]


@dataclass
class Harness:
    agent: EdgeAgent
    cloud: TestCloud
    port: int
    credentials: Path

    @property
    def stats(self) -> Any:
        adapter = self.agent.adapters[0]
        assert isinstance(adapter, EmbeddedMqttAdapter)
        return adapter.stats

    async def client(self, username: str | None, password: str | None = None) -> Client:
        dev = Client(self.port, username, password)
        reason = await dev.login()
        assert not reason.is_failure, f"{username}: {reason}"
        return dev

    def devices_seen(self) -> set[str]:
        """Devices the cloud got events of, not counting link changes (a login makes them)."""
        return {
            e.device
            for e in self.cloud.events.values()
            if e.state_change.current not in ("connected", "disconnected")
        }


async def start_agent(tmp_path: Path, cloud: TestCloud, **auth_extra: Any) -> Harness:
    credentials = tmp_path / "edge" / "mqtt-credentials.yaml"
    write_credentials(credentials)
    port = free_port()
    config = EdgeConfig(
        edge_id="edge-auth",
        data_dir=tmp_path / "edge",
        mqtt=MqttConfig(port=port, auth=auth_config(Path("mqtt-credentials.yaml"), **auth_extra)),
        uplink=UplinkConfig(
            target=cloud.target, batch_max_delay_ms=2, backoff_initial_s=0.05, backoff_max_s=0.5
        ),
    )
    agent = EdgeAgent(config)
    await agent.start()
    return Harness(agent, cloud, port, credentials)


@pytest.fixture
async def cloud() -> AsyncIterator[TestCloud]:
    async with TestCloud() as c:
        yield c


@pytest.fixture
async def harness(tmp_path: Path, cloud: TestCloud) -> AsyncIterator[Harness]:
    h = await start_agent(tmp_path, cloud, enrollment_secrets={"default": SECRET})
    try:
        yield h
    finally:
        await h.agent.stop()


async def test_wrong_credentials_are_refused_with_connack_not_authorized(harness: Harness) -> None:
    for username, password in [("dev-a", "wrong"), ("nobody", "whatever"), (None, None), ("dev-a", "")]:
        dev = Client(harness.port, username, password)
        reason = await dev.login()
        await dev.close()
        assert reason.is_failure and reason.value == 135, (username, reason)  # 3.1.1 code 5: not authorized
    ok = await harness.client("dev-a", PASSWORDS["dev-a"])
    await ok.close()
    assert harness.stats.auth_refused == {"password": 2, "unknown_user": 1, "anonymous": 1}
    assert harness.stats.auth_accepted == 1


async def test_device_cannot_publish_as_another_nor_read_its_commands(harness: Harness) -> None:
    a = await harness.client("dev-a", PASSWORDS["dev-a"])
    try:
        # Forgeries: B's topics, B's protobuf topic, another tenant, a SiteWhere payload naming B.
        await a.publish_acked(topics.events_topic("default", "dev-b"), measurement(666.0, "forged-1"))
        await a.publish_acked("fieldgate/default/devices/dev-b/events/pb", b"\x00")
        await a.publish_acked(topics.events_topic("acme", "dev-a"), measurement(666.0, "forged-2"))

        def sitewhere(device: str, ident: str) -> dict[str, Any]:
            request = {"name": "t", "value": 1.0, "alternateId": ident}
            return {"deviceToken": device, "type": "DeviceMeasurement", "request": request}

        await a.publish_acked("SiteWhere/default/input/json", sitewhere("dev-b", "forged-3"))
        # Its own topics work.
        await a.publish_acked(topics.events_topic("default", "dev-a"), measurement(1.0, "own-1"))
        await a.publish_acked("SiteWhere/default/input/json", sitewhere("dev-a", "own-2"))
        # Subscriptions to B's commands (exact and wildcard) are refused with SUBACK 0x80.
        assert await a.subscribe_code(topics.commands_topic("default", "dev-b")) == 0x80
        assert await a.subscribe_code("fieldgate/default/devices/+/commands") == 0x80
        assert await a.subscribe_code("fieldgate/#") == 0x80
        assert await a.subscribe_code(topics.commands_topic("default", "dev-a")) == 1

        await harness.cloud.wait_until(lambda: {"own-1", "own-2"} <= harness.cloud.unique_ids(), 20)
        # A command for B reaches B, never A.
        down = svc.CommandDown(
            tenant="default",
            device="dev-b",
            invocation=pb.CommandInvocation(invocation="inv-b-1", command="ping", params_json="{}"),
        )
        await harness.cloud.wait_for_session()
        await harness.cloud.send_command(down)
        b = await harness.client("dev-b", PASSWORDS["dev-b"])
        try:
            await b.subscribe(topics.commands_topic("default", "dev-b"))
            topic, payload = await b.next_message()
            assert topic == topics.commands_topic("default", "dev-b")
            assert json.loads(payload)["invocation"] == "inv-b-1"
        finally:
            await b.close()
        assert a.messages.empty()
    finally:
        await a.close()
    assert harness.devices_seen() == {"dev-a"}
    assert not {"forged-1", "forged-2", "forged-3"} & harness.cloud.unique_ids()
    assert harness.agent.buffer.failed_depth == 0  # not even the failed-decode lane
    assert harness.stats.messages_denied == {"publish": 3, "payload": 1, "subscribe": 3}
    metrics = harness.agent.metrics.render()
    assert 'fieldgate_adapter_messages_denied_total{adapter="mqtt-embedded",kind="payload"} 1.0' in metrics


async def test_gateway_acts_for_the_devices_its_entry_lists(harness: Harness) -> None:
    gw = await harness.client("gw-1", PASSWORDS["gw-1"])
    try:
        await gw.publish_acked(topics.events_topic("default", "sim-7"), measurement(1.0, "gw-sim-7"))
        await gw.publish_acked(topics.events_topic("default", "gw-1"), measurement(1.0, "gw-own"))
        await gw.publish_acked(topics.events_topic("default", "dev-a"), measurement(1.0, "gw-forged"))
        assert await gw.subscribe_code(topics.commands_topic("default", "sim-7")) == 1
        assert await gw.subscribe_code(topics.commands_topic("default", "dev-a")) == 0x80
        await harness.cloud.wait_until(lambda: {"gw-sim-7", "gw-own"} <= harness.cloud.unique_ids(), 20)
    finally:
        await gw.close()
    assert "gw-forged" not in harness.cloud.unique_ids()
    assert harness.devices_seen() == {"sim-7", "gw-1"}


async def test_enrollment_with_the_tenant_secret_issues_credentials_once(harness: Harness) -> None:
    bad = Client(harness.port, "enroll:default:new-1", "not-the-secret")
    assert (await bad.login()).is_failure
    await bad.close()
    taken = Client(harness.port, "enroll:default:dev-a", SECRET)  # has credentials: no takeover
    assert (await taken.login()).is_failure
    await taken.close()

    enrolling = await harness.client("enroll:default:new-1", SECRET)
    try:
        # The enrolling connection can do nothing but fetch its credentials.
        await enrolling.publish_acked(topics.events_topic("default", "new-1"), measurement(1.0, "too-early"))
        assert await enrolling.subscribe_code(topics.commands_topic("default", "new-1")) == 0x80
        assert await enrolling.subscribe_code("fieldgate/default/devices/new-1/credentials") == 1
        topic, payload = await enrolling.next_message()
    finally:
        await enrolling.close()
    issued = json.loads(payload)
    assert topic == "fieldgate/default/devices/new-1/credentials"
    assert issued["username"] == "default/new-1"
    stored = CredentialStore.load(harness.credentials).get("default/new-1")
    assert stored is not None and stored.enrolled and not stored.confirmed
    assert issued["password"] not in harness.credentials.read_text()

    dev = await harness.client(issued["username"], issued["password"])
    try:
        await dev.publish_acked(topics.events_topic("default", "new-1"), measurement(2.0, "enrolled-1"))
        await dev.publish_acked(topics.events_topic("default", "dev-a"), measurement(2.0, "enrolled-forged"))
        await harness.cloud.wait_until(lambda: "enrolled-1" in harness.cloud.unique_ids(), 20)
    finally:
        await dev.close()
    assert not {"too-early", "enrolled-forged"} & harness.cloud.unique_ids()
    confirmed = CredentialStore.load(harness.credentials).get("default/new-1")
    assert confirmed is not None and confirmed.confirmed
    again = Client(harness.port, "enroll:default:new-1", SECRET)  # confirmed: the secret no longer opens it
    assert (await again.login()).is_failure
    await again.close()
    assert harness.stats.enrollments == 1
    assert harness.stats.auth_refused["enrollment"] == 3


async def test_credentials_added_while_running_take_effect(harness: Harness) -> None:
    store = CredentialStore.load(harness.credentials)
    store.add(new_identity("late-1", "default", "late-1", "password-of-late-1", mosquitto=False))
    store.save()
    dev = await harness.client("late-1", "password-of-late-1")
    await dev.close()
    store.remove("late-1")
    store.save()
    gone = Client(harness.port, "late-1", "password-of-late-1")
    assert (await gone.login()).is_failure
    await gone.close()


async def test_bad_credentials_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "creds.yaml"
    bad.write_text("identities:\n  - username: x\n    device: d\n    password_hash: '$argon2id$nope'\n")
    adapter = build_mqtt_adapter(MqttConfig(port=free_port(), auth=auth_config(bad)), tenants=["default"])
    with pytest.raises(ConfigError) as err:
        await adapter.start(RecordingSink(), OnlineRecorder())
    message = str(err.value)
    assert "mqtt.auth.credentials_file" in message
    assert "identities.0.tenant: Field required" in message
    assert "identities.0.password_hash" in message
    missing = build_mqtt_adapter(
        MqttConfig(port=free_port(), auth=auth_config(tmp_path / "absent.yaml")),
        tenants=["default"],
    )
    with pytest.raises(ConfigError, match=r"mqtt\.auth\.credentials_file: .*absent\.yaml: cannot read"):
        await missing.start(RecordingSink(), OnlineRecorder())


# ------------------------------------------------------------------------------------- TLS


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test MQTT CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


async def test_tls_listener_with_passwords(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    credentials = tmp_path / "creds.yaml"
    write_credentials(credentials)
    port, tls_port = free_port(), free_port()
    config = MqttConfig(
        port=port,
        auth=auth_config(credentials),
        tls={"enabled": True, "port": tls_port, "certfile": cert, "keyfile": key},
    )
    adapter = build_mqtt_adapter(config, tenants=["default"])
    sink = RecordingSink()
    await adapter.start(sink, OnlineRecorder())
    try:
        dev = Client(tls_port, "dev-a", PASSWORDS["dev-a"])
        dev.host = "localhost"
        dev.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        assert not (await dev.login()).is_failure
        await dev.publish_acked(topics.events_topic("default", "dev-a"), measurement(3.0, "over-tls"))
        await dev.close()
        assert sink.alternate_ids() == ["over-tls"]

        # A client that does not trust the CA cannot complete the handshake.
        untrusting = mqtt.Client(CallbackAPIVersion.VERSION2)
        untrusting.tls_set(cert_reqs=ssl.CERT_REQUIRED)  # the system's roots only
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(untrusting.connect, "localhost", tls_port)
        # Plain MQTT on the TLS port gets no CONNACK.
        plain = Client(tls_port, "dev-a", PASSWORDS["dev-a"])
        plain.host = "localhost"
        with pytest.raises((TimeoutError, OSError)):
            await asyncio.wait_for(plain.login(), 3)
        await plain.close()
    finally:
        await adapter.stop()


async def test_credentials_name_the_device_whose_link_is_up(harness: Harness) -> None:
    """Logged in as dev-b is connected as dev-b (nothing subscribed or published yet), until
    the connection ends; an enrolling client is no device yet."""

    def links(device: str) -> list[str]:
        return [
            e.state_change.current
            for e in sorted(harness.cloud.events.values(), key=lambda e: e.event_time_ms)
            if e.device == device and e.state_change.current in ("connected", "disconnected")
        ]

    dev = await harness.client("dev-b", PASSWORDS["dev-b"])
    await harness.cloud.wait_until(lambda: links("dev-b") == ["connected"], 20)
    enrolling = await harness.client("enroll:default:new-1", SECRET)
    await dev.close()
    await harness.cloud.wait_until(lambda: links("dev-b") == ["connected", "disconnected"], 20)
    await enrolling.close()
    assert links("new-1") == []
