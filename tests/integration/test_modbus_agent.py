"""The Modbus adapter inside a real EdgeAgent, with the test cloud on the other end of the uplink.

Measurements of two simulated units reach the cloud with their units; a command sent down by
the cloud is written to the device's registers, reported DELIVERED, and its command_response
travels up like any event; a unit that falls silent shows up as a PRESENCE change.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldgate.edge.adapters.modbus import ModbusConfig, build_modbus_adapter
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import CommandsConfig, EdgeConfig, MqttConfig, UplinkConfig
from fieldgate.sims.modbus import ModbusSlaveSim, command_map, register_map
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from tests.helpers.edge_cloud import TestCloud

pytestmark = pytest.mark.integration


@pytest.fixture
async def cloud() -> AsyncIterator[TestCloud]:
    async with TestCloud() as c:
        yield c


def events_of(cloud: TestCloud, device: str, kind: str) -> list[pb.Event]:
    return [e for e in cloud.events.values() if e.device == device and e.WhichOneof("payload") == kind]


async def test_modbus_through_the_agent_to_the_cloud(tmp_path: Path, cloud: TestCloud) -> None:
    async with ModbusSlaveSim(units=(1, 2), tick_s=0.05) as sim:
        modbus = ModbusConfig.model_validate(
            {
                "enabled": True,
                "buses": [
                    {
                        "port": str(sim.path),
                        "timeout_s": 0.2,
                        "retries": 1,
                        "devices": [
                            {
                                "device": f"meter-{u}",
                                "unit": u,
                                "poll_interval_s": 0.1,
                                "registers": register_map(),
                                "commands": command_map(),
                            }
                            for u in sim.units
                        ],
                    }
                ],
            }
        )
        config = EdgeConfig(
            edge_id="edge-modbus",
            data_dir=tmp_path / "edge",
            mqtt=MqttConfig(enabled=False),
            uplink=UplinkConfig(target=cloud.target, batch_max_delay_ms=2, backoff_initial_s=0.05),
            commands=CommandsConfig(response_timeout_s=5.0),
        )
        adapter = build_modbus_adapter(modbus, tenants=config.tenants)
        async with EdgeAgent(config, adapters=[adapter]) as agent:
            await cloud.wait_until(
                lambda: (
                    len(events_of(cloud, "meter-1", "measurement")) >= 3
                    and len(events_of(cloud, "meter-2", "measurement")) >= 3
                )
            )
            m = events_of(cloud, "meter-1", "measurement")[0]
            assert m.metadata["unit.temperature"] == "°C" and m.alternate_id
            assert set(m.measurement.values) == {r["name"] for r in register_map()}

            down = svc.CommandDown(
                tenant="default",
                device="meter-2",
                invocation=pb.CommandInvocation(
                    invocation="inv-42", command="set-setpoint", params_json='{"value": 25.5}'
                ),
            )
            await cloud.send_command(down)
            await cloud.wait_until(lambda: bool(events_of(cloud, "meter-2", "command_response")))
            (response,) = events_of(cloud, "meter-2", "command_response")
            assert response.command_response.invocation == "inv-42"
            assert json.loads(response.command_response.response_json) == {"written": {"setpoint": 25.5}}
            assert sim.values(2)["setpoint"] == pytest.approx(25.5)
            await cloud.wait_until(
                lambda: any(
                    s.invocation == "inv-42" and s.status == svc.COMMAND_STATUS_DELIVERED
                    for s in cloud.statuses
                )
            )
            assert not any(s.status == svc.COMMAND_STATUS_FAILED for s in cloud.statuses)

            sim.silence(1)
            await cloud.wait_until(
                lambda: any(
                    e.state_change.current == "disconnected"
                    for e in events_of(cloud, "meter-1", "state_change")
                )
            )
            before = len(events_of(cloud, "meter-2", "measurement"))
            await cloud.wait_until(lambda: len(events_of(cloud, "meter-2", "measurement")) >= before + 5)
            text = agent.metrics.render()
            assert "modbus" in text
