"""Typed configuration of the edge agent (see docs/configuration.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from fieldgate.config import Frozen
from fieldgate.edge.adapters.ble.config import BleConfig
from fieldgate.edge.adapters.modbus.config import ModbusConfig
from fieldgate.edge.adapters.serial.config import SerialConfig


class MqttAuthConfig(Frozen):
    """Who may connect to the embedded broker and which topics each client may use
    (docs/security.md, "Devices: MQTT credentials and ACLs").

    ``none``: anonymous, every topic (the one-machine default; bind to 127.0.0.1).
    ``password``: each client logs in as an identity of ``credentials_file`` (written by
    ``fieldgate mqtt credentials add``) and may publish only its own devices' events and
    subscribe only to their commands.
    """

    mode: Literal["none", "password"] = "none"
    # Relative paths are below the agent's data_dir. Required with mode password.
    credentials_file: Path | None = None
    # With mode password: clients without a username are let in unrestricted, as in mode none
    # (a migration aid while devices get credentials; logged at start). Off: CONNACK "not authorized".
    allow_anonymous: bool = False
    # tenant → enrollment secret. A device of such a tenant that has no credentials yet may
    # connect once as username "enroll:<tenant>:<device>" with the tenant's secret and receives
    # its own credentials on fieldgate/<tenant>/devices/<device>/credentials.
    enrollment_secrets: dict[str, SecretStr] = {}

    @model_validator(mode="after")
    def _check(self) -> MqttAuthConfig:
        if self.mode == "password" and self.credentials_file is None:
            raise ValueError("credentials_file is required when mode is password")
        if self.mode == "none" and self.enrollment_secrets:
            raise ValueError("enrollment_secrets need mode password")
        for tenant, secret in self.enrollment_secrets.items():
            if ":" in tenant:
                raise ValueError(f"enrollment_secrets: tenant {tenant!r} contains ':' (cannot enroll)")
            if len(secret.get_secret_value()) < 16:
                raise ValueError(f"enrollment_secrets.{tenant}: shorter than 16 characters")
        return self


class MqttTlsConfig(Frozen):
    """A second listener of the embedded broker speaking MQTT over TLS (8883 by convention)."""

    enabled: bool = False
    # null: the same interface as mqtt.host. The plain listener stays on mqtt.host:mqtt.port
    # (keep that on 127.0.0.1 when devices come over the network through TLS).
    host: str | None = None
    port: int = Field(8883, ge=1, le=65535)
    # PEM files; relative paths are below the agent's data_dir.
    certfile: Path | None = None
    keyfile: Path | None = None
    # CA bundle for optional client certificates (they are verified if sent, never required).
    cafile: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> MqttTlsConfig:
        if self.enabled and (self.certfile is None or self.keyfile is None):
            raise ValueError("certfile and keyfile are required when TLS is enabled")
        return self


class MqttConfig(Frozen):
    """The MQTT adapter. ``embedded`` runs amqtt in-process and takes device messages straight
    from its protocol handler; ``external`` subscribes to another broker (e.g. Mosquitto)."""

    enabled: bool = True
    mode: Literal["embedded", "external"] = "embedded"
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    client_id: str = "fieldgate-edge"
    # Subscriptions to the external broker use this QoS (1: nothing lost across reconnects).
    qos: Literal[0, 1] = 1
    # Larger payloads are refused into the failed-decode lane.
    max_payload_bytes: int = Field(256 * 1024, ge=64)
    # Also accept SiteWhere's JSON device messages on SiteWhere/<tenant>/input/json.
    sitewhere_compat: bool = True
    # With sitewhere_compat: the tenant SiteWhere 1.x firmware belongs to on 1.x's tenant-less
    # default topics (SiteWhere/input/json|protobuf in, SiteWhere/commands/<device> out; embedded
    # broker without mqtt.auth, docs/protocols/sitewhere.md). None: those topics are not served.
    sitewhere_1x_tenant: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    # External broker only (the embedded broker sees which topic a device subscribed to): the
    # tenants whose devices are SiteWhere firmware; their commands go to
    # SiteWhere/<tenant>/command/<device> in SiteWhere's JSON encoding instead of fieldgate's topic.
    sitewhere_command_tenants: list[str] = []
    keepalive_s: int = Field(30, ge=5)
    # Embedded broker only: device credentials and topic ACLs, and MQTT over TLS.
    auth: MqttAuthConfig = MqttAuthConfig()
    tls: MqttTlsConfig = MqttTlsConfig()

    @model_validator(mode="after")
    def _embedded_only(self) -> MqttConfig:
        if self.sitewhere_command_tenants and (self.mode != "external" or not self.sitewhere_compat):
            raise ValueError(
                "sitewhere_command_tenants is for mode external with sitewhere_compat (the embedded "
                "broker sends SiteWhere devices their commands where they subscribed)"
            )
        if self.sitewhere_1x_tenant is not None and self.auth.mode != "none":
            raise ValueError(
                "sitewhere_1x_tenant: SiteWhere 1.x's tenant-less topics cannot be checked per device; "
                "with auth, give 1.x firmware the tenant's topics (SiteWhere/<tenant>/...)"
            )
        if self.mode == "external" and (self.auth.mode != "none" or self.tls.enabled):
            raise ValueError(
                "auth and tls configure the embedded broker; with mode external the broker "
                "authenticates (fieldgate mqtt mosquitto-files, docs/operations/mosquitto.md)"
            )
        return self


class BufferConfig(Frozen):
    """The durable store-and-forward buffer (SQLite)."""

    # Relative paths are below the agent's data_dir.
    path: Path = Path("buffer.db")
    max_events: int = Field(1_000_000, ge=10)
    # drop_oldest: evict the oldest unsent events (counted in fieldgate_buffer_dropped_total);
    # reject_new: refuse new events; an MQTT QoS 1 message is then not acknowledged.
    overflow: Literal["drop_oldest", "reject_new"] = "drop_oldest"
    # Group commit: appends arriving within this window share one transaction/fsync.
    commit_window_ms: float = Field(2.0, ge=0)
    max_failed_decodes: int = Field(10_000, ge=1)
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class UplinkConfig(Frozen):
    """The gRPC stream to the cloud."""

    # A gRPC target: host:port, or several ingest replicas to fail over between
    # ("ipv4:10.0.0.1:50051,10.0.0.2:50051"; "dns:///ingest.example:50051" for a name with
    # several addresses). The first that answers is used; a lost stream starts over at the first.
    target: str = Field("127.0.0.1:50051", min_length=1)
    batch_max_events: int = Field(1000, ge=1, le=10_000)
    batch_max_delay_ms: float = Field(10.0, ge=0)
    # Batches sent but not yet acknowledged; beyond this the uplink waits (backpressure).
    max_inflight_batches: int = Field(16, ge=1)
    backoff_initial_s: float = Field(0.1, gt=0)
    backoff_max_s: float = Field(10.0, gt=0)
    # While backing off, probe the cloud's TCP port about this often (cheap connects, no
    # stream) and start the next session as soon as it answers instead of sleeping the whole
    # backoff; 0 = sleep the whole backoff. Bounds how long a backlog waits after an outage.
    probe_interval_s: float = Field(1.0, ge=0)
    # Send the cloud an EdgeStatus (buffer depth, age of the oldest unacknowledged event,
    # failed decodes) on connect and then this often, if the cloud takes it; 0 = never.
    status_interval_s: float = Field(5.0, ge=0)
    # TLS to the cloud (docs/security.md): on when `tls` is true or any file below is set.
    # ca_file: the CA that signed the cloud's server certificate (None: the system's roots);
    # cert_file + key_file: this edge's client certificate (`fieldgate pki issue-edge`), for a
    # cloud that requires mutual TLS; server_name: the name to check the server certificate
    # against when it differs from the target's host. Paths are relative to the working directory.
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = Field(None, min_length=1, max_length=253)

    @model_validator(mode="after")
    def _client_cert_pair(self) -> UplinkConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (the edge's certificate and its key)")
        if self.server_name is not None and not self.uses_tls:
            raise ValueError("server_name needs TLS (tls: true, or ca_file/cert_file)")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None


class CommandsConfig(Frozen):
    """The command router."""

    # A delivered command not answered in this time is reported failed (reason "timeout"); an
    # answer after that is still linked in the cloud (status "late"). Five minutes: long enough
    # for a person playing the device (README tour).
    response_timeout_s: float = Field(300.0, gt=0)
    # Commands waiting for an offline device; beyond this new ones are failed ("edge queue full").
    max_pending: int = Field(10_000, ge=1)


class EdgeConfig(Frozen):
    edge_id: str = "edge-1"
    data_dir: Path = Path(".fieldgate/edge")
    # Tenants whose devices this agent accepts; others go to the failed-decode lane.
    tenants: tuple[str, ...] = ("default",)
    mqtt: MqttConfig = MqttConfig()
    # Southbound adapters beside MQTT (docs/protocols/serial.md, modbus.md, ble.md); off by default.
    serial: SerialConfig = SerialConfig()
    modbus: ModbusConfig = ModbusConfig()
    ble: BleConfig = BleConfig()
    buffer: BufferConfig = BufferConfig()
    uplink: UplinkConfig = UplinkConfig()
    commands: CommandsConfig = CommandsConfig()
    # Prometheus metrics on http://<metrics_host>:<port>/metrics, and the agent's health on the
    # same port: /healthz (liveness) and /readyz (readiness: buffer open, adapters running);
    # 0 disables. metrics_host 0.0.0.0 lets a Prometheus (or a kubelet probe) on the network
    # reach it.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else self.data_dir / path
