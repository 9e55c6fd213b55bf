"""The fieldgate-edge package in a fresh Debian root filesystem booted with systemd (nspawn):
installed with apt, the unit reaches active (sd_notify READY=1) under its sandbox, the agent
buffers what a device sends while there is no cloud, the watchdog restarts a hung agent with its
buffer intact, the device list follows the configuration, `apt remove` keeps the buffer and
`apt purge` removes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gateway.machine import Machine
from tests.helpers.waiting import eventually_sync, not_yet

pytestmark = [pytest.mark.distributed, pytest.mark.gateway, pytest.mark.timeout(900)]

UNIT = "fieldgate-edge.service"
FIELDGATE = "/opt/fieldgate/current/bin/fieldgate"
READYZ = (
    "import json, urllib.request\n"
    "try:\n"
    "    body = urllib.request.urlopen('http://127.0.0.1:9100/readyz', timeout=5).read()\n"
    "except OSError as err:\n"
    "    body = getattr(err, 'read', lambda: b'{}')()\n"
    "print(body.decode())\n"
)


def active(m: Machine) -> object:
    props = m.show(UNIT, "ActiveState", "SubState", "MainPID", "NRestarts")
    return props if props["ActiveState"] == "active" else not_yet(props)


def readyz(m: Machine) -> dict[str, object]:
    out = m.run("python3", "-c", READYZ, check=False).stdout.strip() or "{}"
    parsed: dict[str, object] = json.loads(out)
    return parsed


def buffered(m: Machine, at_least: int) -> object:
    body = readyz(m)
    depth = body.get("buffer_depth")
    return body if isinstance(depth, int) and depth >= at_least else not_yet(body)


def test_install_run_watchdog_remove_purge(fresh_root: Path, gateway_deb: Path, tmp_path: Path) -> None:
    (fresh_root / "var/tmp" / gateway_deb.name).write_bytes(gateway_deb.read_bytes())
    with Machine(fresh_root, tmp_path / "nspawn.log") as m:
        # apt, offline: every dependency is in the base; a missing one fails here.
        m.run("apt-get", "install", "-y", f"/var/tmp/{gateway_deb.name}", timeout=300)

        # The user, its groups, the configuration, the venv slot.
        groups = m.run("id", "-nG", "fieldgate").stdout.split()
        assert {"fieldgate", "dialout", "bluetooth"} <= set(groups)
        version = gateway_deb.name.split("_")[1].rsplit("-", 1)[0]
        assert m.sh("readlink /opt/fieldgate/current").strip() == version
        assert m.sh("stat -c '%U:%G %a' /etc/fieldgate/edge.yaml").strip() == "root:fieldgate 640"

        # Started by the package, active once the agent said READY=1, under its sandbox.
        eventually_sync(lambda: active(m), timeout=120, what="the unit active", interval=0.5)
        props = m.show(
            UNIT,
            "Type",
            "User",
            "WatchdogUSec",
            "Restart",
            "ProtectSystem",
            "NoNewPrivileges",
            "StateDirectory",
            "DevicePolicy",
            "StatusText",
            "UnitFileState",
        )
        assert props["Type"] == "notify" and props["User"] == "fieldgate"
        assert props["WatchdogUSec"] == "30s" and props["Restart"] == "on-failure"
        assert props["ProtectSystem"] == "strict" and props["NoNewPrivileges"] == "yes"
        assert props["StateDirectory"] == "fieldgate" and props["DevicePolicy"] == "closed"
        assert props["UnitFileState"] == "enabled"
        assert "events buffered" in props["StatusText"]
        assert (
            m.sh("stat -c %U /proc/$(systemctl show -p MainPID --value fieldgate-edge)").strip()
            == "fieldgate"
        )
        # The sandbox, seen from the agent's own mount namespace: /etc is read-only even for
        # root there, its state directory is not.
        main = m.show(UNIT, "MainPID")["MainPID"]
        write = "; ".join(
            f"touch {p} 2>/dev/null && echo {p} written || echo {p} refused"
            for p in ("/etc/fieldgate/x", "/usr/x", "/home/x", "/var/lib/fieldgate/x")
        )
        seen = m.run("nsenter", "-t", main, "-m", "--", "sh", "-c", write).stdout.split("\n")
        assert seen[:4] == [
            "/etc/fieldgate/x refused",
            "/usr/x refused",
            "/home/x refused",
            "/var/lib/fieldgate/x written",
        ]
        m.run("rm", "-f", "/var/lib/fieldgate/x")

        # No cloud: what a device sends is buffered on disk.
        m.run(
            FIELDGATE,
            "sim",
            "mqtt",
            "--device",
            "boiler-1",
            "--count",
            "20",
            "--rate",
            "0",
            "--qos",
            "1",
            timeout=180,
        )
        eventually_sync(lambda: buffered(m, 20), timeout=60, what="20 events buffered")
        assert m.sh("test -s /var/lib/fieldgate/buffer.db && echo yes").strip() == "yes"

        # A hung agent: its heartbeat stops pinging, the watchdog kills it, systemd restarts it.
        # (A drop-in shortens the watchdog to keep the test short.)
        m.sh(
            "mkdir -p /run/systemd/system/fieldgate-edge.service.d\n"
            "printf '[Service]\\nWatchdogSec=5s\\nTimeoutAbortSec=5s\\n' > /run/systemd/system/fieldgate-edge.service.d/test.conf\n"
            "systemctl daemon-reload\nsystemctl restart fieldgate-edge"
        )
        before = eventually_sync(lambda: active(m), timeout=120, what="the unit active again", interval=0.5)
        assert isinstance(before, dict)
        m.run("systemctl", "kill", "--kill-whom=main", "--signal=SIGSTOP", UNIT)

        def restarted() -> object:
            props = active(m)
            if isinstance(props, dict) and props["MainPID"] != before["MainPID"]:
                return props
            return not_yet(props)

        after = eventually_sync(
            restarted,
            timeout=120,
            what="the hung agent restarted",
            interval=0.5,
        )
        assert isinstance(after, dict)
        assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
        assert "Watchdog timeout" in m.journal(UNIT)
        eventually_sync(lambda: buffered(m, 20), timeout=60, what="the buffer intact after the restart")

        # The device list follows the configuration at every start.
        m.sh(
            "cat >> /etc/fieldgate/edge.yaml <<'EOF'\n"
            "serial:\n  enabled: true\n  ports:\n    - {port: /dev/ttyFG0, device: meter-1}\n"
            "modbus:\n  enabled: true\n  buses:\n    - port: /dev/ttyFG1\n      devices:\n"
            "        - {device: pump-1, unit: 3, registers: [{name: t, type: holding, address: 0}]}\n"
            "EOF\n"
            "systemctl restart fieldgate-edge"
        )
        eventually_sync(
            lambda: active(m), timeout=120, what="the unit active with serial ports", interval=0.5
        )
        # One DeviceAllow= line per device (Machine.show keeps one value per property).
        allowed = m.run("systemctl", "show", UNIT, "--property=DeviceAllow").stdout.splitlines()
        assert sorted(allowed) == ["DeviceAllow=/dev/ttyFG0 rw", "DeviceAllow=/dev/ttyFG1 rw"], allowed
        printed = m.run(FIELDGATE, "edge", "unit-devices", "--config", "/etc/fieldgate/edge.yaml").stdout
        assert "DeviceAllow=/dev/ttyFG0 rw\nDeviceAllow=/dev/ttyFG1 rw\n" in printed
        # A configuration that does not load stops the start before the agent runs, saying why.
        m.sh(
            "cp /etc/fieldgate/edge.yaml /root/edge.yaml; echo 'uplink: {batch_max_events: 0}' >> /etc/fieldgate/edge.yaml"
        )
        m.run("systemctl", "restart", UNIT, check=False)
        assert m.show(UNIT, "ActiveState")["ActiveState"] in ("failed", "activating")
        assert "batch_max_events" in m.journal(UNIT)
        m.sh(
            "cp /root/edge.yaml /etc/fieldgate/edge.yaml; systemctl reset-failed fieldgate-edge; systemctl restart fieldgate-edge"
        )
        eventually_sync(lambda: active(m), timeout=120, what="the unit active after the fix", interval=0.5)

        # apt remove: the agent and its venv go; the buffer and the configuration stay.
        m.run("apt-get", "remove", "-y", "fieldgate-edge", timeout=300)
        assert m.show(UNIT, "ActiveState")["ActiveState"] in ("inactive", "failed")
        assert m.sh("ls /opt/fieldgate 2>/dev/null | wc -l").strip() == "0"
        assert (
            m.sh(
                "test -s /var/lib/fieldgate/buffer.db && test -f /etc/fieldgate/edge.yaml && echo kept"
            ).strip()
            == "kept"
        )
        # apt purge: both go.
        m.run("apt-get", "purge", "-y", "fieldgate-edge", timeout=300)
        assert m.sh("ls -d /var/lib/fieldgate /etc/fieldgate 2>/dev/null | wc -l").strip() == "0"
        assert m.run("dpkg-query", "-W", "fieldgate-edge", check=False).returncode != 0
