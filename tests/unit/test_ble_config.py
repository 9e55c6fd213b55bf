"""BLE adapter configuration and the notification → event mapping (no radio)."""

from __future__ import annotations

import struct

import pytest

from fieldgate.config import validate
from fieldgate.edge.adapters.ble import BleConfig, build_ble_adapter
from fieldgate.edge.adapters.ble.config import BleDeviceConfig
from fieldgate.edge.adapters.ble.decoding import DeviceDecoder
from fieldgate.errors import ConfigError
from fieldgate.protocol.errors import DecodeError


def test_defaults_are_off_and_empty() -> None:
    cfg = BleConfig()
    assert not cfg.enabled and cfg.devices == []


def test_uuids_and_addresses_are_normalized() -> None:
    d = BleDeviceConfig.model_validate(
        {"device": "d", "address": "c0:ff:ee:00:00:01", "characteristics": [{"uuid": "0x2A6E"}]}
    )
    assert d.address == "C0:FF:EE:00:00:01"
    assert d.characteristics[0].uuid == "00002a6e-0000-1000-8000-00805f9b34fb"


@pytest.mark.parametrize(
    ("doc", "key", "reason"),
    [
        ({"devices": [{"device": "d"}]}, "devices.0", "address or its advertised name"),
        ({"devices": [{"device": "d", "address": "nope"}]}, "devices.0.address", "not a Bluetooth address"),
        (
            {"devices": [{"device": "d", "name": "n", "characteristics": [{"uuid": "2a00"}]}]},
            "devices.0.characteristics.0",
            "no standard decoder",
        ),
        (
            {
                "devices": [
                    {"device": "d", "name": "n", "characteristics": [{"uuid": "2a6e", "decoder": "magic"}]}
                ]
            },
            "devices.0.characteristics.0.decoder",
            "",
        ),
        (
            {
                "devices": [
                    {
                        "device": "d",
                        "name": "n",
                        "characteristics": [
                            {"uuid": "1234", "decoder": {"fields": [{"name": "a", "type": "u64"}]}}
                        ],
                    }
                ]
            },
            "devices.0.characteristics.0.decoder",
            "",
        ),
        (
            {"devices": [{"device": "d", "name": "a"}, {"device": "d", "name": "b"}]},
            "(top level)",
            "listed twice",
        ),
        ({"scan_interval_s": 0}, "scan_interval_s", "greater than 0"),
        ({"devices": [{"device": "d", "name": "n", "extra": 1}]}, "devices.0.extra", "Extra inputs"),
    ],
)
def test_bad_configuration_names_the_key(doc: dict[str, object], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(BleConfig, doc, "edge.yaml")
    assert f"edge.yaml: {key}" in str(info.value)
    assert reason in str(info.value)


def test_unknown_tenant_is_refused_at_build() -> None:
    cfg = BleConfig.model_validate({"devices": [{"device": "d", "tenant": "acme", "name": "n"}]})
    with pytest.raises(ConfigError, match="unknown tenant 'acme'"):
        build_ble_adapter(cfg, tenants=["default"])


def test_custom_layout_maps_to_measurement_with_units_and_prefix() -> None:
    d = BleDeviceConfig.model_validate(
        {
            "device": "pump-7",
            "tenant": "acme",
            "name": "pump",
            "characteristics": [
                {
                    "uuid": "8d1f0002-4a3c-4f6e-9b2d-6c2a7f1e0b00",
                    "measurement": "pump",
                    "decoder": {
                        "byte_order": "big",
                        "fields": [
                            {"name": "flow", "type": "u16", "scale": 0.1, "unit": "l/min"},
                            {"name": "temp", "type": "i8", "offset": -40, "unit": "°C"},
                        ],
                    },
                },
                {"uuid": "2a19", "measurement": "battery"},
            ],
        }
    )
    dec = DeviceDecoder(d)
    [event] = dec.decode(
        "8d1f0002-4a3c-4f6e-9b2d-6c2a7f1e0b00", struct.pack(">Hb", 125, 60), 1_700_000_000_000
    )
    assert (event.tenant, event.device, event.event_time_ms) == ("acme", "pump-7", 1_700_000_000_000)
    assert dict(event.measurement.values) == {"pump_flow": 12.5, "pump_temp": 20.0}
    assert event.metadata["unit.pump_flow"] == "l/min" and event.metadata["unit.pump_temp"] == "°C"
    [battery] = dec.decode("00002a19-0000-1000-8000-00805f9b34fb", b"\x42", 1)
    assert dict(battery.measurement.values) == {"battery": 66.0}
    with pytest.raises(DecodeError, match="wrong length"):
        dec.decode("8d1f0002-4a3c-4f6e-9b2d-6c2a7f1e0b00", b"\x00", 1)
    with pytest.raises(DecodeError, match="no decoder"):
        dec.decode("00002a6e-0000-1000-8000-00805f9b34fb", b"\x00\x00", 1)
