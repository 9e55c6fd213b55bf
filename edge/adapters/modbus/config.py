"""Typed configuration of the Modbus RTU adapter (section ``modbus`` of the edge configuration).

A *bus* is one serial line (an RS-485 segment behind one tty) with its line settings; on it sit
*devices* (Modbus unit ids 1..247), each with its own poll interval, a register map (name →
register type, address, data type, word order, scale, offset, unit) and the commands it accepts
(each a list of writes to coils or holding registers). Everything is checked at load, so a bad
map fails with a message that names the key (``buses.0.devices.1.registers.2: ...``) instead of
misbehaving on the wire: unit range, address range (including the second word of 32-bit types),
data type against register type, unique names, write targets that exist and are writable.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fieldgate.config import Frozen

RegisterType = Literal["coil", "discrete", "holding", "input"]
DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32"]
# "big": the high word comes first (ABCD, the Modbus convention); "little": low word first (CDAB).
WordOrder = Literal["big", "little"]

BIT_TYPES: frozenset[str] = frozenset({"coil", "discrete"})
WRITABLE_TYPES: frozenset[str] = frozenset({"coil", "holding"})
MAX_ADDRESS = 0xFFFF


def words_of(data_type: str) -> int:
    """How many 16-bit registers (or bits, for ``bool``) a value of ``data_type`` occupies."""
    return 2 if data_type in ("int32", "uint32", "float32") else 1


def _default_data_type(data: Any) -> Any:
    """Bits are bool, registers uint16, unless the map says otherwise (mode="before")."""
    if isinstance(data, dict) and data.get("data_type") is None:
        kind = data.get("type", "holding")
        data = {**data, "data_type": "bool" if kind in BIT_TYPES else "uint16"}
    return data


def _check_point(kind: str, address: int, data_type: str, scale: float, offset: float) -> None:
    if kind in BIT_TYPES and data_type != "bool":
        raise ValueError(f"data_type {data_type!r} does not fit a {kind} (a single bit): use bool")
    if kind not in BIT_TYPES and data_type == "bool":
        raise ValueError(f"data_type bool needs a coil or discrete input, not a {kind} register")
    last = address + words_of(data_type) - 1
    if last > MAX_ADDRESS:
        raise ValueError(f"address {address} + {words_of(data_type)} registers runs past {MAX_ADDRESS}")
    if scale == 0 or not math.isfinite(scale):
        raise ValueError("scale must be a finite, non-zero number")
    if not math.isfinite(offset):
        raise ValueError("offset must be finite")


class RegisterConfig(Frozen):
    """One named value read from the device: ``value = raw * scale + offset``."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    type: RegisterType
    address: int = Field(ge=0, le=MAX_ADDRESS)
    data_type: DataType
    word_order: WordOrder = "big"
    scale: float = 1.0
    offset: float = 0.0
    # Unit of the scaled value (e.g. "°C"), sent as event metadata "unit.<name>".
    unit: str = Field("", max_length=32)

    _defaults = model_validator(mode="before")(_default_data_type)

    @model_validator(mode="after")
    def _fits(self) -> RegisterConfig:
        _check_point(self.type, self.address, self.data_type, self.scale, self.offset)
        return self


class WriteConfig(Frozen):
    """One write of a command: a configured register by name, or a raw coil/holding address.

    The value is the command parameter ``from_param`` or the constant ``value``; it is scaled
    back (``raw = (value - offset) / scale``) and encoded with the register's data type.
    """

    # YAML key "register" (the attribute name would shadow pydantic's BaseModel.register).
    reg: str | None = Field(None, alias="register")
    address: int | None = Field(None, ge=0, le=MAX_ADDRESS)
    # Only with ``address`` (a named register brings its own).
    type: Literal["coil", "holding"] | None = None
    data_type: DataType | None = None
    word_order: WordOrder = "big"
    scale: float = 1.0
    offset: float = 0.0
    from_param: str | None = None
    value: bool | int | float | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> WriteConfig:
        if (self.reg is None) == (self.address is None):
            raise ValueError("give exactly one of register (a register name) or address")
        if (self.from_param is None) == (self.value is None):
            raise ValueError("give exactly one of from_param or value")
        if self.reg is not None and (self.type is not None or self.data_type is not None):
            raise ValueError("type and data_type belong to the named register, not to the write")
        if self.address is not None:
            kind = self.type or "holding"
            dt = self.data_type or ("bool" if kind == "coil" else "uint16")
            _check_point(kind, self.address, dt, self.scale, self.offset)
        return self


class CommandConfig(Frozen):
    name: str = Field(min_length=1, max_length=128)
    writes: tuple[WriteConfig, ...] = Field(min_length=1)


class DeviceConfig(Frozen):
    device: str = Field(min_length=1, max_length=256)
    tenant: str = Field("default", min_length=1)
    unit: int = Field(ge=1, le=247)
    poll_interval_s: float = Field(5.0, gt=0, le=86_400)
    registers: tuple[RegisterConfig, ...] = Field(min_length=1)
    commands: tuple[CommandConfig, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> DeviceConfig:
        by_name: dict[str, RegisterConfig] = {}
        for i, reg in enumerate(self.registers):
            if reg.name in by_name:
                raise ValueError(f"registers.{i}.name {reg.name!r} is used twice")
            by_name[reg.name] = reg
        seen_commands: set[str] = set()
        for c, cmd in enumerate(self.commands):
            if cmd.name in seen_commands:
                raise ValueError(f"commands.{c}.name {cmd.name!r} is used twice")
            seen_commands.add(cmd.name)
            for w, write in enumerate(cmd.writes):
                if write.reg is None:
                    continue
                target = by_name.get(write.reg)
                key = f"commands.{c}.writes.{w}.register"
                if target is None:
                    raise ValueError(f"{key}: no register named {write.reg!r}")
                if target.type not in WRITABLE_TYPES:
                    raise ValueError(f"{key}: {write.reg!r} is a {target.type}, which cannot be written")
        return self


class BusConfig(Frozen):
    """One serial line. ``timeout_s`` * (``retries`` + 1) bounds how long one silent device can
    hold the bus before the next device gets its turn."""

    port: str = Field(min_length=1)
    baudrate: int = Field(9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = Field(1.0, gt=0, le=60)
    retries: int = Field(1, ge=0, le=10)
    # An offline device is probed after its poll interval, then doubling up to this.
    offline_backoff_max_s: float = Field(60.0, gt=0)
    # A port that cannot be opened (unplugged adapter) is retried doubling up to this.
    reconnect_backoff_max_s: float = Field(10.0, gt=0)
    devices: tuple[DeviceConfig, ...] = Field(min_length=1)

    @field_validator("devices")
    @classmethod
    def _unique_units(cls, devices: tuple[DeviceConfig, ...]) -> tuple[DeviceConfig, ...]:
        units: set[int] = set()
        for i, dev in enumerate(devices):
            if dev.unit in units:
                raise ValueError(f"devices.{i}.unit {dev.unit} is used twice on this bus")
            units.add(dev.unit)
        return devices


class ModbusConfig(Frozen):
    enabled: bool = False
    buses: tuple[BusConfig, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> ModbusConfig:
        ports: set[str] = set()
        devices: set[tuple[str, str]] = set()
        for b, bus in enumerate(self.buses):
            if bus.port in ports:
                raise ValueError(f"buses.{b}.port {bus.port!r} is used twice")
            ports.add(bus.port)
            for d, dev in enumerate(bus.devices):
                key = (dev.tenant, dev.device)
                if key in devices:
                    raise ValueError(f"buses.{b}.devices.{d}.device {dev.device!r} is used twice")
                devices.add(key)
        return self
