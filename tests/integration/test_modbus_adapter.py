"""The Modbus RTU adapter against the pymodbus slave simulator on real pseudo-terminals.

The adapter opens the tty path with pyserial exactly as on hardware. Assertions are on what a
user sees — measurement events and their values/units, link health, register contents of the
device — and on counts, never on timings.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from fieldgate.edge.adapters.modbus import ModbusConfig, build_modbus_adapter
from fieldgate.edge.adapters.modbus.adapter import ModbusAdapter
from fieldgate.edge.errors import DeliveryError
from fieldgate.sims.modbus import ModbusSlaveSim, command_map, register_map
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.integration


class RecordingSink:
    """The adapter's sink: keeps what it is given (the agent's role, without a buffer)."""

    def __init__(self) -> None:
        self.events: list[pb.Event] = []
        self.online: list[tuple[str, str]] = []

    async def accept(self, events: Sequence[pb.Event], *, source: str) -> None:
        self.events.extend(events)

    async def reject(self, payload: bytes, *, source: str, reason: str, tenant: str = "") -> None:
        raise AssertionError(f"nothing should be rejected: {reason}")

    async def on_online(self, tenant: str, device: str) -> None:
        self.online.append((tenant, device))

    def measurements(self, device: str) -> list[pb.Event]:
        return [e for e in self.events if e.device == device and e.WhichOneof("payload") == "measurement"]

    def responses(self) -> list[pb.Event]:
        return [e for e in self.events if e.WhichOneof("payload") == "command_response"]


def modbus_config(sim: ModbusSlaveSim, *, interval_s: float = 0.05, **bus: Any) -> ModbusConfig:
    devices = [
        {
            "device": f"meter-{u}",
            "unit": u,
            "poll_interval_s": interval_s,
            "registers": register_map(),
            "commands": command_map(),
        }
        for u in sim.units
    ]
    data: dict[str, Any] = {"port": str(sim.path), "timeout_s": 0.2, "retries": 1, "devices": devices}
    data.update(bus)
    return ModbusConfig.model_validate({"enabled": True, "buses": [data]})


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSlaveSim]:
    async with ModbusSlaveSim(units=(1, 2), tick_s=0.05, seed=7) as s:
        yield s


@pytest.fixture
async def running(sim: ModbusSlaveSim) -> AsyncIterator[tuple[ModbusAdapter, RecordingSink]]:
    adapter = build_modbus_adapter(modbus_config(sim), tenants=["default"])
    sink = RecordingSink()
    await adapter.start(sink, sink.on_online)
    try:
        yield adapter, sink
    finally:
        await adapter.stop()


async def test_polls_give_scaled_values_with_units(
    sim: ModbusSlaveSim, running: tuple[ModbusAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    sim.freeze()
    sim.set_reading(1, temperature=-12.3, humidity=55.5, energy=70_000, voltage=231.25)
    sim.set_reading(2, temperature=30.0, energy=5)
    expected = {1: sim.values(1), 2: sim.values(2)}

    def matches(unit: int) -> bool:
        ms = sink.measurements(f"meter-{unit}")
        return bool(ms) and dict(ms[-1].measurement.values) == pytest.approx(expected[unit])

    await eventually(lambda: matches(1) and matches(2), what="both units' frozen readings")
    event = sink.measurements("meter-1")[-1]
    values = event.measurement.values
    assert values["temperature"] == pytest.approx(-12.3)
    assert values["energy"] == 70_000  # uint32 across two registers
    assert values["calibration"] == 0 and values["voltage"] == pytest.approx(231.25)
    assert event.metadata["unit.temperature"] == "°C"
    assert event.metadata["unit.energy"] == "Wh"
    assert event.metadata["modbus.unit"] == "1"
    assert "unit.relay" not in event.metadata  # no unit configured
    assert event.tenant == "default" and event.event_time_ms > 0 and not event.alternate_id
    assert sorted(sink.online) == [("default", "meter-1"), ("default", "meter-2")]
    assert adapter.is_online("default", "meter-1") and adapter.owns("default", "meter-2")
    assert not adapter.owns("default", "meter-9")


async def test_values_change_over_time(running: tuple[ModbusAdapter, RecordingSink]) -> None:
    _, sink = running
    await eventually(lambda: len({m.measurement.values["energy"] for m in sink.measurements("meter-1")}) >= 3)


async def test_a_silent_unit_goes_offline_without_stalling_the_other(
    sim: ModbusSlaveSim, running: tuple[ModbusAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    await eventually(
        lambda: adapter.is_online("default", "meter-2") and adapter.is_online("default", "meter-1")
    )
    sim.silence(2)
    await eventually(lambda: not adapter.is_online("default", "meter-2"), what="meter-2 offline")
    health = adapter.health.snapshot()[("default", "meter-2")]
    assert not health.connected and health.errors["timeout"] >= 1
    requests_before = sim.counters.requests.get(2, 0)
    m1_requests_before = sim.counters.requests.get(1, 0)
    polled_before = len(sink.measurements("meter-1"))
    m2_before = len(sink.measurements("meter-2"))
    await eventually(lambda: len(sink.measurements("meter-1")) >= polled_before + 30, what="meter-1 polls")
    # meter-1 kept its pace; meter-2 was only probed (one request each, with backoff), not polled.
    assert len(sink.measurements("meter-2")) == m2_before
    # (Wire requests: each probe is one request, sent twice with retries=1.)
    probes = sim.counters.requests.get(2, 0) - requests_before
    assert probes * 10 <= sim.counters.requests.get(1, 0) - m1_requests_before
    assert adapter.health.snapshot()[("default", "meter-1")].connected

    sim.silence(2, False)
    await eventually(lambda: adapter.is_online("default", "meter-2"), what="meter-2 back")
    await eventually(lambda: len(sink.measurements("meter-2")) > m2_before)
    assert sink.online.count(("default", "meter-2")) == 2
    assert adapter.health.snapshot()[("default", "meter-2")].reconnects == 1
    assert adapter.stats.devices_lost == 1 and adapter.stats.devices_recovered == 1


async def test_exception_responses_are_counted_and_other_blocks_still_read(
    sim: ModbusSlaveSim, running: tuple[ModbusAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    sim.fail_address(1, "holding", 1, code=2)
    await eventually(
        lambda: adapter.health.snapshot()[("default", "meter-1")].errors.get("exception_2", 0) >= 3,
        what="exception_2 counted",
    )
    last = sink.measurements("meter-1")[-1].measurement.values
    assert "temperature" in last and "setpoint" not in last  # the holding block failed, nothing else
    assert adapter.is_online("default", "meter-1")
    assert "exception_2" not in adapter.health.snapshot()[("default", "meter-2")].errors


async def test_crc_errors_are_counted_per_device(
    sim: ModbusSlaveSim, running: tuple[ModbusAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    await eventually(lambda: adapter.is_online("default", "meter-2"))
    sim.corrupt_crc(2, 3)
    await eventually(
        lambda: adapter.health.snapshot()[("default", "meter-2")].errors.get("crc", 0) == 3,
        what="3 CRC errors on meter-2",
    )
    assert "crc" not in adapter.health.snapshot()[("default", "meter-1")].errors
    before = len(sink.measurements("meter-2"))
    await eventually(lambda: len(sink.measurements("meter-2")) > before + 3)  # retries recovered


async def test_write_command_changes_registers_and_answers(
    sim: ModbusSlaveSim, running: tuple[ModbusAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    await eventually(lambda: adapter.is_online("default", "meter-1"))
    inv = pb.CommandInvocation(invocation="inv-1", command="set-setpoint", params_json='{"value": -4.5}')
    await adapter.send_command("default", "meter-1", inv)
    assert sim.values(1)["setpoint"] == pytest.approx(-4.5)
    (response,) = sink.responses()
    assert response.device == "meter-1" and response.command_response.invocation == "inv-1"
    assert json.loads(response.command_response.response_json) == {"written": {"setpoint": -4.5}}

    configure = pb.CommandInvocation(
        invocation="inv-2", command="configure", params_json='{"interval": 30, "calibration": -70000}'
    )
    await adapter.send_command("default", "meter-1", configure)
    await adapter.send_command(
        "default",
        "meter-1",
        pb.CommandInvocation(invocation="inv-3", command="relay", params_json='{"on": true}'),
    )
    await adapter.send_command(
        "default", "meter-1", pb.CommandInvocation(invocation="inv-4", command="blink")
    )
    values = sim.values(1)
    assert (values["interval"], values["calibration"], values["relay"], values["led"]) == (30, -70000, 1, 1)
    assert sim.values(2)["relay"] == 0
    await eventually(
        lambda: sink.measurements("meter-1")[-1].measurement.values["calibration"] == -70000,
        what="the written value read back",
    )


@pytest.mark.parametrize(
    ("command", "params", "reason"),
    [
        ("nope", "{}", "unknown command 'nope'"),
        ("set-setpoint", "{}", "missing parameter 'value'"),
        ("set-setpoint", '{"value": 9999}', "does not fit int16"),
        ("set-setpoint", "[1]", "params must be a JSON object"),
    ],
)
async def test_bad_commands_fail_with_a_reason(
    running: tuple[ModbusAdapter, RecordingSink], command: str, params: str, reason: str
) -> None:
    adapter, sink = running
    inv = pb.CommandInvocation(invocation="bad", command=command, params_json=params)
    with pytest.raises(DeliveryError, match=reason):
        await adapter.send_command("default", "meter-1", inv)
    assert not sink.responses()


async def test_write_to_an_address_that_refuses_is_a_delivery_error(
    sim: ModbusSlaveSim, running: tuple[ModbusAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    sim.fail_address(1, "holding", 0, code=3)
    inv = pb.CommandInvocation(invocation="x", command="set-setpoint", params_json='{"value": 1}')
    with pytest.raises(DeliveryError, match="exception response 3"):
        await adapter.send_command("default", "meter-1", inv)
    sim.silence(1)
    with pytest.raises(DeliveryError, match="no answer"):
        await adapter.send_command(
            "default", "meter-1", pb.CommandInvocation(invocation="y", command="blink")
        )
    assert not sink.responses() and adapter.stats.commands_failed == 2


async def test_unplug_and_replug_recover(
    sim: ModbusSlaveSim, running: tuple[ModbusAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    await eventually(lambda: len(sink.measurements("meter-1")) >= 3)
    sim.unplug()
    await eventually(lambda: not adapter.is_online("default", "meter-1"), what="offline after unplug")
    assert not adapter.health.snapshot()[("default", "meter-2")].connected
    errors = adapter.stats.port_errors
    await eventually(
        lambda: adapter.stats.port_errors > errors, what="a reopen attempt against the missing tty"
    )
    sim.replug()
    before = len(sink.measurements("meter-1"))
    await eventually(lambda: len(sink.measurements("meter-1")) > before + 3, what="polls after replug")
    await eventually(lambda: adapter.is_online("default", "meter-2"))
    assert adapter.stats.port_reconnects == 1 and adapter.stats.port_errors >= 1
    assert adapter.health.snapshot()[("default", "meter-1")].reconnects == 1
    assert adapter.stats.task_restarts == 0
