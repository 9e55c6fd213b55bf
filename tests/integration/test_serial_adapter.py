"""The serial adapter against simulated firmware on real pseudo-terminals.

The adapter opens the pty's path with pyserial exactly as it opens /dev/ttyUSB0; the sim plays
the microcontroller (fieldgate.sims.serial). Events land in a recording sink (the agent-level
tests are in test_serial_agent.py). Both protocol modes run every test where it applies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from fieldgate.edge.adapters.serial import SerialConfig, SerialPortConfig, build_serial_adapter
from fieldgate.edge.adapters.serial.adapter import SerialAdapter
from fieldgate.edge.errors import DeliveryError
from fieldgate.errors import ConfigError
from fieldgate.sims.serial import CHANNELS, Mode, SerialDeviceSim
from fieldgate.v1 import events_pb2 as pb
from tests.helpers.serial_sinks import RecordingSink
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.integration

MODES: list[Mode] = ["json", "binary"]


def port_config(link: Path, device: str, mode: Mode, **overrides: object) -> SerialPortConfig:
    settings: dict[str, object] = {
        "port": str(link),
        "device": device,
        "mode": mode,
        "channels": dict(CHANNELS),
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.5,
        "ack_timeout_s": 3.0,
    }
    settings.update(overrides)
    return SerialPortConfig.model_validate(settings)


@asynccontextmanager
async def running(
    *ports: SerialPortConfig, sink: RecordingSink | None = None
) -> AsyncIterator[tuple[SerialAdapter, RecordingSink]]:
    adapter = build_serial_adapter(SerialConfig(enabled=True, ports=ports), tenants=["default"])
    sink = sink or RecordingSink()
    await adapter.start(sink, sink.on_online)
    try:
        yield adapter, sink
    finally:
        await adapter.stop()


def invocation(inv_id: str, command: str, params: str = "{}") -> pb.CommandInvocation:
    return pb.CommandInvocation(invocation=inv_id, command=command, params_json=params)


def errors(adapter: SerialAdapter, device: str) -> dict[str, int]:
    return adapter.health.snapshot()[("default", device)].errors


def connected(adapter: SerialAdapter, device: str) -> Callable[[], bool]:
    def probe() -> bool:
        h = adapter.health.snapshot().get(("default", device))
        return h is not None and h.connected

    return probe


@pytest.mark.parametrize("mode", MODES)
async def test_measurements_arrive_with_names_and_values(tmp_path: Path, mode: Mode) -> None:
    async with SerialDeviceSim(tmp_path / "tty0", mode=mode, device="mcu-1", rate_hz=50) as sim:
        async with running(port_config(sim.link, "mcu-1", mode)) as (adapter, sink):
            await eventually(lambda: len(sink.seqs()) >= 20, what="20 measurements")
    values = sink.measurements()
    assert set(values[0]) == {"seq", "temperature", "humidity"}
    assert all(-20 <= v["temperature"] <= 60 and 0 <= v["humidity"] <= 100 for v in values)
    seqs = sink.seqs()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap in the middle of the stream"
    assert {(e.tenant, e.device) for e in sink.events} == {("default", "mcu-1")}
    assert sink.online == [("default", "mcu-1")]
    assert adapter.health.snapshot()[("default", "mcu-1")].last_seen_ms > 0


@pytest.mark.parametrize("mode", MODES)
async def test_commands_are_acked_then_answered(tmp_path: Path, mode: Mode) -> None:
    async with SerialDeviceSim(tmp_path / "tty0", mode=mode, device="mcu-1", rate_hz=5) as sim:
        async with running(port_config(sim.link, "mcu-1", mode)) as (adapter, sink):
            await eventually(lambda: adapter.is_online("default", "mcu-1"), what="port open")
            await adapter.send_command("default", "mcu-1", invocation("inv-ping", "ping"))
            await adapter.send_command(
                "default", "mcu-1", invocation("inv-int", "set-interval", '{"seconds": 2}')
            )
            await eventually(lambda: {"inv-ping", "inv-int"} <= set(sink.responses()), what="both answers")
            responses = sink.responses()
            assert responses["inv-ping"]["pong"] in (True, 1.0)
            assert responses["inv-int"] == {"interval_s": 2} or responses["inv-int"] == {"interval_s": 2.0}
            assert sim.interval_s == 2
            assert [c for c, _ in sim.commands] == ["ping", "set-interval"]

            # A command the firmware does not know is refused in its ack.
            with pytest.raises(DeliveryError, match="unknown command"):
                await adapter.send_command("default", "mcu-1", invocation("inv-x", "self-destruct"))

            # Firmware that never acks: the command fails with "no ack", counted as a timeout.
            sim.ack_commands = False
            sim.respond = False
            with pytest.raises(DeliveryError, match="no ack"):
                await adapter.send_command("default", "mcu-1", invocation("inv-late", "ping"))
            assert errors(adapter, "mcu-1").get("timeout") == 1


async def test_binary_commands_need_numeric_parameters(tmp_path: Path) -> None:
    async with SerialDeviceSim(tmp_path / "tty0", mode="binary", device="mcu-1", rate_hz=5) as sim:
        async with running(port_config(sim.link, "mcu-1", "binary")) as (adapter, _sink):
            await eventually(lambda: adapter.is_online("default", "mcu-1"))
            with pytest.raises(DeliveryError, match="numbers"):
                await adapter.send_command("default", "mcu-1", invocation("i", "label", '{"text": "hi"}'))


@pytest.mark.parametrize(
    ("mode", "faults"),
    [
        ("json", ["garbage", "decode", "oversize", "truncated"]),
        ("binary", ["garbage", "crc", "truncated", "oversize", "decode"]),
    ],
)
async def test_each_fault_is_counted_while_good_frames_keep_flowing(
    tmp_path: Path, mode: Mode, faults: list[str]
) -> None:
    async with SerialDeviceSim(tmp_path / "tty0", mode=mode, device="mcu-1", rate_hz=100, seed=1) as sim:
        async with running(port_config(sim.link, "mcu-1", mode)) as (adapter, sink):
            await eventually(lambda: len(sink.seqs()) >= 5, what="first measurements")
            for fault in faults:
                await sim.inject(fault)  # type: ignore[arg-type]
                await asyncio.sleep(0.05)
            after = sim.seq
            await eventually(lambda: max(sink.seqs()) >= after + 20, what="measurements after the faults")
            counted = errors(adapter, "mcu-1")
    expected = {f: 1 for f in faults}
    if mode == "json":  # a cut JSON line is bad JSON
        expected = {"garbage": 1, "decode": 2, "oversize": 1}
    assert counted == expected
    assert adapter.stats.frames_bad == expected
    # Complete but undecodable payloads are kept in the failed-decode lane with their reason.
    lane_reasons = [reason for _, reason, _ in sink.rejected]
    assert len(lane_reasons) == (3 if mode == "json" else 1)
    assert all(source == f"serial:{sim.link}" for source, _, _ in sink.rejected)
    # Good frames around the faults: no measurement lost (faults only cost themselves).
    seqs = sink.seqs()
    assert seqs == list(range(seqs[0], seqs[-1] + 1))


@pytest.mark.parametrize("mode", MODES)
async def test_unplug_and_replug_recovers_without_losing_later_frames(tmp_path: Path, mode: Mode) -> None:
    async with SerialDeviceSim(tmp_path / "tty0", mode=mode, device="mcu-1", rate_hz=100) as sim:
        async with running(port_config(sim.link, "mcu-1", mode)) as (adapter, sink):
            await eventually(lambda: len(sink.seqs()) >= 10)
            for round_ in range(1, 3):
                sim.unplug()
                await eventually(lambda: not connected(adapter, "mcu-1")(), what="disconnected")
                assert not adapter.is_online("default", "mcu-1")
                failures = adapter.stats.open_failures
                await eventually(
                    lambda f=failures: adapter.stats.open_failures > f,
                    what="a failed reopen attempt (ENOENT)",
                )
                sim.plug()
                await eventually(lambda r=round_: adapter.stats.reconnects >= r, what="reconnected")
                first_after = sim.seq + 1
                await eventually(lambda f=first_after: max(sink.seqs()) >= f + 30, what="frames after replug")
                got = set(sink.seqs())
                assert set(range(first_after, first_after + 31)) <= got
            health = adapter.health.snapshot()[("default", "mcu-1")]
    assert health.connected and health.reconnects == 2
    assert health.errors.get("io") == 2
    assert adapter.stats.open_failures >= 2
    assert sink.online.count(("default", "mcu-1")) == 3  # first open + two replugs


@pytest.mark.parametrize("mode", MODES)
async def test_device_vanishing_mid_command_fails_the_command_only(tmp_path: Path, mode: Mode) -> None:
    async with SerialDeviceSim(tmp_path / "tty0", mode=mode, device="mcu-1", rate_hz=20) as sim:
        port = port_config(sim.link, "mcu-1", mode, ack_timeout_s=60)
        async with running(port) as (adapter, sink):
            await eventually(lambda: adapter.is_online("default", "mcu-1"))
            sim.ack_commands = sim.respond = False  # hangs on the command
            pending = asyncio.create_task(adapter.send_command("default", "mcu-1", invocation("i1", "ping")))
            await eventually(lambda: len(sim.commands) == 1, what="command on the wire")
            sim.unplug()
            async with asyncio.timeout(10):  # long before the 60 s ack timeout
                with pytest.raises(DeliveryError, match="port lost"):
                    await pending
            # Offline now: a new command is refused at once; after replug it works again.
            with pytest.raises(DeliveryError, match="not connected"):
                await adapter.send_command("default", "mcu-1", invocation("i2", "ping"))
            sim.ack_commands = sim.respond = True
            sim.plug()
            await eventually(lambda: adapter.is_online("default", "mcu-1"))
            await adapter.send_command("default", "mcu-1", invocation("i3", "ping"))
            await eventually(lambda: "i3" in sink.responses())


async def test_two_ports_at_once(tmp_path: Path) -> None:
    async with (
        SerialDeviceSim(tmp_path / "ttyA", mode="json", device="mcu-a", rate_hz=50) as sim_a,
        SerialDeviceSim(tmp_path / "ttyB", mode="binary", device="mcu-b", rate_hz=50) as sim_b,
    ):
        ports = (port_config(sim_a.link, "mcu-a", "json"), port_config(sim_b.link, "mcu-b", "binary"))
        async with running(*ports) as (adapter, sink):
            await eventually(lambda: len(sink.seqs("mcu-a")) >= 10 and len(sink.seqs("mcu-b")) >= 10)
            await asyncio.gather(
                adapter.send_command("default", "mcu-a", invocation("ia", "ping")),
                adapter.send_command("default", "mcu-b", invocation("ib", "ping")),
            )
            await eventually(lambda: {"ia", "ib"} <= set(sink.responses()))
            # One port unplugged does not disturb the other.
            sim_a.unplug()
            await eventually(lambda: not adapter.is_online("default", "mcu-a"))
            n = len(sink.seqs("mcu-b"))
            await eventually(lambda: len(sink.seqs("mcu-b")) >= n + 20)
            assert adapter.is_online("default", "mcu-b")
    responders = {e.device for e in sink.events if e.WhichOneof("payload") == "command_response"}
    assert responders == {"mcu-a", "mcu-b"}


async def test_slow_sink_holds_data_in_the_tty_not_in_memory(tmp_path: Path) -> None:
    """Backpressure: with a sink that takes 0.2 s per batch, the adapter stops reading; the
    sim's writes block on the full pty buffer; nothing is dropped or queued without bound."""
    sink = RecordingSink(accept_delay_s=0.2)
    async with SerialDeviceSim(tmp_path / "tty0", mode="json", device="mcu-1", rate_hz=0) as sim:
        async with running(port_config(sim.link, "mcu-1", "json"), sink=sink) as (adapter, _):
            await eventually(lambda: sink.accept_calls >= 8, what="several slow batches")
            written = sim.seq
            received = len(sink.seqs())
            # The line is flat out, yet the sim could only get ahead by what the tty buffers.
            assert written - received < 5000
            sim.sending = False
            await eventually(lambda: max(sink.seqs(), default=0) >= sim.seq - 1, timeout=60, what="drained")
    seqs = sink.seqs()
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "backpressure lost data"
    assert adapter.stats.bytes_read > 0


async def test_silent_device_is_reported_disconnected_and_comes_back(tmp_path: Path) -> None:
    async with SerialDeviceSim(tmp_path / "tty0", mode="binary", device="mcu-1", rate_hz=20) as sim:
        port = port_config(sim.link, "mcu-1", "binary", silence_timeout_s=0.5)
        async with running(port) as (adapter, sink):
            await eventually(connected(adapter, "mcu-1"))
            sim.silent = True
            await eventually(lambda: not connected(adapter, "mcu-1")(), what="silence noticed")
            assert not adapter.is_online("default", "mcu-1")
            with pytest.raises(DeliveryError):
                await adapter.send_command("default", "mcu-1", invocation("i", "ping"))
            sim.silent = False
            await eventually(connected(adapter, "mcu-1"), what="back after silence")
            assert adapter.is_online("default", "mcu-1")
            assert errors(adapter, "mcu-1").get("silent") == 1
            assert sink.online.count(("default", "mcu-1")) == 2


def test_configuration_is_validated_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match="tenant 'other'"):
        build_serial_adapter(
            SerialConfig(ports=(SerialPortConfig(port="/dev/x", device="d", tenant="other"),)),
            tenants=["default"],
        )
    with pytest.raises(ValueError, match="configured twice"):
        SerialConfig(
            ports=(SerialPortConfig(port="/dev/x", device="a"), SerialPortConfig(port="/dev/x", device="b"))
        )
    with pytest.raises(ValueError, match="mode"):
        SerialPortConfig.model_validate({"port": "/dev/x", "device": "d", "mode": "ascii"})
