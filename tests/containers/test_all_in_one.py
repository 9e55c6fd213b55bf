"""The all-in-one ``fieldgate up`` in fieldgate's image: the cloud, an edge agent with its MQTT
broker and simulated devices in one container — read-only root, no capabilities, the image's
non-root user, its state in a bind-mounted directory. REST answers, the simulated devices'
events are stored, and ``podman stop`` (SIGTERM) stops it cleanly.

The container shares the machine's network (``--network host``): its listeners are on
127.0.0.1, on free ports the test chose."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.containers.podman import HARDENED, STOP_TIMEOUT_S, Podman, owned_by_fieldgate, unique
from tests.helpers.waiting import eventually, free_port, not_yet

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.containers,
    # The session's first container test may build the image (minutes on a cold cache).
    pytest.mark.timeout(1800),
]

PASSWORD = "container-aio-pw"


async def test_fieldgate_up_in_a_container(podman: Podman, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    data = owned_by_fieldgate(tmp_path / "data")
    rest, grpc, mqtt = free_port(), free_port(), free_port()
    name = unique("aio")
    podman.run_detached(
        name,
        [
            *HARDENED,
            "--network", "host",
            "--volume", f"{data}:/var/lib/fieldgate/data",
            "--env", f"FIELDGATE_ADMIN_PASSWORD={PASSWORD}",
        ],
        [
            "up", "--data-dir", "/var/lib/fieldgate/data", "--rest-port", str(rest), "--grpc-port", str(grpc),
            "--mqtt-port", str(mqtt), "--sims", "2", "--sim-rate", "2",
        ],
    )  # fmt: skip
    base = f"http://127.0.0.1:{rest}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as api:

        async def ready() -> object:
            podman.assert_running(name)
            try:
                r = await api.get("/readyz")
            except httpx.TransportError as err:
                return not_yet(repr(err))
            return True if r.status_code == 200 else not_yet(f"{r.status_code} {r.text}")

        await eventually(ready, timeout=120, what="/readyz of fieldgate up in the container", interval=0.5)
        r = await api.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
        assert r.status_code == 200, r.text
        api.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

        async def stored() -> list[dict[str, Any]] | object:
            podman.assert_running(name)
            r = await api.get("/api/v1/devices/sim-0001/events", params={"type": "measurement"})
            if r.status_code != 200:
                return not_yet(f"{r.status_code} {r.text}")
            items: list[dict[str, Any]] = r.json()["items"]
            return items

        events = await eventually(stored, timeout=60, what="sim-0001's measurements stored", interval=0.5)
        assert events[0]["values"], events[0]

    # What ran is what the test asked for: the image's user, read-only, no capabilities.
    assert podman.inspect(name, "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}") == "10001:10001 true"
    status = podman("exec", name, "cat", "/proc/1/status").stdout
    assert "CapEff:\t0000000000000000" in status, status
    # The state is in the bind-mounted directory, written as 10001.
    assert (data / "cloud").is_dir() and (data / "cloud").stat().st_uid == 10001

    # SIGTERM: fieldgate drains and exits 0 well within podman's grace period.
    podman("stop", "--time", str(STOP_TIMEOUT_S), name, timeout=STOP_TIMEOUT_S + 30)
    assert podman.inspect(name, "{{.State.ExitCode}}") == "0", podman.logs(name)
    assert "stopped." in podman.logs(name, tail=5)
