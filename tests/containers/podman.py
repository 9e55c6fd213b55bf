"""podman for the container tests: the image that scripts/container_tools.sh builds, and the
containers, pods, volumes and secrets a test owns.

Everything a test starts has a name made for that test (:func:`unique`) and is removed by that
name when the test ends, passed or failed (:meth:`Podman.owned`); nothing is removed by a pattern,
since other sessions on the machine may use podman too. Waiting is on conditions: a container's
state, a port that answers, an HTTP status — never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "container_tools.sh"
CACHE = Path(os.environ.get("FIELDGATE_CACHE_DIR") or Path.home() / ".cache" / "fieldgate")
# What scripts/container_tools.sh writes (runc, cgroupfs, rlimits this kind of host can set).
CONTAINERS_CONF = CACHE / "containers" / "containers.conf"
# scripts/container_tools.sh's exit status for "this machine cannot run containers".
CANNOT_RUN = 3
# The image's user (Dockerfile): numeric, so that runAsNonRoot and --user can name it.
FIELDGATE_UID = 10001
# The hardening of every container the tests run by hand: a read-only root filesystem, no
# capabilities, no privilege gain through setuid binaries, the image's non-root user.
HARDENED = (
    "--read-only",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--user",
    f"{FIELDGATE_UID}:{FIELDGATE_UID}",
)
# Set on everything a test creates, so that a leftover (a killed test run) can be told apart.
LABEL = "io.fieldgate.test"
# podman stop's grace period before SIGKILL: fieldgate drains and exits well within it.
STOP_TIMEOUT_S = 20
BUILD_TIMEOUT_S = 1800


def unique(kind: str) -> str:
    """A name for something a test creates: ``fgtest-<kind>-<8 hex>``."""
    return f"fgtest-{kind}-{uuid.uuid4().hex[:8]}"


def owned_by_fieldgate(path: Path) -> Path:
    """``path`` (a directory the test made, and everything in it) owned by the image's user, so
    that a container running as 10001 can use it as a bind mount."""
    for p in [path, *path.rglob("*")]:
        os.chown(p, FIELDGATE_UID, FIELDGATE_UID)
    return path


class PodmanError(AssertionError):
    pass


@dataclass
class Podman:
    """podman with fieldgate's containers.conf, and the image under test."""

    image: str
    env: dict[str, str]
    # What the test created, removed by name at the end (Podman.owned).
    containers: list[str] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    # Containers of those pods, whose logs a failure shows (removed with their pods).
    pod_containers: list[str] = field(default_factory=list)

    def __call__(
        self, *args: str | Path, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = ["podman", *map(str, args)]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=self.env, input=input, check=False
        )
        if check and proc.returncode != 0:
            raise PodmanError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    # ---- containers -----------------------------------------------------------------------
    def run_detached(self, name: str, options: Sequence[str], command: Sequence[str]) -> None:
        """``podman run -d`` of the image as ``name`` (owned: removed at the end)."""
        self.containers.append(name)
        self(
            "run",
            "-d",
            "--name",
            name,
            "--label",
            f"{LABEL}=1",
            "--pull=never",
            *options,
            self.image,
            *command,
        )

    def run_once(self, options: Sequence[str], command: Sequence[str], timeout: float = 120) -> str:
        """Run the image to completion (removed after); its output, or a failure with it."""
        name = unique("once")
        self.containers.append(name)
        proc = self(
            "run", "--rm", "--name", name, "--label", f"{LABEL}=1", "--pull=never", *options, self.image,
            *command, timeout=timeout,
        )  # fmt: skip
        return proc.stdout + proc.stderr

    def state(self, container: str) -> str:
        """running, exited, created, ... or "missing"."""
        proc = self("inspect", "--type", "container", "--format", "{{.State.Status}}", container, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else "missing"

    def logs(self, container: str, tail: int = 80) -> str:
        proc = self("logs", "--tail", str(tail), container, check=False)
        return proc.stdout + proc.stderr

    def inspect(self, container: str, template: str) -> str:
        return self("inspect", "--type", "container", "--format", template, container).stdout.strip()

    def assert_running(self, *containers: str) -> None:
        """Fail at once, with its log, if one of ``containers`` is no longer running."""
        for name in containers:
            state = self.state(name)
            if state != "running":
                raise PodmanError(f"container {name} is {state}; its log:\n{self.logs(name)}")

    def diagnostics(self) -> str:
        """The state and last log lines of every container the test owns that still exists
        (for a failure)."""
        parts = []
        for name in [*self.containers, *self.pod_containers]:
            state = self.state(name)
            if state != "missing":
                parts.append(f"--- {name}: {state}\n{self.logs(name, tail=40)}")
        return "\n".join(parts)

    # ---- clean-up ------------------------------------------------------------------------------
    def remove_all(self) -> None:
        """Remove everything the test created, by name: pods (with their containers), then
        containers, volumes and secrets. Errors are reported after every removal was tried."""
        problems: list[str] = []

        def attempt(*args: str) -> None:
            try:
                proc = self(*args, check=False, timeout=STOP_TIMEOUT_S + 60)
            except subprocess.TimeoutExpired:
                problems.append(f"podman {' '.join(args)}: timed out")
                return
            if (
                proc.returncode != 0
                and "no such" not in proc.stderr
                and "no pod with name" not in proc.stderr
            ):
                problems.append(f"podman {' '.join(args)}: {proc.stderr.strip()}")

        if self.pods:
            attempt("pod", "rm", "--force", "--ignore", "--time", str(STOP_TIMEOUT_S), *self.pods)
        if self.containers:
            attempt("rm", "--force", "--ignore", "--time", str(STOP_TIMEOUT_S), *self.containers)
        if self.volumes:
            attempt("volume", "rm", "--force", *self.volumes)
        for secret in self.secrets:
            attempt("secret", "rm", secret)
        self.pods.clear()
        self.containers.clear()
        self.volumes.clear()
        self.secrets.clear()
        self.pod_containers.clear()
        if problems:
            raise PodmanError("clean-up left something behind:\n" + "\n".join(problems))

    @contextlib.contextmanager
    def owned(self) -> Iterator[Podman]:
        """A copy of this podman whose containers, pods, volumes and secrets are removed when
        the block ends, however it ends."""
        mine = Podman(self.image, self.env)
        try:
            yield mine
        finally:
            mine.remove_all()


def prepare() -> Podman:
    """The image built (or found current) by scripts/container_tools.sh, without installing
    anything. Skips, with the script's reason, on a machine that cannot run containers (the
    script installs podman where it can: scripts/test.sh runs it before the tests)."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: bash scripts/container_tools.sh installs it (Debian packages)")
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT), "--no-install"],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise PodmanError(f"{SCRIPT} did not finish in {BUILD_TIMEOUT_S} s") from err
    if proc.returncode == CANNOT_RUN:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise PodmanError(f"{SCRIPT} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    image = next(
        (
            line.split(":", 1)[1].strip()
            for line in reversed(proc.stdout.splitlines())
            if line.startswith("image:")
        ),
        None,
    )
    if image is None:
        raise PodmanError(f"{SCRIPT} printed no image name:\n{proc.stdout}")
    return Podman(image=image, env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)})
