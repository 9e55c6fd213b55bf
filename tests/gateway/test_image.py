"""The flashable gateway image (scripts/build_image.sh).

- Its tarball booted with systemd-nspawn: the agent comes up by itself on first boot (machine
  identity made then), the first-boot enrollment unit is skipped without a claim file, and with
  one it runs its hook, which says that enrollment is not built yet and keeps the claim.
- Its raw disk image booted in qemu through OVMF (UEFI) and its own boot loader, kernel and
  initramfs: the agent is active, the kernel enforces the unit's device list (the serial port the
  configuration names opens in the agent's cgroup, another one does not), and lines a device
  writes on that serial port (qemu's second UART, fed by this test) are buffered.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.gateway.machine import MARK, Machine, die_with_parent, unpack
from tests.helpers.waiting import eventually_sync, not_yet

pytestmark = [pytest.mark.distributed, pytest.mark.gateway, pytest.mark.timeout(1200)]

UNIT = "fieldgate-edge.service"
ENROLL = "fieldgate-enroll.service"
ESP_OFFSET = "@@1M"  # the EFI system partition starts at 1 MiB (scripts/build_image.sh)
OVMF = Path("/usr/share/ovmf/OVMF.fd")
QEMU_TIMEOUT_S = 900


def active(m: Machine, unit: str) -> object:
    props = m.show(unit, "ActiveState", "MainPID")
    return props if props["ActiveState"] == "active" else not_yet(props)


def test_tarball_first_boot(gateway_image: dict[str, Path], scratch: Path, tmp_path: Path) -> None:
    root = unpack(gateway_image["tarball"], scratch / "root")
    assert (root / "etc/machine-id").read_text() == ""  # made on first boot, per gateway
    with Machine(root, tmp_path / "nspawn.log") as m:
        eventually_sync(lambda: active(m, UNIT), timeout=120, what="the agent active", interval=0.5)
        assert len(m.sh("cat /etc/machine-id").strip()) == 32
        assert m.sh("hostname").strip() == "fieldgate"
        # No claim file: the enrollment unit's condition skips it.
        enroll = m.show(
            ENROLL, "ConditionResult", "ActiveState", "UnitFileState", "ExecMainStartTimestampMonotonic"
        )
        assert enroll["UnitFileState"] == "enabled"
        assert enroll["ConditionResult"] == "no" and enroll["ActiveState"] == "inactive"
        assert enroll["ExecMainStartTimestampMonotonic"] == "0"
        # A claim file on the boot partition: the hook runs, and says enrollment is not built.
        m.sh(
            "mkdir -p /boot/efi/fieldgate; printf 'cloud=https://cloud.example\\nclaim=fgc-test\\n' > /boot/efi/fieldgate/claim"
        )
        m.run("systemctl", "start", ENROLL, check=False)
        assert m.show(ENROLL, "Result")["Result"] == "exit-code"
        assert "zero-touch enrollment is not built" in m.journal(ENROLL)
        assert m.sh("test -f /boot/efi/fieldgate/claim && echo kept").strip() == "kept"
        assert m.show(UNIT, "ActiveState")["ActiveState"] == "active"


CHECK = r"""
exec > /dev/ttyS2 2>&1
say() { echo "check: $*"; }
wait_active() {
  for i in $(seq 300); do [ "$(systemctl is-active fieldgate-edge)" = active ] && return 0; sleep 1; done
  return 1
}
# systemd.run= boots into the command (kernel-command-line.service is the default target): the
# normal boot's target is started from here, with the units it enables.
systemctl start multi-user.target
wait_active && say "agent active" || say "agent NOT active: $(systemctl status fieldgate-edge --no-pager | tail -n 5)"
say "enroll $(systemctl show -p ConditionResult --value fieldgate-enroll) $(systemctl show -p ActiveState --value fieldgate-enroll)"
say "root $(findmnt -n -o SOURCE /) esp $(findmnt -n -o FSTYPE /boot/efi)"
mkdir -p /run/fieldgate-test
cp /etc/fieldgate/edge.yaml /run/fieldgate-test/edge.yaml
printf 'serial:\n  enabled: true\n  ports:\n    - {port: /dev/ttyS1, device: meter-1}\n' >> /etc/fieldgate/edge.yaml
systemctl restart fieldgate-edge
wait_active && say "agent active with serial" || say "agent NOT active with serial"
say "deviceallow $(systemctl show -p DeviceAllow --value fieldgate-edge)"
cg=/sys/fs/cgroup/system.slice/fieldgate-edge.service
for dev in /dev/ttyS1 /dev/ttyS3; do
  if sh -c "echo \$\$ > $cg/cgroup.procs && exec 3<> $dev" 2>/dev/null; then say "open $dev allowed"; else say "open $dev denied"; fi
done
depth=0
for i in $(seq 300); do
  depth=$(python3 -c "import json,urllib.request; print(json.load(urllib.request.urlopen('http://127.0.0.1:9100/readyz'))['buffer_depth'])" 2>/dev/null || echo 0)
  [ "$depth" -ge 5 ] && break
  sleep 1
done
say "buffered $depth"
say "done"
"""


def _feed_serial(path: Path, checks: Path, stop: threading.Event) -> None:
    """The device on qemu's second UART: a JSON line every 0.2 s once the guest's agent is up.

    Not before: the firmware and the boot loader read every UART as a keyboard, and a key
    pressed during systemd-boot's zero timeout stops it in its menu."""
    while not stop.is_set() and "check: agent active" not in (
        checks.read_text(errors="replace") if checks.exists() else ""
    ):
        stop.wait(0.2)
    sock = None
    while not stop.is_set():
        try:
            if sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(path))
            sock.sendall(b'{"type":"measurement","values":{"temperature":21.5}}\n')
        except OSError:
            if sock is not None:
                sock.close()
            sock = None
        stop.wait(0.2)
    if sock is not None:
        sock.close()


def test_raw_image_boots_in_qemu(gateway_image: dict[str, Path], scratch: Path, tmp_path: Path) -> None:
    qemu = shutil.which("qemu-system-x86_64")
    if os.uname().machine != "x86_64" or qemu is None or not OVMF.exists():
        pytest.skip(
            "qemu-system-x86_64 and OVMF are needed (bash scripts/gateway_base.sh installs them on amd64)"
        )
    disk = scratch / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(gateway_image["image"]), str(disk)], check=True, timeout=300)
    # A boot entry of this test's copy: the image's own kernel, initramfs and root, plus a
    # command run once the system is up, which writes its findings to the third UART and
    # powers the machine off.
    esp = f"{disk}{ESP_OFFSET}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    entry = subprocess.run(
        ["mtype", "-i", esp, "::/loader/entries/fieldgate.conf"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    (tmp_path / "check.sh").write_text(CHECK)
    (tmp_path / "test.conf").write_text(
        entry.replace("title fieldgate gateway", "title test of fieldgate gateway").rstrip("\n")
        # The boot partition is mounted with nofail: nothing orders it before the command.
        + " systemd.run=\"/bin/sh -c 'systemctl start boot-efi.mount && exec sh /boot/efi/check.sh'\""
        + " systemd.run_success_action=poweroff"
        " systemd.run_failure_action=poweroff\n"
    )
    (tmp_path / "loader.conf").write_text("default test.conf\ntimeout 0\n")
    for src, dst in (
        ("check.sh", "::/check.sh"),
        ("test.conf", "::/loader/entries/test.conf"),
        ("loader.conf", "::/loader/loader.conf"),
    ):
        subprocess.run(["mcopy", "-o", "-i", esp, str(tmp_path / src), dst], check=True, env=env)

    serial = tmp_path / "serial.sock"
    console, checks = tmp_path / "console.log", tmp_path / "checks.log"
    # TCG, software emulation: KVM fails inside this kind of machine's own VM (set
    # FIELDGATE_QEMU_ACCEL=kvm where it works). No network device: there is no cloud to reach.
    accel = os.environ.get("FIELDGATE_QEMU_ACCEL", "tcg")
    cmd = [
        qemu, "-machine", f"q35,accel={accel}", "-m", "1024", "-smp", "2", "-bios", str(OVMF),
        "-drive", f"file={disk},format=raw,if=virtio", "-display", "none", "-net", "none",
        "-serial", f"file:{console}", "-serial", f"unix:{serial},server=on,wait=off",
        "-serial", f"file:{checks}",
    ]  # fmt: skip
    stop = threading.Event()
    feeder = threading.Thread(target=_feed_serial, args=(serial, checks, stop), daemon=True)
    with (tmp_path / "qemu.log").open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, MARK: scratch.parent.name},
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        try:
            eventually_sync(serial.exists, timeout=30, what="qemu's serial socket")
            feeder.start()
            start = time.monotonic()
            proc.wait(timeout=QEMU_TIMEOUT_S)
            print(f"qemu ran {time.monotonic() - start:.0f}s")
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            if feeder.is_alive():
                feeder.join(timeout=10)
    found = checks.read_text(errors="replace") if checks.exists() else ""
    context = f"checks:\n{found}\nconsole (end):\n{console.read_text(errors='replace')[-3000:]}"
    assert "check: done" in found, context
    assert "check: agent active\n" in found, context
    assert "check: enroll no inactive" in found, context
    assert "esp vfat" in found, context
    assert "check: agent active with serial" in found, context
    assert "check: deviceallow /dev/ttyS1 rw" in found, context
    assert "check: open /dev/ttyS1 allowed" in found and "check: open /dev/ttyS3 denied" in found, context
    depth = int(found.split("check: buffered ", 1)[1].split()[0])
    assert depth >= 5, context
