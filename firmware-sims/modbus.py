"""A Modbus RTU slave simulator on pseudo-terminals: several unit ids on one simulated bus.

The slave is pymodbus's own :class:`~pymodbus.server.ModbusSerialServer` (RTU framer), so the
gateway talks to a real Modbus stack. Topology::

    adapter ── <link_dir>/ttyMODBUS0 (symlink) ── pty B ══ byte pump ══ pty A ── ModbusSerialServer

Two pty pairs are needed because both ends open a tty *path* with pyserial, exactly as on
hardware, and a pty pair has only one path. The pump in between is also where "unplug" happens:
:meth:`ModbusSlaveSim.unplug` closes pty B (the adapter's reads fail as with a pulled USB
adapter) and removes the symlink; :meth:`~ModbusSlaveSim.replug` makes a new pty B and points the
symlink at it — the adapter recovers by reopening the same path.

Every unit serves the same register map (:data:`REGISTER_MAP`, also usable as adapter
configuration through :func:`register_map` / :func:`command_map`), which changes over time:
temperature and humidity random-walk, an energy counter (uint32) counts up, a voltage
(float32) wanders. Commands write the holding registers and coils.

Fault controls (through pymodbus's documented hooks: the device ``action`` callback and the
server's ``trace_packet``): :meth:`~ModbusSlaveSim.silence` a unit (it stops answering),
:meth:`~ModbusSlaveSim.fail_address` (an exception response for any request covering an
address), :meth:`~ModbusSlaveSim.corrupt_crc` (the next N responses of a unit go out with a
flipped CRC byte). Units that are not configured do not answer, as on a real bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import struct
import tempfile
import tty
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from fieldgate.sims.errors import SimConfigError
from fieldgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)

BLOCK_REGISTERS = 64
BLOCK_BITS = 16
_KIND_OF_FC = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    3: "holding",
    6: "holding",
    16: "holding",
    4: "input",
}

# The simulated firmware's register map (adapter configuration shape: see RegisterConfig).
REGISTER_MAP: tuple[dict[str, Any], ...] = (
    {"name": "temperature", "type": "input", "address": 0, "data_type": "int16", "scale": 0.1, "unit": "°C"},
    {"name": "humidity", "type": "input", "address": 1, "data_type": "uint16", "scale": 0.1, "unit": "%"},
    {"name": "energy", "type": "input", "address": 2, "data_type": "uint32", "unit": "Wh"},
    {"name": "voltage", "type": "input", "address": 4, "data_type": "float32", "unit": "V"},
    {"name": "setpoint", "type": "holding", "address": 0, "data_type": "int16", "scale": 0.1, "unit": "°C"},
    {"name": "interval", "type": "holding", "address": 1, "data_type": "uint16", "unit": "s"},
    {"name": "calibration", "type": "holding", "address": 2, "data_type": "int32", "word_order": "little"},
    {"name": "relay", "type": "coil", "address": 0},
    {"name": "led", "type": "coil", "address": 1},
    {"name": "door", "type": "discrete", "address": 0},
)

COMMAND_MAP: tuple[dict[str, Any], ...] = (
    {"name": "set-setpoint", "writes": [{"register": "setpoint", "from_param": "value"}]},
    {"name": "relay", "writes": [{"register": "relay", "from_param": "on"}]},
    {
        "name": "configure",
        "writes": [
            {"register": "interval", "from_param": "interval"},
            {"register": "calibration", "from_param": "calibration"},
        ],
    },
    {"name": "blink", "writes": [{"address": 1, "type": "coil", "value": True}]},
)


def register_map() -> list[dict[str, Any]]:
    return [dict(r) for r in REGISTER_MAP]


def command_map() -> list[dict[str, Any]]:
    return [dict(c, writes=[dict(w) for w in c["writes"]]) for c in COMMAND_MAP]


def _i16(value: int) -> int:
    return struct.unpack(">H", struct.pack(">h", value))[0]  # type: ignore[no-any-return]


@dataclass
class UnitModel:
    """The memory of one simulated device. Registers are the truth; readings are derived."""

    unit: int
    input: list[int] = field(default_factory=lambda: [0] * BLOCK_REGISTERS)
    holding: list[int] = field(default_factory=lambda: [0] * BLOCK_REGISTERS)
    coils: list[bool] = field(default_factory=lambda: [False] * BLOCK_BITS)
    discrete: list[bool] = field(default_factory=lambda: [False] * BLOCK_BITS)
    temperature: float = 21.0
    humidity: float = 45.0
    energy: int = 65_530  # crosses the 16-bit boundary within a few ticks
    voltage: float = 230.0

    def __post_init__(self) -> None:
        self.holding[0] = _i16(200)  # setpoint 20.0 °C
        self.holding[1] = 10
        self.discrete[0] = self.unit % 2 == 0
        self.store()

    def store(self) -> None:
        self.input[0] = _i16(round(self.temperature * 10))
        self.input[1] = round(self.humidity * 10)
        self.input[2], self.input[3] = divmod(self.energy & 0xFFFFFFFF, 0x10000)
        self.input[4], self.input[5] = struct.unpack(">2H", struct.pack(">f", self.voltage))

    def step(self, rng: random.Random) -> None:
        self.temperature = min(60.0, max(-20.0, self.temperature + rng.gauss(0.0, 0.3)))
        self.humidity = min(100.0, max(0.0, self.humidity + rng.gauss(0.0, 0.5)))
        self.energy += rng.randint(1, 5)
        self.voltage = min(250.0, max(210.0, self.voltage + rng.gauss(0.0, 0.2)))
        self.store()

    def values(self) -> dict[str, float]:
        """What a correct master decodes from the registers right now (independent arithmetic)."""
        i, h = self.input, self.holding
        return {
            "temperature": struct.unpack(">h", struct.pack(">H", i[0]))[0] / 10,
            "humidity": i[1] / 10,
            "energy": float((i[2] << 16) | i[3]),
            "voltage": struct.unpack(">f", struct.pack(">2H", i[4], i[5]))[0],
            "setpoint": struct.unpack(">h", struct.pack(">H", h[0]))[0] / 10,
            "interval": float(h[1]),
            "calibration": float(struct.unpack(">i", struct.pack(">2H", h[3], h[2]))[0]),
            "relay": float(self.coils[0]),
            "led": float(self.coils[1]),
            "door": float(self.discrete[0]),
        }


class _Pty:
    """One pty pair in raw mode; the simulator keeps both ends open (no EIO on the master)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        for fd in (self.master, self.slave):
            tty.setraw(fd)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class SimCounters:
    requests: dict[int, int] = field(default_factory=dict)  # per unit id, as received
    answered: dict[int, int] = field(default_factory=dict)
    silenced: int = 0
    crc_corrupted: int = 0
    exceptions: int = 0
    bytes_dropped: int = 0  # by the pump while unplugged or a pty was full


class ModbusSlaveSim:
    """See the module docstring. ``async with ModbusSlaveSim(units=(1, 2)) as sim: sim.path``."""

    def __init__(
        self,
        units: tuple[int, ...] = (1, 2),
        *,
        link_dir: Path | None = None,
        tick_s: float = 0.2,
        seed: int | None = None,
        baudrate: int = 19200,
    ) -> None:
        if not units or any(not 1 <= u <= 247 for u in units) or len(set(units)) != len(units):
            raise SimConfigError("units must be distinct ids in 1..247")
        if tick_s <= 0:
            raise SimConfigError("tick_s must be positive")
        self.units = tuple(units)
        self.models = {u: UnitModel(u) for u in units}
        self.counters = SimCounters()
        self.frozen = False
        self._tick_s = tick_s
        self._rng = random.Random(seed)
        self._baudrate = baudrate
        self._own_dir: tempfile.TemporaryDirectory[str] | None = None
        self._link_dir = link_dir
        self._silent: set[int] = set()
        self._failing: dict[tuple[int, str, int], int] = {}
        self._corrupt: dict[int, int] = {}
        self._a: _Pty | None = None
        self._b: _Pty | None = None
        self._server: ModbusSerialServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.path = Path()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._link_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="fieldgate-modbus-")
            self._link_dir = Path(self._own_dir.name)
        self.path = self._link_dir / "ttyMODBUS0"
        self._a = _Pty()
        devices = [self._device(u) for u in self.units]
        devices.append(self._device(0))  # catch-all: other ids get no answer (see _trace_packet)
        self._server = ModbusSerialServer(
            devices,
            framer=FramerType.RTU,
            port=self._a.path,
            baudrate=self._baudrate,
            trace_packet=self._trace_packet,
            trace_pdu=self._trace_pdu,
        )
        await self._server.serve_forever(background=True)
        loop = asyncio.get_running_loop()
        loop.add_reader(self._a.master, self._pump_from_server)
        self.replug()
        self._ticker = loop.create_task(self._tick(), name="modbus sim ticker")

    async def stop(self) -> None:
        ticker, self._ticker = self._ticker, None
        await cancel_and_wait(ticker)
        self.unplug()
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
        if self._a is not None:
            with contextlib.suppress(ValueError):
                asyncio.get_running_loop().remove_reader(self._a.master)
            self._a.close()
            self._a = None
        if self._own_dir is not None:
            self._own_dir.cleanup()
            self._own_dir = None
            self._link_dir = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ faults and controls

    def unplug(self) -> None:
        """Close the adapter's side of the line (its reads fail) and remove the tty path."""
        b, self._b = self._b, None
        if b is not None:
            with contextlib.suppress(ValueError):
                asyncio.get_running_loop().remove_reader(b.master)
            b.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def replug(self) -> None:
        """A new line at the same path (a new pty behind the symlink)."""
        self.unplug()
        b = _Pty()
        tmp = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(b.path)
        tmp.replace(self.path)
        self._b = b
        asyncio.get_running_loop().add_reader(b.master, self._pump_from_adapter)

    @property
    def plugged(self) -> bool:
        return self._b is not None

    def silence(self, unit: int, silent: bool = True) -> None:
        """``unit`` stops answering (or answers again)."""
        (self._silent.add if silent else self._silent.discard)(unit)

    def fail_address(self, unit: int, kind: str, address: int, code: int | None = 2) -> None:
        """Answer requests covering ``address`` with exception ``code`` (None clears the fault)."""
        if kind not in ("coil", "discrete", "holding", "input"):
            raise SimConfigError(f"unknown register kind {kind!r}")
        if code is None:
            self._failing.pop((unit, kind, address), None)
        else:
            self._failing[(unit, kind, address)] = code

    def corrupt_crc(self, unit: int, count: int = 1) -> None:
        """The next ``count`` responses of ``unit`` go out with a wrong CRC."""
        self._corrupt[unit] = self._corrupt.get(unit, 0) + count

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or restart) the values changing over time, so a test can compare exactly."""
        self.frozen = frozen

    def set_reading(self, unit: int, **values: float) -> None:
        """Set derived readings (temperature, humidity, energy, voltage) and store them."""
        model = self.models[unit]
        for name, value in values.items():
            if name not in ("temperature", "humidity", "energy", "voltage"):
                raise SimConfigError(f"not a reading: {name}")
            setattr(model, name, int(value) if name == "energy" else float(value))
        model.store()

    def values(self, unit: int) -> dict[str, float]:
        return self.models[unit].values()

    def answered(self, unit: int) -> int:
        return self.counters.answered.get(unit, 0)

    # ------------------------------------------------------------------ pymodbus hooks

    def _device(self, unit: int) -> SimDevice:
        bits = [SimData(0, values=[False] * BLOCK_BITS, datatype=DataType.BITS)]
        regs = [SimData(0, values=[0] * BLOCK_REGISTERS, datatype=DataType.REGISTERS)]
        blocks = (
            bits,
            [SimData(0, values=[False] * BLOCK_BITS, datatype=DataType.BITS)],
            regs,
            [SimData(0, values=[0] * BLOCK_REGISTERS, datatype=DataType.REGISTERS)],
        )
        return SimDevice(unit, simdata=blocks, action=functools.partial(self._action, unit))

    async def _action(
        self,
        unit: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Called by pymodbus for every access: faults first, then sync model ↔ registers."""
        kind = _KIND_OF_FC.get(function_code)
        model = self.models.get(unit)
        if kind is None or model is None:
            return None
        for a in range(address, address + count):
            code = self._failing.get((unit, kind, a))
            if code is not None:
                self.counters.exceptions += 1
                return ExcCodes(code)
        if set_values is not None:
            target: list[Any] = model.coils if kind == "coil" else model.holding
            for i, v in enumerate(set_values):
                target[address + i] = bool(v) if kind == "coil" else int(v)
            return None
        if kind in ("holding", "input"):
            source = model.holding if kind == "holding" else model.input
            for a in range(address, address + count):
                current_registers[a - start_address] = source[a]
        else:
            bits = model.coils if kind == "coil" else model.discrete
            for a in range(address, address + count):
                i = a - start_address
                word, bit = divmod(i, 16)
                if bits[a]:
                    current_registers[word] |= 1 << bit
                else:
                    current_registers[word] &= ~(1 << bit)
        return None

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.counters.requests[pdu.dev_id] = self.counters.requests.get(pdu.dev_id, 0) + 1
        return pdu

    def _trace_packet(self, sending: bool, packet: bytes) -> bytes:
        if not sending or not packet:
            return packet
        unit = packet[0]
        if unit not in self.models or unit in self._silent:
            self.counters.silenced += 1
            return b""
        self.counters.answered[unit] = self.counters.answered.get(unit, 0) + 1
        if self._corrupt.get(unit, 0) > 0:
            self._corrupt[unit] -= 1
            self.counters.crc_corrupted += 1
            return packet[:-1] + bytes([packet[-1] ^ 0xFF])
        return packet

    # ------------------------------------------------------------------ the line

    def _pump(self, src: int, dst: int | None) -> None:
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # the other end is gone for a moment (unplug in progress)
        if dst is None:
            self.counters.bytes_dropped += len(data)
            return
        try:
            os.write(dst, data)
        except OSError:
            self.counters.bytes_dropped += len(data)

    def _pump_from_server(self) -> None:
        if self._a is not None:
            self._pump(self._a.master, self._b.master if self._b is not None else None)

    def _pump_from_adapter(self) -> None:
        if self._b is not None and self._a is not None:
            self._pump(self._b.master, self._a.master)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            if not self.frozen:
                for model in self.models.values():
                    model.step(self._rng)
