"""Debian root filesystems booted with systemd for the gateway tests (tests/gateway).

:class:`Machine` boots a directory with ``systemd-nspawn --boot`` — systemd as the container's
PID 1, its own network namespace with only a loopback (``--private-network``: the agent's
broker and metrics port stay inside) — and runs commands in it through ``nsenter``. This host
runs no systemd itself, so nspawn neither registers the machine (``--register=no``) nor asks for
a scope (``--keep-unit``); the container's systemd gets a cgroup hierarchy of its own.

The scripts that build what is booted (scripts/build_deb.sh, build_image.sh, gateway_base.sh)
are run through :func:`script`, which turns their exit status 3 ("this machine cannot") into a
skip with their reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from tests.helpers.waiting import eventually_sync, not_yet

REPO = Path(__file__).resolve().parents[2]
CANNOT = 3
BUILD_TIMEOUT_S = 1800
BOOT_TIMEOUT_S = 120


class MachineError(RuntimeError):
    pass


def script(name: str, *args: str) -> dict[str, str]:
    """Run scripts/<name> and return its ``key: value`` lines; skip on exit status 3."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
        cwd=REPO,
    )
    if proc.returncode == CANNOT:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise MachineError(
            f"scripts/{name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return {
        k.strip(): v.strip()
        for k, sep, v in (line.partition(": ") for line in proc.stdout.splitlines())
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
            )
        self.pid1 = eventually_sync(self._find_init, timeout=BOOT_TIMEOUT_S, what="the container's systemd")
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
