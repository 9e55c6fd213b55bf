"""The edge agent under systemd (fieldgate.edge.systemd): sd_notify messages as systemd receives
them on a real datagram socket — READY=1 once the agent is up, WATCHDOG=1 from the event loop's
heartbeat and none while the loop is blocked, STOPPING=1 at stop — and the unit's device list
from the configuration."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldgate.cli import main
from fieldgate.config import validate
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig
from fieldgate.edge.systemd import Notifier, UnitDevicesError, unit_devices
from tests.helpers.waiting import eventually, free_port


class NotifySocket:
    """systemd's end: a bound AF_UNIX datagram socket collecting the messages."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            self.messages.append((time.monotonic(), data.decode()))
        return [m for _, m in self.messages]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(str(tmp_path / "notify"))
    yield s
    s.sock.close()


def test_from_environ() -> None:
    assert Notifier.from_environ({}) is None
    n = Notifier.from_environ(
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "6000000", "WATCHDOG_PID": "42"}, pid=42
    )
    assert n is not None and n.watchdog_s == 6.0
    n.close()
    # The watchdog is another process's (a child inherited the environment): not ours to ping.
    other = Notifier.from_environ(
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "6000000", "WATCHDOG_PID": "7"}, pid=42
    )
    assert other is not None and other.watchdog_s is None
    other.close()
    with pytest.raises(ValueError, match="neither an absolute path"):
        Notifier("relative/sock")


def test_messages_reach_path_and_abstract_sockets(notify_socket: NotifySocket) -> None:
    n = Notifier(notify_socket.sock.getsockname())
    assert n.ready("up") and n.watchdog() and n.stopping()
    assert notify_socket.drain() == ["READY=1\nSTATUS=up", "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping"]
    n.close()
    name = f"@fieldgate-test-{os.getpid()}"
    abstract = NotifySocket(name)
    try:
        m = Notifier(name)
        assert m.status("hello")
        assert abstract.drain() == ["STATUS=hello"]
        m.close()
    finally:
        abstract.sock.close()


def test_a_gone_socket_is_counted_not_raised(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody"))
    assert not n.watchdog() and not n.watchdog()
    assert n.dropped == 2 and n.sent == 0
    n.close()


def _config(tmp_path: Path) -> EdgeConfig:
    return validate(
        EdgeConfig,
        {
            "data_dir": str(tmp_path / "edge"),
            "mqtt": {"enabled": False},
            "uplink": {"target": f"127.0.0.1:{free_port()}", "backoff_max_s": 0.5},
        },
    )


async def test_agent_ready_watchdog_from_the_loop_and_stopping(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    notifier = Notifier(notify_socket.sock.getsockname(), watchdog_s=0.3)  # a beat every 0.1 s
    agent = EdgeAgent(_config(tmp_path), adapters=[], notifier=notifier)
    await agent.start()
    try:
        msgs = notify_socket.drain()
        assert msgs and msgs[-1].startswith("READY=1\nSTATUS=0 events buffered")
        await eventually(
            lambda: sum("WATCHDOG=1" in m for m in notify_socket.drain()) >= 5, what="5 watchdog pings"
        )
        # The event loop blocked (a stuck call in it): no ping while it is, pings again after.
        notify_socket.drain()
        blocked_from = time.monotonic()
        time.sleep(1.0)  # noqa: ASYNC251 -- blocks the loop on purpose
        blocked_to = time.monotonic()

        def pinged_after_block() -> bool:
            notify_socket.drain()  # takes in what arrived
            return any(t > blocked_to and "WATCHDOG=1" in m for t, m in notify_socket.messages)

        await eventually(pinged_after_block, what="pings again after the block")
        during = [
            m for t, m in notify_socket.messages if blocked_from + 0.05 < t < blocked_to and "WATCHDOG=1" in m
        ]
        assert during == []
    finally:
        await agent.stop()
    assert notify_socket.drain()[-1].startswith("STOPPING=1")
    notifier.close()


async def test_agent_without_systemd_sends_nothing(tmp_path: Path) -> None:
    async with EdgeAgent(_config(tmp_path), adapters=[]) as agent:
        assert agent.notifier is None
        await asyncio.sleep(0)


def _with_ports(serial: list[str], modbus: list[str]) -> EdgeConfig:
    return validate(
        EdgeConfig,
        {
            "serial": {
                "enabled": True,
                "ports": [{"port": p, "device": f"d{i}"} for i, p in enumerate(serial)],
            },
            "modbus": {
                "enabled": True,
                "buses": [
                    {
                        "port": p,
                        "devices": [
                            {
                                "device": f"m{i}",
                                "unit": 1,
                                "registers": [{"name": "t", "type": "holding", "address": 0}],
                            }
                        ],
                    }
                    for i, p in enumerate(modbus)
                ],
            },
        },
    )


def test_unit_devices_are_the_configured_ports(tmp_path: Path) -> None:
    devices = unit_devices(
        _with_ports(["/dev/ttyUSB0", "socket://10.0.0.5:4000"], ["/dev/ttyRS485", "/dev/ttyUSB0x"])
    )
    assert devices.devices == ("/dev/ttyUSB0", "/dev/ttyRS485", "/dev/ttyUSB0x")
    assert devices.network_ports == ("socket://10.0.0.5:4000",)
    assert devices.dropin("edge.yaml").endswith(
        "DevicePolicy=closed\nDeviceAllow=\nDeviceAllow=/dev/ttyUSB0 rw\nDeviceAllow=/dev/ttyRS485 rw\nDeviceAllow=/dev/ttyUSB0x rw\n"
    )
    # Disabled adapters open nothing.
    assert (
        unit_devices(
            validate(EdgeConfig, {"serial": {"ports": [{"port": "/dev/ttyS0", "device": "x"}]}})
        ).devices
        == ()
    )
    # A link outside /dev is allowed as the node it leads to; a path that is no device is an error.
    link = tmp_path / "tty-link"
    link.symlink_to("/dev/null")
    assert unit_devices(_with_ports([str(link)], [])).devices == ("/dev/null",)
    with pytest.raises(UnitDevicesError, match=r"serial.ports.0: port .* is not a device node under /dev"):
        unit_devices(_with_ports([str(tmp_path / "plain")], []))
    with pytest.raises(UnitDevicesError, match="not an absolute path"):
        unit_devices(_with_ports(["ttyUSB0"], []))


def test_unit_devices_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "edge.yaml"
    conf.write_text("serial:\n  enabled: true\n  ports:\n    - {port: /dev/ttyFG9, device: meter-1}\n")
    assert main(["edge", "unit-devices", "--config", str(conf)]) == 0
    out, err = capsys.readouterr()
    assert "DeviceAllow=/dev/ttyFG9 rw\n" in out and "/dev/ttyFG9 is not there now" in err
    conf.write_text("serial:\n  enabled: true\n  ports:\n    - {port: ttyFG9, device: meter-1}\n")
    assert main(["edge", "unit-devices", "--config", str(conf)]) == 2
    assert "not an absolute path" in capsys.readouterr().err
