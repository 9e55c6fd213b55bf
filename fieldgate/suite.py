"""The whole suite on one machine: cloud + one edge agent + embedded broker + simulated devices.

Used by ``fieldgate up``, by the end-to-end tests and by the benchmarks, so that all three run
exactly the same assembly.

The edge agent runs either inside this process (``edge_process=False``: tests reach into it) or
as its own process (``fieldgate edge run`` with a generated configuration file), as it would on
a gateway; ``fieldgate up`` does the latter, so the edge and the cloud each get a core.

With ``distributed=True`` (``fieldgate up --distributed``) the cloud is not the in-process
all-in-one app on SQLite: the suite starts real ZooKeeper, Kafka and Cassandra servers
(:mod:`fieldgate.devservers`, under ``data_dir/servers``), writes ``data_dir/cloud.yaml`` for
them and runs every cloud service as its own ``fieldgate cloud run <service>`` process, as
docs/operations/distributed.md describes for a real deployment. The edge and ``ingest`` speak
mutual TLS there: a dev CA in ``data_dir/pki`` (created once, :mod:`fieldgate.pki`) signs a
server certificate for 127.0.0.1/localhost and the edge's client certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import yaml

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.composition import SERVICES
from fieldgate.cloud.config import (
    BusConfig,
    CloudConfig,
    ConnectorsConfig,
    StoreConfig,
    TenantConfig,
    TlsConfig,
    ZookeeperConfig,
)
from fieldgate.cloud.services.users import PasswordHasher
from fieldgate.cloud.store.backend import storage_backend
from fieldgate.config import validate
from fieldgate.devservers import (
    CassandraServer,
    KafkaServer,
    ZooKeeperServer,
    start_cassandra,
    start_kafka,
    start_zookeeper,
)
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import BufferConfig, EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.errors import ConfigError, FieldgateError
from fieldgate.pki import CertificateAuthority, PkiError
from fieldgate.retry import Backoff
from fieldgate.sims.mqtt import MqttDeviceSim
from fieldgate.southbound_sims import SouthboundSims
from fieldgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for servers that cannot report a port-0 bind)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SuiteError(FieldgateError):
    """A part of the suite failed to start."""


@dataclass(frozen=True)
class SuiteOptions:
    data_dir: Path
    rest_port: int = 0  # 0 = pick a free port
    grpc_port: int = 0
    mqtt_port: int = 0
    mqtt_mode: Literal["embedded", "external"] = "embedded"
    mqtt_host: str = "127.0.0.1"
    sims: int = 0
    sim_rate_hz: float = 1.0
    admin_password: str | None = None
    auto_register: bool = True
    edge_id: str = "edge-1"
    buffer_max_events: int = 1_000_000
    # Run the edge agent as a child process (``fieldgate edge run``) instead of in this one.
    edge_process: bool = False
    log_level: str = "INFO"
    # Southbound sims beside the MQTT ones: any of "serial", "modbus", "ble".
    southbound: tuple[str, ...] = ()
    # Real ZooKeeper/Kafka/Cassandra and one process per cloud service (needs edge_process).
    distributed: bool = False
    # Networks (CIDR) outbound connectors may reach although inside (connectors.allow_networks;
    # e.g. "127.0.0.0/8" for a webhook receiver on this machine). Default: none.
    connector_networks: tuple[str, ...] = ()
    # The in-process cloud on other backends, e.g. Kafka, Cassandra and ZooKeeper servers that
    # already run (None = the embedded bus, SQLite events, tenants from the file only).
    bus: BusConfig | None = None
    store: StoreConfig | None = None
    zookeeper: ZookeeperConfig | None = None


# A service that dies is started again after 1, 2, 4 ... RESTART_MAX_S seconds; the backoff
# starts over once a run lasted RESTART_RESET_S.
RESTART_INITIAL_S = 1.0
RESTART_MAX_S = 30.0
RESTART_RESET_S = 60.0


class Suite:
    """Start order: cloud, edge agent (with its broker), simulators; stop in reverse."""

    def __init__(self, options: SuiteOptions) -> None:
        # Absolute, so every child process (servers, services, edge) sees the same paths.
        options = dataclasses.replace(options, data_dir=options.data_dir.resolve())
        self.options = options
        self.mqtt_port = options.mqtt_port or free_port()
        self.mqtt_host = options.mqtt_host
        cloud_cfg = CloudConfig(
            data_dir=options.data_dir / "cloud",
            grpc_port=options.grpc_port,
            rest_port=options.rest_port,
            tenants=(
                TenantConfig(token="default", name="Default tenant", auto_register=options.auto_register),
            ),
            bus=options.bus or BusConfig(),
            store=options.store or StoreConfig(),
            zookeeper=options.zookeeper,
            connectors=ConnectorsConfig(allow_networks=options.connector_networks),
        )
        self._cloud: CloudApp | None = None
        self.cloud_procs: dict[str, asyncio.subprocess.Process] = {}
        self._cloud_supervisors: list[asyncio.Task[None]] = []
        self._cloud_env: dict[str, str] = {}
        self._cloud_stopping = False
        self.zookeeper: ZooKeeperServer | None = None
        self.kafka: KafkaServer | None = None
        self.cassandra: CassandraServer | None = None
        if options.distributed:
            if not options.edge_process:
                raise ConfigError("distributed mode needs the edge agent in its own process (edge_process)")
            # Fixed ports: each service is its own process and the edge must know the gRPC port.
            self._rest_port = options.rest_port or free_port()
            self._grpc_port = options.grpc_port or free_port()
            self._cloud_config = cloud_cfg.model_copy(
                update={"rest_port": self._rest_port, "grpc_port": self._grpc_port}
            )
        else:
            self._cloud = CloudApp(cloud_cfg, admin=True, admin_password=options.admin_password)
            self._cloud_config = cloud_cfg
        self.edge: EdgeAgent | None = None
        self.edge_proc: asyncio.subprocess.Process | None = None
        self.southbound: SouthboundSims | None = None
        if "ble" in options.southbound and not options.edge_process:
            raise ConfigError("the BLE sim needs the edge agent in its own process (its D-Bus is private)")
        self._edge_pump: asyncio.Task[None] | None = None
        self.sim: MqttDeviceSim | None = None
        self.admin_password: str | None = options.admin_password
        # Distributed mode: the password the api process is given (chosen once per start).
        self._admin_env_password: str | None = None

    def edge_config(self) -> EdgeConfig:
        o = self.options
        base = EdgeConfig(
            edge_id=o.edge_id,
            data_dir=o.data_dir / "edge",
            mqtt=MqttConfig(mode=o.mqtt_mode, host=o.mqtt_host, port=self.mqtt_port),
            buffer=BufferConfig(max_events=o.buffer_max_events),
            uplink=self._uplink_config(),
        )
        if self.southbound is None:
            return base
        return validate(
            EdgeConfig, {**base.model_dump(by_alias=True), **self.southbound.edge_sections()}, "fieldgate up"
        )

    def _uplink_config(self) -> UplinkConfig:
        """Plaintext to the in-process cloud; mutual TLS to distributed mode's ingest."""
        if not self.options.distributed:
            return UplinkConfig(target=self.grpc_target)
        ca = self._ensure_pki()
        cert, key = ca.edge_paths(self.options.edge_id)
        return UplinkConfig(target=self.grpc_target, ca_file=ca.cert_path, cert_file=cert, key_file=key)

    def _ensure_pki(self) -> CertificateAuthority:
        """The dev CA of distributed mode in data_dir/pki, with the server certificate (127.0.0.1,
        localhost) and the edge's certificate: each made the first time, kept after."""
        ca = CertificateAuthority(self.options.data_dir / "pki")
        try:
            if not ca.exists():
                ca.init(common_name="fieldgate dev CA")
                log.info("pki: dev CA created in %s", ca.directory)
            if not (ca.directory / "server.pem").exists():
                ca.issue_server(["127.0.0.1", "localhost"])
            cert, _ = ca.edge_paths(self.options.edge_id)
            if not cert.exists():
                ca.issue_edge(self.options.edge_id, ["default"])
        except PkiError as err:
            raise SuiteError(f"pki: {err}") from err
        return ca

    @property
    def cloud(self) -> CloudApp:
        """The in-process cloud app (not in distributed mode, where each service is a process)."""
        if self._cloud is None:
            raise SuiteError("the cloud runs as separate processes in distributed mode (see cloud_procs)")
        return self._cloud

    @cloud.setter
    def cloud(self, app: CloudApp) -> None:
        """Replace the in-process cloud app (a test restarting the cloud with a new config)."""
        if self.options.distributed:
            raise SuiteError("the cloud runs as separate processes in distributed mode")
        self._cloud = app

    @property
    def rest_url(self) -> str:
        port = self._rest_port if self.options.distributed else self.cloud.rest_port
        return f"http://127.0.0.1:{port}"

    @property
    def grpc_target(self) -> str:
        port = self._grpc_port if self.options.distributed else self.cloud.grpc_port
        return f"127.0.0.1:{port}"

    async def start(self) -> None:
        try:
            if self.options.distributed:
                await self._start_servers()
                await self._start_cloud_processes()
            else:
                await self.cloud.start()  # user admin exists before the REST API serves
                generated = self.cloud.generated_admin_password
                if generated is not None:
                    self.admin_password = generated
            if self.options.southbound:
                self.southbound = SouthboundSims(
                    self.options.southbound, self.options.data_dir / "sims", rate_hz=self.options.sim_rate_hz
                )
                await self.southbound.start()
                await self._register_southbound(self.southbound)
            if self.options.edge_process:
                await self._start_edge_process()
            else:
                self.edge = EdgeAgent(self.edge_config())
                await self.edge.start()
            if self.options.sims > 0:
                sim = MqttDeviceSim(
                    host=self.mqtt_host,
                    port=self.mqtt_port,
                    devices=self.options.sims,
                    rate_hz=self.options.sim_rate_hz,
                )
                await sim.start()
                self.sim = sim
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.sim is not None:
            await self.sim.stop()
            self.sim = None
        if self.edge is not None:
            await self.edge.stop()
            self.edge = None
        await self._stop_edge_process()
        if self.southbound is not None:
            await self.southbound.stop()
            self.southbound = None
        if self._cloud is not None:
            await self._cloud.stop()
        await self._stop_cloud_processes()
        await self._stop_servers()

    async def _start_servers(self) -> None:
        """ZooKeeper, Kafka and Cassandra side by side (each start blocks until it is ready)."""
        servers = self.options.data_dir / "servers"
        servers.mkdir(parents=True, exist_ok=True)
        # Handles are kept as each one comes up, so a failure of another still stops them.
        zookeeper, kafka, cassandra = await asyncio.gather(
            asyncio.to_thread(start_zookeeper, servers / "zookeeper"),
            asyncio.to_thread(start_kafka, servers / "kafka"),
            asyncio.to_thread(start_cassandra, servers / "cassandra"),
            return_exceptions=True,
        )
        failures = [r for r in (zookeeper, kafka, cassandra) if isinstance(r, BaseException)]
        if isinstance(zookeeper, ZooKeeperServer):
            self.zookeeper = zookeeper
        if isinstance(kafka, KafkaServer):
            self.kafka = kafka
        if isinstance(cassandra, CassandraServer):
            self.cassandra = cassandra
        if failures:
            raise SuiteError(f"a server did not start: {failures[0]}") from failures[0]

    async def _register_southbound(self, sims: SouthboundSims) -> None:
        """Register the sims' devices (with their commands) in the cloud's registry: the
        in-process app's, or in distributed mode the services' (Cassandra)."""
        if not self.options.distributed:
            await sims.register(self.cloud.parts.registry)
            return
        registry = storage_backend(self._distributed_config()).registry()
        await registry.start()
        try:
            await sims.register(registry)
        finally:
            await registry.stop()

    def _distributed_config(self) -> CloudConfig:
        """The services' configuration: the suite's, on the servers it started."""
        assert self.zookeeper is not None and self.kafka is not None and self.cassandra is not None
        return self._cloud_config.model_copy(
            update={
                "bus": BusConfig(kind="kafka", bootstrap=self.kafka.bootstrap),
                "store": StoreConfig(
                    kind="cassandra", hosts=(self.cassandra.host,), port=self.cassandra.port
                ),
                "zookeeper": ZookeeperConfig(hosts=self.zookeeper.hosts, instance="default"),
                "tls": self._server_tls(),
            }
        )

    def _server_tls(self) -> TlsConfig:
        """Mutual TLS on ingest: the dev CA's server certificate, edges of that CA, its CRL."""
        ca = self._ensure_pki()
        return TlsConfig(
            cert_file=ca.directory / "server.pem",
            key_file=ca.directory / "server.key",
            client_ca_file=ca.cert_path,
            crl_file=ca.crl_path,
        )

    def _write_cloud_config(self) -> Path:
        config = self._distributed_config()
        validate(CloudConfig, config.model_dump(mode="json", by_alias=True), "fieldgate up --distributed")
        config.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.options.data_dir / "cloud.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False))
        return path

    async def _choose_admin_password(self) -> None:
        """Without a password given, the suite picks one when the services' user store has no
        admin yet (as ensure_admin would) and keeps the stored one after."""
        password = self.options.admin_password
        if password is None:
            users = storage_backend(self._distributed_config()).users(PasswordHasher())
            await users.start()
            try:
                if not await users.exists("admin"):
                    password = secrets.token_urlsafe(12)
            finally:
                await users.stop()
        self._admin_env_password = password

    def _admin_env(self) -> dict[str, str]:
        """The api process creates user admin from FIELDGATE_ADMIN_PASSWORD (the same one again
        when the supervisor restarts it)."""
        password = self._admin_env_password
        if password is None:
            return {}
        self.admin_password = password
        return {"FIELDGATE_ADMIN_PASSWORD": password}

    async def _start_cloud_processes(self, timeout_s: float = 180.0) -> None:
        path = self._write_cloud_config()
        await self._choose_admin_password()
        env = {k: v for k, v in os.environ.items() if k != "FIELDGATE_ADMIN_PASSWORD"}
        env["PYTHONUNBUFFERED"] = "1"
        self._cloud_env = env
        # One process per service (``fieldgate cloud run <service>``), in SERVICES' start order.
        for service in SERVICES:
            await self._spawn_service(service, path, timeout_s)
            self._cloud_supervisors.append(
                asyncio.create_task(self._supervise(service, path), name=f"supervise-{service}")
            )
        await self._wait_port(self._grpc_port, timeout_s)
        await self._wait_port(self._rest_port, timeout_s)

    async def _spawn_service(self, service: str, path: Path, timeout_s: float) -> asyncio.subprocess.Process:
        """``fieldgate cloud run --config path service``, returned once it printed ``cloud up``."""
        extra = self._admin_env() if service == "api" else {}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fieldgate.cli", "--log-level", self.options.log_level,
            "cloud", "run", "--config", str(path), service,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**self._cloud_env, **extra},
        )  # fmt: skip
        self.cloud_procs[service] = proc
        assert proc.stdout is not None
        await self._wait_for_line(proc, proc.stdout, b"cloud up (", f"cloud service {service}", timeout_s)
        return proc

    async def _supervise(self, service: str, path: Path, timeout_s: float = 180.0) -> None:
        """Echo the service's output; when it dies (a crash, a kill -9), start it again after
        a capped backoff, as a process supervisor would. Cancelled by stop()."""
        backoff = Backoff(RESTART_INITIAL_S, RESTART_MAX_S)
        while True:
            proc = self.cloud_procs[service]
            started = time.monotonic()
            assert proc.stdout is not None
            await self._pump(proc.stdout)
            code = await proc.wait()
            if self._cloud_stopping:
                return
            if time.monotonic() - started > RESTART_RESET_S:
                backoff.reset()
            delay = backoff.next_delay()
            log.warning(
                "cloud service %s (pid %d) exited with code %s; starting it again in %.0fs",
                service, proc.pid, code, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
            if self._cloud_stopping:
                return
            try:
                new = await self._spawn_service(service, path, timeout_s)
            except SuiteError as err:
                log.error("cloud service %s did not start again: %s", service, err)
                continue
            if self._cloud_stopping:
                await self._terminate(new, f"cloud service {service}", 20.0)
                return
            log.warning("cloud service %s is running again (pid %d)", service, new.pid)

    @staticmethod
    async def _wait_for_line(
        proc: asyncio.subprocess.Process,
        stdout: asyncio.StreamReader,
        marker: bytes,
        what: str,
        timeout_s: float,
    ) -> None:
        """Echo the child's output until its readiness line (``marker`` at the start of a line)."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = await stdout.readline()
                    if not line:
                        raise SuiteError(f"{what} exited while starting (code {await proc.wait()})")
                    sys.stdout.write(line.decode(errors="replace"))
                    if line.startswith(marker):
                        return
        except TimeoutError as err:
            raise SuiteError(f"{what} not up within {timeout_s}s") from err

    @staticmethod
    async def _wait_port(port: int, timeout_s: float) -> None:
        """Until 127.0.0.1:port accepts a connection."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", port)
                    except OSError:
                        await asyncio.sleep(0.2)
                        continue
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    return
        except TimeoutError as err:
            raise SuiteError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s") from err

    async def _stop_cloud_processes(self, grace_s: float = 20.0) -> None:
        """In reverse start order: api first, ingest (the edge streams) last."""
        self._cloud_stopping = True  # the supervisors restart nothing from here on
        for service, proc in reversed(list(self.cloud_procs.items())):
            await self._terminate(proc, f"cloud service {service}", grace_s)
        supervisors, self._cloud_supervisors = self._cloud_supervisors, []
        if supervisors:  # they echo the last output lines, then return
            await asyncio.wait(supervisors, timeout=grace_s)
        await cancel_and_wait(*supervisors)
        for service, proc in self.cloud_procs.items():  # one a supervisor started meanwhile
            await self._terminate(proc, f"cloud service {service}", grace_s)
        self.cloud_procs.clear()

    @staticmethod
    async def _terminate(proc: asyncio.subprocess.Process, what: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``."""
        if proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await proc.wait()
        except TimeoutError:
            log.warning("%s did not stop within %.0fs; killing it", what, grace_s)
            proc.kill()
            await proc.wait()

    async def _stop_servers(self) -> None:
        """Cassandra, Kafka, ZooKeeper: each stopped by PID (blocking, so in a thread)."""
        for attr in ("cassandra", "kafka", "zookeeper"):
            server: CassandraServer | KafkaServer | ZooKeeperServer | None = getattr(self, attr)
            if server is not None:
                setattr(self, attr, None)
                await asyncio.to_thread(server.stop)

    @property
    def edge_pid(self) -> int:
        """The process the edge agent runs in."""
        return self.edge_proc.pid if self.edge_proc is not None else os.getpid()

    async def _start_edge_process(self, timeout_s: float = 30.0) -> None:
        config = self.edge_config()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.options.data_dir / "edge.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fieldgate.cli", "--log-level", self.options.log_level,
            "edge", "run", "--config", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(self.southbound.edge_env() if self.southbound else {})},
        )  # fmt: skip
        self.edge_proc = proc
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise SuiteError(f"edge agent exited while starting (code {await proc.wait()})")
                    sys.stdout.write(line.decode(errors="replace"))
                    if line.startswith(b"edge agent ") and b" up: " in line:
                        break
        except TimeoutError as err:
            raise SuiteError(f"edge agent not up within {timeout_s}s") from err
        self._edge_pump = asyncio.create_task(self._pump(proc.stdout), name="edge-output")

    @staticmethod
    async def _pump(stream: asyncio.StreamReader) -> None:
        """The child's log lines go to this process's stdout (bounded: one line at a time)."""
        while line := await stream.readline():
            sys.stdout.write(line.decode(errors="replace"))
            sys.stdout.flush()

    async def _stop_edge_process(self, grace_s: float = 15.0) -> None:
        proc, self.edge_proc = self.edge_proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s):
                    await proc.wait()
            except TimeoutError:
                log.warning("edge agent did not stop within %.0fs; killing it", grace_s)
                proc.kill()
                await proc.wait()
        if self._edge_pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._edge_pump
            self._edge_pump = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def describe(self) -> Iterator[str]:
        yield f"REST API     {self.rest_url}/api/v1   (OpenAPI: {self.rest_url}/openapi.json, docs: {self.rest_url}/docs)"
        yield f"Dashboard    {self.rest_url}/"
        yield f"gRPC         {self.grpc_target}"
        yield f"MQTT         {self.mqtt_host}:{self.mqtt_port}  (devices publish to fieldgate/default/devices/<device>/events)"
        yield f"Data         {self.options.data_dir}"
        nets = ", ".join(self._cloud_config.connectors.allow_networks) or "none (public targets only)"
        yield f"Connectors   inside networks allowed: {nets}  (--allow-connector-network CIDR)"
        if self.kafka is not None:
            yield f"Kafka        {self.kafka.bootstrap}"
        if self.zookeeper is not None:
            yield f"ZooKeeper    {self.zookeeper.hosts}"
        if self.cassandra is not None:
            yield f"Cassandra    {self.cassandra.contact_point}"
        for service, proc in self.cloud_procs.items():
            yield f"Cloud        {service} (pid {proc.pid})"
        if self.options.distributed:
            pki = self.options.data_dir / "pki"
            yield f"TLS          gRPC is mutual TLS: CA {pki}/ca.pem, edge certificates in {pki}/edges (fieldgate pki)"
            cfg = self.options.data_dir / "cloud.yaml"
            yield f"Cloud config {cfg}  (fieldgate cloud run|tenant|replay --config {cfg})"
        for line in self.southbound.describe() if self.southbound else ():
            yield f"Simulator    {line}"
