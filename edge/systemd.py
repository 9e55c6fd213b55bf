"""The edge agent under systemd: the sd_notify protocol, and the device list of its unit.

**sd_notify.** A ``Type=notify`` unit learns from the service itself when it is up (``READY=1``),
that it is still alive (``WATCHDOG=1``, at least every ``WatchdogSec=``) and that it is stopping
(``STOPPING=1``); ``STATUS=`` is the line ``systemctl status`` shows. systemd passes the socket
to write to in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket) and the watchdog
period in ``$WATCHDOG_USEC`` (meant for the process ``$WATCHDOG_PID`` names, when set). The
protocol is one datagram of ``KEY=value`` lines on an ``AF_UNIX`` socket, so it is spoken
directly here rather than through a library: PyPI's ``sdnotify`` is unmaintained (last release
2019) and untyped, and ``systemd-python`` needs libsystemd's headers and a compiler to install,
which the gateway's venv would carry for about twenty lines of code.

Messages are sent without blocking: if systemd's socket queue is full the message is dropped
and counted (``dropped``), never waited for — a missed watchdog ping is made up by the next
one, and the event loop must not stall on it (that would itself trip the watchdog).

The watchdog pings come from the agent's event-loop heartbeat (:mod:`fieldgate.edge.probes`),
never from a thread, so an event loop stuck in a blocking call stops pinging and systemd kills
and restarts the agent (``Restart=on-failure`` counts a watchdog timeout as a failure).

**Device access.** The unit runs with ``DevicePolicy=closed``: beside the standard pseudo
devices, only the device nodes named by :func:`unit_devices` — the serial ports of the
``serial`` adapter and the buses of the ``modbus`` adapter in the configuration — may be opened.
``fieldgate edge unit-devices`` prints them as a drop-in, or applies them to the unit with
``systemctl set-property --runtime`` from the unit's ``ExecStartPre=``, so every start of the
agent allows exactly the ports of the configuration it is about to load (docs/operations/gateways.md).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fieldgate.edge.config import EdgeConfig
from fieldgate.edge.errors import EdgeError

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to ``address`` (a socket path, or ``@name``: abstract).

    Build it with :meth:`from_environ`, which returns ``None`` when the agent is not run by
    systemd with a notify socket, so that callers just skip notifying.
    """

    def __init__(self, address: str, *, watchdog_s: float | None = None) -> None:
        if not address or address[0] not in "/@":
            raise ValueError(f"NOTIFY_SOCKET {address!r}: neither an absolute path nor @abstract")
        self.address = address
        self.watchdog_s = watchdog_s
        self.sent = 0
        self.dropped = 0
        self._warned = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None
    ) -> Notifier | None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address:
            return None
        watchdog_s = None
        usec = env.get("WATCHDOG_USEC", "")
        owner = env.get("WATCHDOG_PID", "")
        mine = os.getpid() if pid is None else pid
        if usec.isdigit() and int(usec) > 0 and (not owner or owner == str(mine)):
            watchdog_s = int(usec) / 1_000_000
        return cls(address, watchdog_s=watchdog_s)

    def close(self) -> None:
        self._sock.close()

    def notify(self, *lines: str) -> bool:
        """Send one message of ``KEY=value`` lines; False if it could not be sent (logged once)."""
        target = "\0" + self.address[1:] if self.address[0] == "@" else self.address
        try:
            self._sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, target)
        except OSError as err:
            self.dropped += 1
            if not self._warned:
                self._warned = True
                log.warning("systemd notification to %s not sent: %s", self.address, err)
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")


# ---------------------------------------------------------------------------- device access


class UnitDevicesError(EdgeError):
    """A port of the configuration cannot be turned into a device the unit may allow."""


@dataclass(frozen=True, slots=True)
class UnitDevices:
    """The device nodes a configuration needs (``DeviceAllow=<path> rw`` each), and the ports
    that need none (pyserial URLs such as ``socket://`` or ``rfc2217://``: network access)."""

    devices: tuple[str, ...]
    network_ports: tuple[str, ...] = ()
    absent: tuple[str, ...] = field(default=())

    def dropin(self, source: str) -> str:
        lines = [
            f"# Written by `fieldgate edge unit-devices` from {source}: the device nodes the",
            "# edge agent's adapters open; nothing else under /dev but the standard pseudo devices.",
            "[Service]",
            "DevicePolicy=closed",
            "DeviceAllow=",
        ]
        lines += [f"DeviceAllow={path} rw" for path in self.devices]
        return "\n".join(lines) + "\n"

    def properties(self) -> list[str]:
        """``systemctl set-property`` arguments: the list reset, then each device."""
        return ["DevicePolicy=closed", "DeviceAllow=", *(f"DeviceAllow={path} rw" for path in self.devices)]


def _device_of(port: str, key: str) -> str | None:
    if "://" in port:
        return None
    path = Path(port)
    if not path.is_absolute():
        raise UnitDevicesError(f"{key}: port {port!r} is not an absolute path (a device node under /dev)")
    if str(path).startswith("/dev/"):
        return str(path)
    # A symlink elsewhere (a pty's link, say): allow the node it leads to.
    resolved = path.resolve() if path.exists() else path
    if not str(resolved).startswith("/dev/"):
        raise UnitDevicesError(f"{key}: port {port!r} is not a device node under /dev")
    return str(resolved)


def unit_devices(config: EdgeConfig) -> UnitDevices:
    """The device nodes the enabled serial and Modbus adapters of ``config`` open, in order,
    without duplicates. Ports missing right now are kept (systemd resolves each path when the
    unit starts; one still missing then is not allowed until the next start) and listed in
    ``absent``."""
    wanted: list[tuple[str, str]] = []
    if config.serial.enabled:
        wanted += [(p.port, f"serial.ports.{i}") for i, p in enumerate(config.serial.ports)]
    if config.modbus.enabled:
        wanted += [(b.port, f"modbus.buses.{i}") for i, b in enumerate(config.modbus.buses)]
    devices: list[str] = []
    network: list[str] = []
    for port, key in wanted:
        device = _device_of(port, key)
        if device is None:
            network.append(port)
        elif device not in devices:
            devices.append(device)
    absent = tuple(d for d in devices if not Path(d).exists())
    return UnitDevices(tuple(devices), tuple(network), absent)


def apply_unit_devices(devices: UnitDevices, unit: str, *, systemctl: str = "systemctl") -> None:
    """Set the unit's device list for this boot (``systemctl set-property --runtime``): applied
    at once to the unit's control group, so the agent started next gets exactly these."""
    cmd = [systemctl, "set-property", "--runtime", unit, *devices.properties()]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UnitDevicesError(f"{' '.join(cmd)}: {err}") from err
    if done.returncode != 0:
        raise UnitDevicesError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.returncode}")


__all__ = ["Notifier", "UnitDevices", "UnitDevicesError", "apply_unit_devices", "unit_devices"]
