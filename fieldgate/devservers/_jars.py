"""Fetching and caching the server jars with Maven.

Each server has a tiny ``poms/<server>/pom.xml`` that only declares the server artifact as a
dependency. ``mvn dependency:copy-dependencies`` resolves it with its runtime dependencies and
copies every jar into ``<cache>/<server>-<version>/``; the server then runs with that directory as
its classpath. The cache (default ``~/.cache/fieldgate/jars``, override ``FIELDGATE_JAR_CACHE``)
is filled once and reused: a ``.complete`` marker is written only after mvn succeeded, and a file
lock keeps two test processes from fetching the same server at the same time. Maven's own
repository (``~/.m2``) also keeps the downloads, so a wiped jar cache refills offline.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

POMS = Path(__file__).with_name("poms")
COMPLETE_MARKER = ".complete"


class ServerUnavailable(RuntimeError):
    """The server's jars could not be fetched or the server could not be started."""


@dataclass(frozen=True)
class ServerJars:
    """Which Maven pom fetches a server and the version its cache directory is named after."""

    name: str
    version: str

    @property
    def pom(self) -> Path:
        return POMS / self.name / "pom.xml"


KAFKA = ServerJars("kafka", "4.4.0")
ZOOKEEPER = ServerJars("zookeeper", "3.9.5")
CASSANDRA = ServerJars("cassandra", "5.0.6")
ALL_SERVERS = (KAFKA, ZOOKEEPER, CASSANDRA)


def jar_cache() -> Path:
    """The directory holding one ``<server>-<version>`` folder of jars per server."""
    configured = os.environ.get("FIELDGATE_JAR_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "fieldgate" / "jars"


def java_executable() -> str:
    """``$FIELDGATE_JAVA``, else ``$JAVA_HOME/bin/java``, else ``java`` from PATH (Java 17+)."""
    if configured := os.environ.get("FIELDGATE_JAVA"):
        return configured
    if java_home := os.environ.get("JAVA_HOME"):
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise ServerUnavailable("no java on PATH (install a Java 17 JRE, or set FIELDGATE_JAVA)")
    return found


def fetch(server: ServerJars, *, quiet: bool = True) -> Path:
    """The directory of ``server``'s jars, running mvn first if the cache lacks them."""
    target = jar_cache() / f"{server.name}-{server.version}"
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching the same server
        if (target / COMPLETE_MARKER).exists():
            return target
        _copy_dependencies(server, target, quiet=quiet)
    return target


def _copy_dependencies(server: ServerJars, target: Path, *, quiet: bool) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServerUnavailable("mvn is not on PATH (apt-get install maven)")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [
        mvn,
        "-B",
        *(["-q"] if quiet else []),
        "-f",
        str(server.pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={partial}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServerUnavailable(
            f"fetching {server.name} {server.version} failed ({' '.join(command)}):\n"
            f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
    (partial / COMPLETE_MARKER).write_text(f"{server.name} {server.version}\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
