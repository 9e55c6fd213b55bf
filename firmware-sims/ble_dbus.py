"""A private D-Bus message bus for the simulated BlueZ: one ``dbus-daemon`` process we own.

bleak's BlueZ backend talks to ``org.bluez`` on the *system* bus, whose address it takes from
``DBUS_SYSTEM_BUS_ADDRESS``. In CI there is no bluetoothd (and no system bus we may touch), so
the simulation starts its own ``dbus-daemon`` with a small configuration file in a temporary
directory: it listens on a unix socket there, allows everyone to own names and to send to
everyone (it is private to the test), and prints its address once it is listening — that line
is the readiness signal. Stopping kills the process by its PID and removes the directory.

The caller points ``DBUS_SYSTEM_BUS_ADDRESS`` at :attr:`PrivateDbusDaemon.address` only in the
process or test that needs it (``monkeypatch.setenv``); nothing here touches the environment.
dbus-daemon reads ``/etc/machine-id`` (or ``/var/lib/dbus/machine-id``) only to answer
``GetMachineId``; a missing file does not stop it from serving.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from xml.sax.saxutils import escape

from fieldgate.sims.errors import SimError

DBUS_DAEMON = "/usr/bin/dbus-daemon"

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>fieldgate-ble-sim</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
  <limit name="max_incoming_bytes">134217728</limit>
  <limit name="max_outgoing_bytes">134217728</limit>
  <limit name="max_message_size">33554432</limit>
</busconfig>
"""


def _die_with_parent() -> None:
    """In the child: SIGTERM the daemon if the process that owns it dies without stopping it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class PrivateDbusDaemon:
    """Owns one ``dbus-daemon`` process. ``with PrivateDbusDaemon() as bus: bus.address``."""

    def __init__(self, *, executable: str = DBUS_DAEMON, start_timeout_s: float = 10.0) -> None:
        self._executable = executable
        self._timeout = start_timeout_s
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> str:
        """Start the daemon and wait until it listens; returns its address."""
        if self._proc is not None:
            return self.address
        if not os.access(self._executable, os.X_OK):
            raise SimError(f"{self._executable} not found (Debian package 'dbus')")
        self._dir = Path(tempfile.mkdtemp(prefix="fieldgate-dbus-"))
        socket_path = self._dir / "bus"
        config = self._dir / "bus.conf"
        config.write_text(_CONFIG.format(socket=escape(str(socket_path))), encoding="utf-8")
        self._proc = subprocess.Popen(
            [self._executable, f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # only prctl: safe between fork and exec
        )
        try:
            self.address = self._wait_for_address()
        except BaseException:
            self.stop()
            raise
        return self.address

    def _wait_for_address(self) -> str:
        """The daemon prints its address after it is listening: that is the readiness signal."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + self._timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SimError(f"dbus-daemon did not report its address within {self._timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise SimError(f"dbus-daemon exited: {err.strip()}")
            buf += chunk
        return buf.split(b"\n", 1)[0].decode().strip()

    def stop(self) -> None:
        """Terminate the daemon by PID (SIGKILL after 5 s) and remove the temporary directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.address = ""

    def __enter__(self) -> PrivateDbusDaemon:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
