"""Configuration of the BLE adapter (``ble:`` in the edge agent's configuration file).

Example (docs/protocols/ble.md has the full reference)::

    ble:
      enabled: true
      adapter: hci0
      devices:
        - device: greenhouse-1
          address: "C0:FF:EE:00:00:01"        # or name: "fg-env-1" (allow-list)
          characteristics:
            - {uuid: "2a6e"}                   # standard decoder, measurement "temperature"
            - {uuid: "2a6f", measurement: rh}
        - device: custom-1
          name: fg-custom-1
          characteristics:
            - uuid: 8d1f0002-4a3c-4f6e-9b2d-6c2a7f1e0b00
              decoder:
                fields:
                  - {name: temperature, type: i16, scale: 0.01, unit: "°C"}
                  - {name: pressure, type: u32, unit: Pa}
          command: {uuid: 8d1f0003-4a3c-4f6e-9b2d-6c2a7f1e0b00,
                    response_uuid: 8d1f0004-4a3c-4f6e-9b2d-6c2a7f1e0b00}

Only devices on the list are connected to (the allow-list). UUIDs may be written in 16-bit
("2a6e", "0x2A6E") or 128-bit form; they are normalized at load, and a ``standard`` decoder for
a characteristic fieldgate does not know fails at load, naming the key.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fieldgate.config import Frozen
from fieldgate.protocol.codec.gatt import STANDARD_DECODERS, FieldSpec, StructDecoder, normalize_uuid

_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


def _uuid(value: str) -> str:
    try:
        return normalize_uuid(value)
    except ValueError as err:
        raise ValueError(str(err)) from None


class FieldConfig(Frozen):
    name: str = Field(min_length=1)
    type: Literal["u8", "i8", "u16", "i16", "u32", "i32", "f32"]
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""


class CustomLayout(Frozen):
    """A struct-like layout: fields in order, no padding, ``value = raw * scale + offset``."""

    fields: list[FieldConfig] = Field(min_length=1, max_length=64)
    byte_order: Literal["little", "big"] = "little"

    @model_validator(mode="after")
    def _unique_names(self) -> CustomLayout:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"field names must be unique: {names}")
        return self

    def build(self) -> StructDecoder:
        return StructDecoder(
            [FieldSpec(f.name, f.type, f.scale, f.offset, f.unit) for f in self.fields],
            byte_order=self.byte_order,
        )


class CharacteristicConfig(Frozen):
    uuid: str
    # "standard" = the Bluetooth SIG format of this uuid (0x2A6E, 0x2A6F, 0x2A19, 0x2A37).
    decoder: Literal["standard"] | CustomLayout = "standard"
    # Renames the value when the decoder yields one; prefixes "<measurement>_" when it yields several.
    measurement: str | None = Field(default=None, min_length=1)

    _norm = field_validator("uuid")(_uuid)

    @model_validator(mode="after")
    def _known_standard(self) -> CharacteristicConfig:
        if self.decoder == "standard" and self.uuid not in STANDARD_DECODERS:
            known = ", ".join(u[4:8] for u in STANDARD_DECODERS)
            raise ValueError(f"no standard decoder for {self.uuid} (known: {known}); give a custom layout")
        return self


class CommandConfig(Frozen):
    """Commands are written (with response) to ``uuid``."""

    uuid: str
    # json: the fieldgate command message {"invocation","command","params"} (docs/protocols/mqtt.md);
    # utf8: only the command name.
    encoding: Literal["json", "utf8"] = "json"
    # If set, the device answers on this characteristic with a fieldgate JSON command_response;
    # otherwise the adapter reports {"written": true} as the response once the write succeeded.
    response_uuid: str | None = None
    response_timeout_s: float = Field(default=10.0, gt=0)
    write_timeout_s: float = Field(default=10.0, gt=0)

    _norm = field_validator("uuid")(_uuid)

    @field_validator("response_uuid")
    @classmethod
    def _norm_response(cls, v: str | None) -> str | None:
        return None if v is None else _uuid(v)


class BleDeviceConfig(Frozen):
    device: str = Field(min_length=1)
    tenant: str = Field(default="default", min_length=1)
    address: str | None = None
    name: str | None = Field(default=None, min_length=1)
    characteristics: list[CharacteristicConfig] = Field(default_factory=list)
    command: CommandConfig | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and not _ADDRESS.match(v):
            raise ValueError(f"not a Bluetooth address (XX:XX:XX:XX:XX:XX): {v!r}")
        return None if v is None else v.upper()

    @model_validator(mode="after")
    def _identified(self) -> BleDeviceConfig:
        if self.address is None and self.name is None:
            raise ValueError("give the device's address or its advertised name (the allow-list)")
        uuids = [c.uuid for c in self.characteristics]
        if len(set(uuids)) != len(uuids):
            raise ValueError("a characteristic is listed twice")
        return self


class BleConfig(Frozen):
    enabled: bool = False
    # Host adapter, e.g. "hci0"; None = bleak's default (the first powered adapter).
    adapter: str | None = None
    # How long one scan for a missing device lasts before the link backs off and scans again.
    scan_interval_s: float = Field(default=10.0, gt=0)
    # Attempts per connection (bleak-retry-connector's establish_connection).
    connect_attempts: int = Field(default=3, ge=1, le=10)
    # Reconnect policy: exponential backoff from initial to max, reset after a good connection.
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    # Per-device queue of decoded notifications waiting for the sink (policy: drop newest).
    queue_size: int = Field(default=1000, ge=1)
    devices: list[BleDeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> BleConfig:
        keys = [(d.tenant, d.device) for d in self.devices]
        if len(set(keys)) != len(keys):
            raise ValueError("a device is listed twice")
        addresses = [d.address for d in self.devices if d.address]
        if len(set(addresses)) != len(addresses):
            raise ValueError("an address is listed twice")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self
