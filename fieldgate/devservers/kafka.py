"""Apache Kafka in KRaft mode (one process that is broker and controller) for tests.

``start_kafka`` writes ``server.properties`` into a fresh directory under the workdir, formats the
storage (``kafka.tools.StorageTool format --standalone`` with a new cluster id), starts
``kafka.Kafka`` with a 256 MiB heap, and waits until a metadata request through confluent-kafka's
AdminClient lists the broker. Topics get 3 partitions by default and every internal topic a
replication factor of 1, so consumer groups and transactions work on the single node.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fieldgate.devservers._jars import KAFKA, ServerUnavailable, fetch, java_executable
from fieldgate.devservers._process import JavaProcess, ServerHandle, free_port, log4j2_config

HEAP = "256m"
READY_TIMEOUT_S = 90.0


@dataclass
class KafkaServer(ServerHandle):
    """A running single-node Kafka; ``bootstrap`` is what clients put in bootstrap.servers."""

    controller_port: int = field(kw_only=True)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def server_properties(host: str, port: int, controller_port: int, log_dir: Path) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "3",
        "default.replication.factor": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, url-safe base64 without padding, never starting
    with "-" (StorageTool would read it as an option: 1 id in 64; Kafka's own
    ``Uuid.randomUuid`` draws again too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _broker_listed(bootstrap: str) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        return bool(admin.list_topics(timeout=2).brokers)
    except KafkaException:
        return False


def _previous_controller_port(config: Path) -> int | None:
    """The controller port of an earlier run in this directory: the quorum's stored voter
    endpoint, which a restart must keep."""
    if not config.exists():
        return None
    for line in config.read_text().splitlines():
        if line.startswith("controller.quorum.bootstrap.servers="):
            return int(line.rsplit(":", 1)[1])
    return None


def _format_storage(java: list[str], config: Path, workdir: Path) -> None:
    formatter = JavaProcess(
        "kafka storage format",
        [*java, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config), "--standalone"],
        workdir,
    )
    try:
        assert formatter.proc is not None
        if formatter.proc.wait(120) != 0:
            raise ServerUnavailable(f"formatting Kafka storage failed:\n{formatter.log_tail()}")
    finally:
        formatter.stop()


def start_kafka(workdir: Path, *, host: str = "127.0.0.1", port: int | None = None) -> KafkaServer:
    """Start Kafka on a free (or the given) port; the caller must ``stop()`` it.

    Started again with the same ``workdir`` and ``port`` after a stop (or a kill), it keeps its
    topics, offsets and messages: a broker restart for tests that need one."""
    jars = fetch(KAFKA)
    port = port or free_port(host)
    # Absolute: the JVM runs in the workdir, and its configuration names paths in it.
    workdir = Path(workdir).resolve() / f"kafka-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "server.properties"
    controller_port = _previous_controller_port(config) or free_port(host)
    config.write_text(server_properties(host, port, controller_port, workdir / "data"))
    java = [
        java_executable(),
        f"-Xmx{HEAP}",
        f"-Xms{HEAP}",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j2_config(workdir)}",
        "-cp",
        f"{jars}/*",
    ]
    if not (workdir / "data" / "meta.properties").exists():  # a restart on the same port keeps its data
        _format_storage(java, config, workdir)
    process = JavaProcess("kafka", [*java, "kafka.Kafka", str(config)], workdir)
    server = KafkaServer(host, port, workdir, process, controller_port=controller_port)
    server.startup_seconds = process.wait_ready(lambda: _broker_listed(server.bootstrap), READY_TIMEOUT_S)
    return server


@contextmanager
def kafka_server(workdir: Path) -> Iterator[KafkaServer]:
    """A single-node KRaft Kafka on 127.0.0.1 for the duration of the ``with`` block."""
    server = start_kafka(workdir)
    try:
        yield server
    finally:
        server.stop()
