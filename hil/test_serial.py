"""Device-level tests of serial devices: against the sims in CI, against boards with a profile.

What a user would check on a bench: readings arrive with plausible values; commands are acked
and answered; an unplugged and replugged device comes back by itself; bad frames are counted
while good ones keep arriving. See hil/README.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator

import pytest

from fieldgate.edge.adapters.serial.adapter import SerialAdapter
from fieldgate.v1 import events_pb2 as pb
from hil.targets_serial import SerialTarget, serial_target
from tests.helpers.serial_sinks import RecordingSink
from tests.helpers.waiting import eventually

__all__ = ["serial_target"]  # the fixture, imported so pytest finds it

pytestmark = pytest.mark.integration


@pytest.fixture
async def running(serial_target: SerialTarget) -> AsyncIterator[tuple[SerialAdapter, RecordingSink]]:
    adapter = serial_target.build_adapter()
    sink = RecordingSink()
    await adapter.start(sink, sink.on_online)
    try:
        yield adapter, sink
    finally:
        await adapter.stop()


async def test_readings_arrive_with_plausible_values(
    serial_target: SerialTarget, running: tuple[SerialAdapter, RecordingSink]
) -> None:
    _, sink = running
    for device in serial_target.devices:
        await eventually(
            lambda d=device: len(sink.measurements(d)) >= 3, timeout=30, what=f"readings of {device}"
        )
        for values in sink.measurements(device):
            assert values and all(math.isfinite(v) for v in values.values())
            for name, (low, high) in serial_target.ranges.get(device, {}).items():
                if name in values:
                    assert low <= values[name] <= high, (
                        f"{device}.{name} = {values[name]} outside {low}..{high}"
                    )


async def test_commands_are_acked_and_answered(
    serial_target: SerialTarget, running: tuple[SerialAdapter, RecordingSink]
) -> None:
    adapter, sink = running
    for n, check in enumerate(serial_target.command_checks):
        await eventually(lambda c=check: adapter.is_online("default", c.device), timeout=30)
        inv = pb.CommandInvocation(
            invocation=f"hil-{n}", command=check.command, params_json=json.dumps(check.params)
        )
        await adapter.send_command("default", check.device, inv)  # returns once acked
        await eventually(
            lambda i=inv.invocation: i in sink.responses(), timeout=30, what=f"answer to {check}"
        )
        assert set(check.expect) <= set(sink.responses()[inv.invocation])


async def test_unplug_and_replug_recovers(
    serial_target: SerialTarget, running: tuple[SerialAdapter, RecordingSink]
) -> None:
    sims = serial_target.require_sims()
    adapter, sink = running
    for device, sim in sims.items():
        await eventually(lambda d=device: len(sink.seqs(d)) >= 3)
        sim.unplug()
        await eventually(lambda d=device: not adapter.is_online("default", d), what=f"{device} offline")
        sim.plug()
        await eventually(lambda d=device: adapter.is_online("default", d), what=f"{device} back")
        first = sim.seq + 1
        await eventually(
            lambda d=device, f=first: max(sink.seqs(d)) >= f + 10, what=f"{device} readings again"
        )
        assert set(range(first, first + 11)) <= set(sink.seqs(device)), "readings lost after replug"
        assert adapter.health.snapshot()[("default", device)].reconnects == 1


async def test_bad_frames_are_counted_and_good_ones_keep_coming(
    serial_target: SerialTarget, running: tuple[SerialAdapter, RecordingSink]
) -> None:
    sims = serial_target.require_sims()
    adapter, sink = running
    for device, sim in sims.items():
        await eventually(lambda d=device: len(sink.seqs(d)) >= 3)
        faults = ["garbage", "crc", "truncated"] if sim.mode == "binary" else ["garbage", "decode"]
        for fault in faults:
            await sim.inject(fault)  # type: ignore[arg-type]
        last = sim.seq
        await eventually(lambda d=device, s=last: max(sink.seqs(d)) >= s + 5, what=f"{device} after faults")
        errors = adapter.health.snapshot()[("default", device)].errors
        assert all(errors.get(kind, 0) >= 1 for kind in faults), errors
