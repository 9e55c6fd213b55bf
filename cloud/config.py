"""Typed configuration of the cloud (see docs/configuration.md)."""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from fieldgate.config import Frozen

# Also part of a Kafka consumer group name (command-delivery.<replica_id>).
REPLICA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class TenantConfig(Frozen):
    token: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    name: str = ""
    # Unknown devices that send events are registered automatically (with a registration
    # state change event) when true; otherwise their events are kept in [unregistered].
    auto_register: bool = True
    default_device_type: str = "default"


class AuthConfig(Frozen):
    """How bearer tokens are signed. Every ``api`` replica must use the same key: give it here,
    or as a file (``secret_file``, e.g. a mounted Kubernetes Secret). With neither, the key is
    generated once and kept where the registry is: ``data_dir/secret.key`` on SQLite, the
    instance keyspace on Cassandra (so replicas without a common directory agree on it)."""

    secret_key: SecretStr | None = None
    secret_file: Path | None = None
    token_ttl_s: int = Field(3600, ge=60)
    #: Key rotation: tokens signed with one of these still verify (new ones are signed with the
    #: current key). Keep the old key here for ``token_ttl_s`` after switching, then drop it.
    previous_secret_keys: tuple[SecretStr, ...] = Field((), max_length=16)
    previous_secret_files: tuple[Path, ...] = Field((), max_length=16)


class BusConfig(Frozen):
    """Which bus carries the pipeline's topics.

    ``embedded`` is a SQLite log inside the one cloud process (the one-machine default);
    ``kafka`` is Apache Kafka at ``bootstrap``, which lets each stage run as its own process.
    ``partitions`` / ``replication`` apply to the topics fieldgate creates on Kafka.
    """

    kind: Literal["embedded", "kafka"] = "embedded"
    topic_prefix: str = Field("fieldgate", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
    bootstrap: str = Field("127.0.0.1:9092", min_length=1)
    partitions: int = Field(3, ge=1, le=1000)
    replication: int = Field(1, ge=1, le=10)


class StoreConfig(Frozen):
    """Where events are stored: SQLite files in data_dir, or Apache Cassandra at ``hosts``.

    The registry (tenants, device types, devices, assignments), the command invocations and the
    users live in the same place: SQLite files in data_dir, or Cassandra (the instance keyspace
    ``<keyspace_prefix>__instance``, a name no tenant keyspace can have, and each tenant's
    keyspace), so cloud services on different machines share no files.
    """

    kind: Literal["sqlite", "cassandra"] = "sqlite"
    hosts: tuple[str, ...] = Field(("127.0.0.1",), min_length=1)
    port: int = Field(9042, ge=1, le=65535)
    replication: int = Field(1, ge=1, le=10)
    # Tenant keyspaces are named <keyspace_prefix>_<tenant>; give two fieldgate instances
    # sharing one Cassandra cluster different prefixes.
    keyspace_prefix: str = Field("fg", pattern=r"^[a-z][a-z0-9]{0,9}$")


class ZookeeperConfig(Frozen):
    """Live tenant configuration from ZooKeeper (``/fieldgate/<instance>/tenants/<tenant>``).

    When set, the cloud reads the tenants' settings at start and watches them, so a change
    (e.g. ``auto_register``) takes effect without a restart.
    """

    hosts: str = Field("127.0.0.1:2181", min_length=1)
    instance: str = Field("default", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")


class HealthConfig(Frozen):
    """The HTTP health listener of a cloud process: ``/healthz`` (liveness: the process and its
    event loop answer) and ``/readyz`` (readiness: its bus and stores answer, and it is not
    draining). ``port`` None = no separate listener (the ``api`` service always serves both on
    its REST port; ``ingest`` also answers the gRPC health checking protocol on its gRPC port)."""

    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=0, le=65535)


class TlsConfig(Frozen):
    """TLS on the cloud's gRPC port (the edge uplink and the gRPC APIs); docs/security.md.

    ``require_client_cert`` true (the default) is mutual TLS: every client — edges and API
    callers — must present a certificate signed by ``client_ca_file``; an edge's certificate
    names its edge id and tenants (``fieldgate pki issue-edge``), which the uplink enforces, and
    ``crl_file`` (re-read when it changes) lists revoked serials, refused at the next connect.
    False is server-only TLS: no client certificate is asked for (gRPC cannot ask for an
    optional one), edges are not authenticated and the APIs take bearer tokens only.
    Relative paths are relative to the working directory.
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    crl_file: Path | None = None
    require_client_cert: bool = True

    @model_validator(mode="after")
    def _client_auth_consistent(self) -> Self:
        if self.require_client_cert and self.client_ca_file is None:
            raise ValueError(
                "require_client_cert needs client_ca_file (the CA that signs the edges' certificates); "
                "set require_client_cert: false for server-only TLS"
            )
        if not self.require_client_cert and (self.client_ca_file is not None or self.crl_file is not None):
            raise ValueError(
                "client_ca_file/crl_file need require_client_cert: true (gRPC cannot ask for an "
                "optional client certificate)"
            )
        return self


class ConnectorsConfig(Frozen):
    """The ``connectors`` service (outbound connectors, docs/connectors.md). The connectors
    themselves are per tenant, managed through ``/api/v1/connectors``; these are the stage's
    own knobs."""

    # How often the stage re-reads the connector definitions and the re-drive requests.
    refresh_s: float = Field(2.0, gt=0, le=300)
    # Bus records tracked until every connector is done with them; beyond, the stage waits.
    max_in_flight: int = Field(10_000, ge=1, le=1_000_000)
    # Networks (CIDR) connector targets may reach although they are not globally reachable:
    # by default a target that resolves to a loopback, link-local, private, unique-local,
    # multicast or unspecified address is refused (cloud/domain/connectors/targets.py). An operator
    # setting, for on-premises receivers; tenants cannot change it.
    allow_networks: tuple[str, ...] = Field((), max_length=256)

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for text in v:
            try:
                out.append(str(ipaddress.ip_network(text.strip(), strict=True)))
            except ValueError as err:
                raise ValueError(f"{text!r} is not a network in CIDR notation: {err}") from err
        return tuple(out)


class LabelsConfig(Frozen):
    """QR labels (``/api/v1/{devices,assets,areas}/{token}/label.png|svg``): the code is a URL
    to the entity under ``base_url`` (where people scanning it reach this cloud)."""

    base_url: str = Field("http://127.0.0.1:8080", min_length=1, max_length=500, pattern=r"^https?://[^\s]+$")


class CloudConfig(Frozen):
    data_dir: Path = Path(".fieldgate/cloud")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535)
    rest_host: str = "127.0.0.1"
    rest_port: int = Field(8080, ge=0, le=65535)
    tenants: tuple[TenantConfig, ...] = (TenantConfig(token="default", name="Default tenant"),)
    auth: AuthConfig = AuthConfig()
    health: HealthConfig = HealthConfig()
    # SIGTERM: ingest stops taking batches, sends the acks of what it committed and ends its
    # edge streams (they reconnect to another replica); everything stops within this time.
    drain_timeout_s: float = Field(20.0, gt=0, le=600)
    bus: BusConfig = BusConfig()
    store: StoreConfig = StoreConfig()
    # Live tenant configuration (distributed mode); None = tenants come from this file only.
    zookeeper: ZookeeperConfig | None = None
    # TLS (mutual TLS with client_ca_file) on the gRPC port; None = plaintext (docs/security.md).
    tls: TlsConfig | None = None
    # The connectors service's knobs (docs/connectors.md).
    connectors: ConnectorsConfig = ConnectorsConfig()
    # QR labels of devices, assets and areas (the URL they encode).
    labels: LabelsConfig = LabelsConfig()
    # Default time-to-live of a command invocation when the request gives none.
    default_command_ttl_s: int = Field(3600, ge=1)
    # This process's name among the `ingest` replicas: its command delivery reads
    # [command-invocations] in its own consumer group `command-delivery.<replica_id>` (every
    # replica sees every invocation; the one hosting the device's edge sends it). Keep it
    # stable across restarts of the same replica; None = "<host name>-<grpc_port>".
    replica_id: str | None = Field(None, pattern=REPLICA_ID_PATTERN)

    def effective_replica_id(self) -> str:
        """``replica_id``, or ``<host name>-<grpc_port>`` (host name characters outside the
        pattern replaced by ``-``): stable across restarts, distinct for the replicas of one
        machine as long as they listen on distinct fixed ports."""
        if self.replica_id is not None:
            return self.replica_id
        host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).strip("._-")[:80] or "host"
        return f"{host}-{self.grpc_port}"
