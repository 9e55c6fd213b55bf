"""Debian root filesystems booted with systemd for the gateway tests (tests/gateway).

:class:`Machine` boots a directory with ``systemd-nspawn --boot`` — systemd as the container's
PID 1, its own network namespace with only a loopback (``--private-network``: the agent's
broker and metrics port stay inside) — and runs commands in it through ``nsenter``. This host
runs no systemd itself, so nspawn neither registers the machine (``--register=no``) nor asks for
a scope (``--keep-unit``); the container's systemd gets a cgroup hierarchy of its own.

The scripts that build what is booted (scripts/build_deb.sh, build_image.sh, gateway_base.sh)
are run through :func:`script`, which turns their exit status 3 ("this machine cannot") into a
skip with their reason.

Nothing outlives the tests: every root filesystem and disk copy lives in a :class:`RunDir`
(``/var/tmp/fieldgate-gateway-tests/<pytest's pid>``). nspawn and qemu get a parent-death
signal (pytest killed: nspawn powers its container off, qemu dies), and every session first
sweeps the run directories of sessions that are gone (killed with SIGKILL, say): processes whose
root is inside them (an orphaned container's systemd and its services), qemu processes they
started, then the directories themselves.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from tests.helpers.waiting import eventually_sync, not_yet

REPO = Path(__file__).resolve().parents[2]
CANNOT = 3
BUILD_TIMEOUT_S = 1800
BOOT_TIMEOUT_S = 120
RUNS = Path("/var/tmp/fieldgate-gateway-tests")
MARK = "FIELDGATE_GATEWAY_TEST"  # in the environment of the qemu processes a session starts
_PR_SET_PDEATHSIG = 1


class MachineError(RuntimeError):
    pass


def script(name: str, *args: str) -> dict[str, str]:
    """Run scripts/<name> and return its ``key: value`` lines; skip on exit status 3."""
    # Its own process group, all killed if the test is interrupted (dpkg-deb, tar, pip: not
    # only bash), with a parent-death signal should pytest itself be killed.
    with subprocess.Popen(
        ["bash", str(REPO / "scripts" / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
        preexec_fn=die_with_parent(signal.SIGTERM),
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=BUILD_TIMEOUT_S)
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise
    if proc.returncode == CANNOT:
        pytest.skip(stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise MachineError(f"scripts/{name} exited {proc.returncode}:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return {
        k.strip(): v.strip()
        for k, sep, v in (line.partition(": ") for line in stdout.splitlines())
        if sep and not k.startswith("==")
    }


def can_boot() -> None:
    """Skip unless this machine can boot a container with systemd-nspawn (root, the tool)."""
    if os.geteuid() != 0:
        pytest.skip("booting root filesystems with systemd-nspawn needs root")
    if shutil.which("systemd-nspawn") is None or shutil.which("nsenter") is None:
        pytest.skip(
            "systemd-nspawn is not installed: bash scripts/gateway_base.sh installs it (systemd-container)"
        )


def unpack(tarball: Path, root: Path) -> Path:
    root.mkdir(parents=True)
    subprocess.run(
        ["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xf", str(tarball)],
        check=True,
        timeout=600,
    )
    return root


def die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when the process that started it dies."""

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")

    return preexec


def _alive(pid: int) -> bool:
    """Running (a zombie is not: it only waits for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def sweep(run: Path) -> list[str]:
    """Kill what a session left under ``run`` and remove it; returns what was killed."""
    killed: list[str] = []
    prefix = str(run.resolve()) + "/"
    mark = f"{MARK}={run.name}".encode()
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            root = os.readlink(f"/proc/{pid}/root") + "/"
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if root.startswith(prefix) or mark in environ:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(f"{pid} ({comm})")
            except ProcessLookupError:
                pass
    pids = [int(p.split()[0]) for p in killed]

    def gone() -> object:
        alive = [p for p in pids if _alive(p)]
        return not_yet(alive) if alive else True

    eventually_sync(gone, timeout=30, what="the killed processes gone")
    shutil.rmtree(run, ignore_errors=True)
    return killed


class RunDir:
    """This session's directory of root filesystems and disks, and the sweep of older ones."""

    def __init__(self) -> None:
        self.path = RUNS / str(os.getpid())

    def __enter__(self) -> Path:
        RUNS.mkdir(parents=True, exist_ok=True)
        for old in RUNS.iterdir():
            if old.name.isdigit() and old != self.path and not _alive(int(old.name)):
                left = sweep(old)
                if left:
                    print(f"gateway tests: killed what an earlier session left: {', '.join(left)}")
        self.path.mkdir(exist_ok=True)
        return self.path

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        left = sweep(self.path)
        if left and et is None:
            raise MachineError(f"the gateway tests left processes running: {', '.join(left)}")


class Machine:
    """``with Machine(root) as m: m.sh("systemctl is-active fieldgate-edge")``."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    def __enter__(self) -> Self:
        try:
            self.boot()
        except BaseException:
            self.poweroff()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.poweroff()

    def boot(self) -> None:
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--boot",
                    "--register=no",
                    "--keep-unit",
                    "--private-network",
                    "--console=pipe",
                    "-D",
                    str(self.root),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # pytest killed: nspawn powers the container off (SIGTERM is its poweroff).
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        pid1 = eventually_sync(self._find_init, timeout=BOOT_TIMEOUT_S, what="the container's systemd")
        assert pid1 is not None
        self.pid1 = pid1
        eventually_sync(
            self._booted, timeout=BOOT_TIMEOUT_S, what="the container's boot to finish", interval=0.5
        )

    def _find_init(self) -> int | None:
        proc = self._proc
        assert proc is not None
        if proc.poll() is not None:
            raise MachineError(f"systemd-nspawn exited {proc.returncode}: {self.log.read_text()[-2000:]}")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == proc.pid and (entry / "comm").read_text().strip() == "systemd":
                return int(entry.name)
        return None

    def _booted(self) -> object:
        state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
        return state if state in ("running", "degraded") else not_yet(state)

    def run(self, *cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the container (all its namespaces), as root."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "--", *cmd],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise MachineError(
                f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
        return done

    def sh(self, script: str, *, check: bool = True, timeout: float = 120) -> str:
        return self.run("sh", "-euc", script, check=check, timeout=timeout).stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit, check=False).stdout

    def poweroff(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # The root filesystem is thrown away: no orderly shutdown, systemd reboots at once.
        self.run("systemctl", "poweroff", "--force", "--force", check=False, timeout=30)
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
