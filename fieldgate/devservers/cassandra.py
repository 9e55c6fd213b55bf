"""Apache Cassandra (single node) for tests, run from the cassandra-all jar.

``start_cassandra`` writes a minimal ``cassandra.yaml`` into a fresh directory under the workdir
(one node on 127.0.0.1, free native-transport and storage ports, no authentication, data,
commit log, hints and caches in the workdir, small caches), a logback file sending the log to
``server.log``, and starts ``CassandraDaemon`` in the foreground with a 2 GiB heap and the JVM
options Cassandra's own ``jvm17-server.options`` sets on Java 17 (module exports/opens, G1, the
jamm agent). Readiness: cassandra-driver connects and ``SELECT release_version FROM
system.local`` answers. JMX is left off (no fixed 7199 port).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from fieldgate.devservers._jars import CASSANDRA, fetch, java_executable
from fieldgate.devservers._process import JavaProcess, ServerHandle, free_port

# 1 GiB ran out (OutOfMemoryError) in a long distributed test run: every tenant keyspace holds
# the event and registry tables (about 20), and the test session creates many keyspaces.
HEAP = "2g"
READY_TIMEOUT_S = 180.0

# From Cassandra 5.0's conf/jvm17-server.options (JPMS section) and jvm-server.options.
JVM17_OPTIONS = [
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:MaxGCPauseMillis=300",
    "-Xss256k",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.math=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
]


@dataclass
class CassandraServer(ServerHandle):
    """A running single-node Cassandra; clients use ``Cluster([host], port=port)``."""

    storage_port: int = field(kw_only=True)
    stop_grace_s: ClassVar[float] = 60.0  # it flushes its memtables on SIGTERM

    @property
    def contact_point(self) -> str:
        return f"{self.host}:{self.port}"


def cassandra_yaml(host: str, port: int, storage_port: int, storage: Path) -> str:
    return f"""\
cluster_name: fieldgate-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{host}:{storage_port}"
listen_address: {host}
rpc_address: {host}
storage_port: {storage_port}
native_transport_port: {port}
start_native_transport: true
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
data_file_directories:
  - {storage / "data"}
commitlog_directory: {storage / "commitlog"}
saved_caches_directory: {storage / "saved_caches"}
hints_directory: {storage / "hints"}
cdc_raw_directory: {storage / "cdc_raw"}
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 8MiB
disk_failure_policy: stop
commit_failure_policy: stop
key_cache_size: 8MiB
counter_cache_size: 1MiB
prepared_statements_cache_size: 8MiB
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
concurrent_compactors: 1
auto_snapshot: false
snapshot_on_duplicate_row_detection: false
dynamic_snitch: false
user_defined_functions_enabled: false
materialized_views_enabled: false
"""


def logback_xml(workdir: Path) -> Path:
    path = workdir / "logback.xml"
    path.write_text(
        f"""<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{workdir / "server.log"}</file>
    <encoder><pattern>[%date] %level %msg \\(%logger{{0}}\\)%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""
    )
    return path


def _answers(host: str, port: int) -> bool:
    from cassandra.cluster import Cluster, NoHostAvailable

    # Until the native port accepts connections, do not ask the driver: it logs each refused
    # attempt with a traceback at ERROR, which would bury the real output while Cassandra starts.
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    cluster = Cluster([host], port=port, connect_timeout=3, protocol_version=5)
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local").one()
        return row is not None
    except (NoHostAvailable, OSError):
        return False
    finally:
        cluster.shutdown()


def start_cassandra(workdir: Path, *, host: str = "127.0.0.1", port: int | None = None) -> CassandraServer:
    """Start Cassandra on a free (or the given) native port; the caller must ``stop()`` it."""
    jars = fetch(CASSANDRA)
    port = port or free_port(host)
    storage_port = free_port(host)
    # Absolute: the JVM runs in the workdir, and its configuration names paths in it.
    workdir = Path(workdir).resolve() / f"cassandra-{port}"
    storage = workdir / "storage"
    (storage / "triggers").mkdir(parents=True, exist_ok=True)
    config = workdir / "cassandra.yaml"
    config.write_text(cassandra_yaml(host, port, storage_port, storage))
    jamm = sorted(jars.glob("jamm-*.jar"))
    command = [
        java_executable(),
        f"-Xms{HEAP}",
        f"-Xmx{HEAP}",
        *JVM17_OPTIONS,
        *[f"-javaagent:{jar}" for jar in jamm[:1]],
        "-Djava.awt.headless=true",
        "-Djava.net.preferIPv4Stack=true",
        f"-Dcassandra.config=file://{config}",
        f"-Dcassandra.storagedir={storage}",
        f"-Dcassandra.logdir={workdir}",
        f"-Dcassandra.triggers_dir={storage / 'triggers'}",
        "-Dcassandra-foreground=yes",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.load_ring_state=false",
        "-Dcassandra.superuser_setup_delay_ms=0",
        f"-Dlogback.configurationFile={logback_xml(workdir)}",
        "-cp",
        f"{jars}/*",
        "org.apache.cassandra.service.CassandraDaemon",
    ]
    process = JavaProcess("cassandra", command, workdir)
    server = CassandraServer(host, port, workdir, process, storage_port=storage_port)
    server.startup_seconds = process.wait_ready(lambda: _answers(host, port), READY_TIMEOUT_S, interval=1.0)
    return server


@contextmanager
def cassandra_server(workdir: Path) -> Iterator[CassandraServer]:
    """A single-node Cassandra on 127.0.0.1 for the duration of the ``with`` block."""
    server = start_cassandra(workdir)
    try:
        yield server
    finally:
        server.stop()
