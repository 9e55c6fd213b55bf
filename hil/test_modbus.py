"""Device-level Modbus RTU tests: the same tests against the sims (CI) or real devices (--hw-profile).

What a user of a Modbus bus cares about: values arrive scaled and with their units; commands
are written and answered; an unplugged line recovers; a silent device does not stall the
others; bad frames and exception responses are counted, not fatal.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable

import pytest

from fieldgate.edge.adapters.modbus.adapter import ModbusAdapter
from fieldgate.v1 import events_pb2 as pb
from hil.targets_modbus import CommandCheck, ModbusTarget, RecordingSink, modbus_target
from tests.helpers.waiting import eventually

__all__ = ["modbus_target"]  # the fixture, imported so pytest finds it

pytestmark = pytest.mark.integration


@pytest.fixture
async def running(modbus_target: ModbusTarget) -> AsyncIterator[tuple[ModbusAdapter, RecordingSink]]:
    adapter = modbus_target.build_adapter()
    sink = RecordingSink()
    await adapter.start(sink, sink.on_online)
    try:
        yield adapter, sink
    finally:
        await adapter.stop()


def registers_of(target: ModbusTarget, device: str) -> dict[str, str]:
    for bus in target.config.buses:
        for dev in bus.devices:
            if dev.device == device:
                return {r.name: r.unit for r in dev.registers}
    raise KeyError(device)


def _has_measurements(sink: RecordingSink, device: str) -> Callable[[], bool]:
    return lambda: len(sink.of(device, "measurement")) >= 2


async def test_values_arrive_with_units(
    modbus_target: ModbusTarget, running: tuple[ModbusAdapter, RecordingSink]
) -> None:
    _, sink = running
    for device in modbus_target.devices:
        await eventually(_has_measurements(sink, device), what=f"{device} measurements")
        event = sink.of(device, "measurement")[-1]
        units = registers_of(modbus_target, device)
        assert set(event.measurement.values) == set(units)
        for name, value in event.measurement.values.items():
            assert math.isfinite(value)
            if units[name]:
                assert event.metadata[f"unit.{name}"] == units[name]
            low, high = modbus_target.ranges.get(device, {}).get(name, (-math.inf, math.inf))
            assert low <= value <= high, f"{device}.{name} = {value}"
    sim = modbus_target.sim
    if sim is not None:  # exact comparison with the device's memory
        sim.freeze()
        sim.set_reading(1, temperature=-7.5, energy=123_456)
        expected = sim.values(1)
        await eventually(
            lambda: (
                dict(sink.of("sim-meter-1", "measurement")[-1].measurement.values) == pytest.approx(expected)
            )
        )


async def test_commands_are_written_and_answered(
    modbus_target: ModbusTarget, running: tuple[ModbusAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    if not modbus_target.command_checks:
        pytest.skip("no command_check in the profile")
    for i, check in enumerate(modbus_target.command_checks):
        device = check.device
        await eventually(lambda: adapter.is_online("default", device), what=f"{device} online")  # noqa: B023
        inv = pb.CommandInvocation(
            invocation=f"hil-{i}", command=check.command, params_json=json.dumps(check.params)
        )
        await adapter.send_command("default", check.device, inv)
        response = [
            e
            for e in sink.of(check.device, "command_response")
            if e.command_response.invocation == inv.invocation
        ]
        assert len(response) == 1
        written = json.loads(response[0].command_response.response_json)["written"]
        assert set(written) == set(check.expect) or written
        start = len(sink.of(check.device, "measurement"))

        def read_back(c: CommandCheck = check, s: int = start) -> bool:
            later = sink.of(c.device, "measurement")[s + 1 :]
            return any(
                all(math.isclose(e.measurement.values[k], v, abs_tol=1e-6) for k, v in c.expect.items())
                for e in later
            )

        await eventually(read_back, what="the written value read back")


async def test_unplug_and_replug_recover(
    modbus_target: ModbusTarget, running: tuple[ModbusAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    device = modbus_target.devices[0]
    await eventually(lambda: len(sink.of(device, "measurement")) >= 2)
    modbus_target.unplug()
    await eventually(lambda: not adapter.is_online("default", device), what="offline after unplug")
    modbus_target.replug()
    before = len(sink.of(device, "measurement"))
    await eventually(
        lambda: len(sink.of(device, "measurement")) > before + 2, what="measurements after replug"
    )
    assert adapter.health.snapshot()[("default", device)].reconnects >= 1


async def test_bad_frames_and_exceptions_are_counted(
    modbus_target: ModbusTarget, running: tuple[ModbusAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    sim = modbus_target.require_sim("corrupting frames")
    await eventually(lambda: adapter.is_online("default", "sim-meter-1"))
    sim.corrupt_crc(1, 2)
    sim.fail_address(1, "input", 4, code=4)

    def health() -> dict[str, int]:
        return adapter.health.snapshot()[("default", "sim-meter-1")].errors

    await eventually(lambda: health().get("crc", 0) == 2 and health().get("exception_4", 0) >= 2)
    sim.fail_address(1, "input", 4, code=None)
    before = len(sink.of("sim-meter-1", "measurement"))
    await eventually(lambda: len(sink.of("sim-meter-1", "measurement")) > before + 2)
    assert adapter.is_online("default", "sim-meter-1") and adapter.stats.task_restarts == 0


async def test_a_silent_device_does_not_stall_the_bus(
    modbus_target: ModbusTarget, running: tuple[ModbusAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    sim = modbus_target.require_sim("silencing a unit")
    await eventually(lambda: adapter.is_online("default", "sim-meter-2"))
    sim.silence(2)
    await eventually(lambda: not adapter.is_online("default", "sim-meter-2"))
    before = len(sink.of("sim-meter-1", "measurement"))
    await eventually(lambda: len(sink.of("sim-meter-1", "measurement")) >= before + 10)
    sim.silence(2, False)
    await eventually(lambda: adapter.is_online("default", "sim-meter-2"), what="sim-meter-2 back")
