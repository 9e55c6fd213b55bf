"""The serial adapter inside a real EdgeAgent: events reach the cloud, commands come back.

First against the test cloud (tests/helpers/edge_cloud.py), then through the real cloud
(fieldgate.suite.Suite) with the REST API: a serial measurement is visible in REST and a
command posted to REST is answered over the serial line. Suite builds its own MQTT edge and
takes no extra adapters, so the serial edge here is a second EdgeAgent ("edge-serial")
connected to the suite's gRPC port; the cloud routes the device's commands to it because
the device's events arrive through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.edge.adapters.serial import SerialConfig, build_serial_adapter
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.sims.serial import SerialDeviceSim
from fieldgate.suite import Suite, SuiteOptions
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.edge_cloud import TestCloud
from tests.helpers.waiting import eventually
from tests.integration.test_serial_adapter import port_config

pytestmark = pytest.mark.integration


def edge_config(tmp_path: Path, target: str, edge_id: str = "edge-serial") -> EdgeConfig:
    return EdgeConfig(
        edge_id=edge_id,
        data_dir=tmp_path / edge_id,
        mqtt=MqttConfig(enabled=False),
        uplink=UplinkConfig(target=target),
    )


async def test_both_modes_through_an_edge_agent_to_the_cloud(tmp_path: Path) -> None:
    async with (
        TestCloud() as cloud,
        SerialDeviceSim(tmp_path / "ttyJ", mode="json", device="mcu-j", rate_hz=20) as sim_j,
        SerialDeviceSim(tmp_path / "ttyB", mode="binary", device="mcu-b", rate_hz=20) as sim_b,
    ):
        serial = build_serial_adapter(
            SerialConfig(
                enabled=True,
                ports=(port_config(sim_j.link, "mcu-j", "json"), port_config(sim_b.link, "mcu-b", "binary")),
            ),
            tenants=("default",),
        )
        async with EdgeAgent(edge_config(tmp_path, cloud.target), adapters=[serial]) as agent:

            def measurements(device: str) -> list[pb.Event]:
                return [e for e in cloud.events.values() if e.device == device and e.HasField("measurement")]

            await cloud.wait_until(
                lambda: len(measurements("mcu-j")) >= 10 and len(measurements("mcu-b")) >= 10
            )
            assert all(e.alternate_id for e in cloud.events.values())  # the agent assigned ids
            sample = measurements("mcu-b")[0]
            assert set(sample.measurement.values) == {"seq", "temperature", "humidity"}

            # Link health went up as PRESENCE state changes.
            def presence(device: str) -> list[str]:
                return [
                    e.state_change.current
                    for e in cloud.events.values()
                    if e.device == device and e.HasField("state_change")
                ]

            await cloud.wait_until(
                lambda: "connected" in presence("mcu-j") and "connected" in presence("mcu-b")
            )

            for device, inv in (("mcu-j", "inv-j"), ("mcu-b", "inv-b")):
                down = svc.CommandDown(
                    tenant="default",
                    device=device,
                    invocation=pb.CommandInvocation(invocation=inv, command="ping", params_json="{}"),
                )
                await cloud.send_command(down)

            def delivered(inv: str) -> bool:
                return any(
                    s.invocation == inv and s.status == svc.COMMAND_STATUS_DELIVERED for s in cloud.statuses
                )

            def answered(inv: str) -> bool:
                return any(
                    e.HasField("command_response") and e.command_response.invocation == inv
                    for e in cloud.events.values()
                )

            await cloud.wait_until(lambda: all(delivered(i) and answered(i) for i in ("inv-j", "inv-b")))

            # Unplug: the cloud hears "disconnected"; replug: "connected" again, data flows.
            sim_b.unplug()
            await cloud.wait_until(lambda: presence("mcu-b").count("disconnected") >= 1)
            sim_b.plug()
            before = len(measurements("mcu-b"))
            await cloud.wait_until(lambda: len(measurements("mcu-b")) >= before + 10)
            assert presence("mcu-b").count("connected") >= 2
            assert serial.stats.reconnects == 1
            assert agent.metrics is not None


@pytest.mark.e2e
async def test_serial_device_through_the_real_cloud_and_rest(tmp_path: Path) -> None:
    password = "serial-e2e-pw"
    async with Suite(SuiteOptions(data_dir=tmp_path / "fg", admin_password=password)) as suite:
        async with SerialDeviceSim(tmp_path / "tty0", mode="binary", device="mcu-rest", rate_hz=10) as sim:
            serial = build_serial_adapter(
                SerialConfig(enabled=True, ports=(port_config(sim.link, "mcu-rest", "binary"),)),
                tenants=("default",),
            )
            async with EdgeAgent(edge_config(tmp_path, suite.grpc_target), adapters=[serial]):
                async with httpx.AsyncClient(base_url=suite.rest_url, timeout=10) as api:
                    r = await api.post("/api/v1/auth/token", data={"username": "admin", "password": password})
                    r.raise_for_status()
                    api.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

                    async def measurements() -> list[dict[str, Any]]:
                        r = await api.get(
                            "/api/v1/devices/mcu-rest/events",
                            params={"type": "measurement", "page_size": 100},
                        )
                        items: list[dict[str, Any]] = r.json()["items"] if r.status_code == 200 else []
                        return items

                    events = await eventually(measurements, timeout=20, what="serial measurement in REST")
                    assert {"seq", "temperature", "humidity"} <= set(events[0]["values"])

                    r = await api.post(
                        "/api/v1/devices/mcu-rest/commands",
                        json={"command": "set-interval", "params": {"seconds": 3}},
                    )
                    assert r.status_code == 201, r.text
                    inv_id = r.json()["id"]

                    async def answered() -> dict[str, Any] | None:
                        body: dict[str, Any] = (await api.get(f"/api/v1/invocations/{inv_id}")).json()
                        return body if body["status"] == "answered" else None

                    final = await eventually(answered, timeout=20, what="invocation answered over serial")
                    assert final["response"] == {"interval_s": 3.0}
                    assert sim.commands[-1] == ("set-interval", {"seconds": 3.0})
                    assert sim.interval_s == 3


@pytest.mark.e2e
async def test_a_serial_device_whose_port_vanishes_is_offline(tmp_path: Path) -> None:
    """Through the real cloud: a device whose pty vanishes is ``offline`` (its link down, its
    presence still ``present``), and so is one whose port is not there when the agent starts."""
    password = "serial-link-pw"
    async with Suite(SuiteOptions(data_dir=tmp_path / "fg", admin_password=password)) as suite:
        async with SerialDeviceSim(tmp_path / "tty1", mode="json", device="mcu-gone", rate_hz=10) as sim:
            serial = build_serial_adapter(
                SerialConfig(
                    enabled=True,
                    ports=(
                        port_config(sim.link, "mcu-gone", "json"),
                        port_config(tmp_path / "no-such-tty", "mcu-absent", "json"),
                    ),
                ),
                tenants=("default",),
            )
            async with EdgeAgent(edge_config(tmp_path, suite.grpc_target), adapters=[serial]):
                async with httpx.AsyncClient(base_url=suite.rest_url, timeout=10) as api:
                    r = await api.post("/api/v1/auth/token", data={"username": "admin", "password": password})
                    r.raise_for_status()
                    api.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

                    async def listed(presence: str) -> set[str]:
                        r = await api.get("/api/v1/devices", params={"presence": presence, "page_size": 100})
                        return {d["token"] for d in r.json()["items"]} if r.status_code == 200 else set()

                    async def online() -> bool:
                        return "mcu-gone" in await listed("online")

                    await eventually(online, timeout=30, what="the serial device online")

                    async def absent_offline() -> bool:
                        return "mcu-absent" in await listed("offline")

                    await eventually(absent_offline, timeout=30, what="the device without a port offline")

                    sim.unplug()

                    async def gone_offline() -> dict[str, Any] | None:
                        r = await api.get("/api/v1/devices/mcu-gone/state")
                        body: dict[str, Any] = r.json()
                        return body if (body.get("link") or {}).get("status") == "disconnected" else None

                    state = await eventually(
                        gone_offline, timeout=30, what="the unplugged device's link down"
                    )
                    assert state["presence"] == "present" and state["link"]["adapter"] == "serial"
                    assert "mcu-gone" in await listed("offline")
