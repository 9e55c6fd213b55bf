"""From one notification to events: pick the characteristic's decoder, build ``pb.Event``.

Pure (no I/O, no bleak), so the mapping from configuration to measurements is tested without a
radio. Units travel in the event's metadata as ``unit.<measurement>`` (for example
``unit.temperature = "°C"``), with ``source = "ble"`` and the characteristic uuid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fieldgate.edge.adapters.ble.config import BleDeviceConfig, CharacteristicConfig
from fieldgate.protocol.codec.gatt import GattDecoder, Reading, standard_decoder
from fieldgate.protocol.errors import DecodeError
from fieldgate.v1 import events_pb2 as pb


@dataclass(frozen=True, slots=True)
class CharacteristicDecoder:
    uuid: str
    decode: GattDecoder
    measurement: str | None

    def names(self, readings: Sequence[Reading]) -> list[tuple[str, Reading]]:
        if self.measurement is None:
            return [(r.name, r) for r in readings]
        if len(readings) == 1:
            return [(self.measurement, readings[0])]
        return [(f"{self.measurement}_{r.name}", r) for r in readings]


def characteristic_decoder(cfg: CharacteristicConfig) -> CharacteristicDecoder:
    decode: GattDecoder = standard_decoder(cfg.uuid) if cfg.decoder == "standard" else cfg.decoder.build()
    return CharacteristicDecoder(cfg.uuid, decode, cfg.measurement)


class DeviceDecoder:
    """The decoders of one configured device, by characteristic uuid."""

    def __init__(self, cfg: BleDeviceConfig) -> None:
        self.tenant = cfg.tenant
        self.device = cfg.device
        self.by_uuid = {c.uuid: characteristic_decoder(c) for c in cfg.characteristics}

    def decode(self, uuid: str, payload: bytes, received_ms: int) -> list[pb.Event]:
        """One measurement event for a notification; raises DecodeError if malformed."""
        dec = self.by_uuid.get(uuid)
        if dec is None:
            raise DecodeError(f"no decoder configured for characteristic {uuid}")
        readings = dec.decode(payload)
        if not readings:  # "value is not known"
            return []
        event = pb.Event(
            tenant=self.tenant, device=self.device, event_time_ms=received_ms, received_time_ms=received_ms
        )
        event.metadata["source"] = "ble"
        event.metadata["characteristic"] = uuid
        for name, reading in dec.names(readings):
            event.measurement.values[name] = reading.value
            if reading.unit:
                event.metadata[f"unit.{name}"] = reading.unit
        return [event]
