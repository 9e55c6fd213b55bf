"""Configuration of the serial adapter (``serial:`` in the edge agent's configuration file).

One entry per serial port; each port is wired to exactly one device (a UART is point to
point). Validated at load: a bad key fails with a message that names it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fieldgate.config import Frozen

TOKEN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class SerialPortConfig(Frozen):
    """One port. ``port`` is the device path (``/dev/ttyUSB0``, ``/dev/serial/by-id/...``: use
    the by-id path on hardware so that a replugged adapter is found under the same name)."""

    port: str = Field(min_length=1)
    device: str = Field(pattern=TOKEN_PATTERN)
    tenant: str = Field("default", pattern=TOKEN_PATTERN)
    # json: newline-delimited JSON; binary: COBS frames with CRC-16 (docs/protocols/serial.md).
    mode: Literal["json", "binary"] = "json"
    baudrate: int = Field(115200, ge=50, le=4_000_000)
    # binary mode: channel id → measurement name (MEASUREMENT messages carry channel ids).
    channels: dict[int, str] = Field(default_factory=dict)
    # Reopening a port that disappeared: first delay, doubling up to the cap.
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    # A command not acknowledged by the device within this time fails ("no ack").
    ack_timeout_s: float = Field(5.0, gt=0)
    # If set, a device that sends nothing valid for this long is reported disconnected (the
    # port stays open; the next valid frame brings it back). None: presence = port open.
    silence_timeout_s: float | None = Field(None, gt=0)
    # json mode: longer lines are counted ("oversize") and skipped up to their newline.
    max_line_bytes: int = Field(4096, ge=64, le=1_048_576)

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: dict[int, str]) -> dict[int, str]:
        for channel, name in value.items():
            if not 0 <= channel <= 255:
                raise ValueError(f"channel {channel}: ids are 0..255")
            if not name:
                raise ValueError(f"channel {channel}: empty name")
        if len(set(value.values())) != len(value):
            raise ValueError("two channels have the same name")
        return value

    @model_validator(mode="after")
    def _backoff(self) -> SerialPortConfig:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self


class SerialConfig(Frozen):
    enabled: bool = False
    ports: tuple[SerialPortConfig, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> SerialConfig:
        paths = [p.port for p in self.ports]
        for path in paths:
            if paths.count(path) > 1:
                raise ValueError(f"port {path} is configured twice")
        devices = [(p.tenant, p.device) for p in self.ports]
        for tenant, device in devices:
            if devices.count((tenant, device)) > 1:
                raise ValueError(f"device {tenant}/{device} is on two ports")
        return self
