"""Modbus configuration is refused at load with a message naming the bad key."""

from __future__ import annotations

from typing import Any

import pytest

from fieldgate.config import validate
from fieldgate.edge.adapters.modbus import ModbusConfig, build_modbus_adapter
from fieldgate.errors import ConfigError


def config(**device: Any) -> dict[str, Any]:
    dev: dict[str, Any] = {
        "device": "meter-1",
        "unit": 1,
        "registers": [{"name": "t", "type": "input", "address": 0, "data_type": "int16", "scale": 0.1}],
    }
    dev.update(device)
    return {"enabled": True, "buses": [{"port": "/dev/ttyUSB0", "devices": [dev]}]}


def load(data: dict[str, Any]) -> ModbusConfig:
    return validate(ModbusConfig, data, "edge.yaml")


def test_a_valid_map_loads_with_defaults() -> None:
    cfg = load(config(registers=[{"name": "relay", "type": "coil", "address": 3}]))
    reg = cfg.buses[0].devices[0].registers[0]
    assert reg.data_type == "bool"
    assert cfg.buses[0].baudrate == 9600


@pytest.mark.parametrize(
    ("device", "fragment"),
    [
        ({"unit": 0}, "buses.0.devices.0.unit"),
        ({"unit": 248}, "buses.0.devices.0.unit"),
        (
            {"registers": [{"name": "x", "type": "input", "address": 70000}]},
            "buses.0.devices.0.registers.0.address",
        ),
        (
            {"registers": [{"name": "x", "type": "holding", "address": 65535, "data_type": "uint32"}]},
            "runs past 65535",
        ),
        ({"registers": [{"name": "x", "type": "coil", "address": 0, "data_type": "int16"}]}, "use bool"),
        (
            {"registers": [{"name": "x", "type": "input", "address": 0, "data_type": "bool"}]},
            "needs a coil or discrete",
        ),
        (
            {"registers": [{"name": "x", "type": "input", "address": 0, "scale": 0}]},
            "scale must be",
        ),
        (
            {
                "registers": [
                    {"name": "x", "type": "input", "address": 0},
                    {"name": "x", "type": "input", "address": 1},
                ]
            },
            "registers.1.name 'x' is used twice",
        ),
        (
            {"commands": [{"name": "go", "writes": [{"register": "nope", "value": 1}]}]},
            "commands.0.writes.0.register: no register named 'nope'",
        ),
        (
            {"commands": [{"name": "go", "writes": [{"register": "t", "value": 1}]}]},
            "is a input, which cannot be written",
        ),
        (
            {"commands": [{"name": "go", "writes": [{"register": "t", "value": 1, "from_param": "v"}]}]},
            "exactly one of from_param or value",
        ),
        ({"registers": [{"name": "x", "type": "input", "address": 0, "colour": "red"}]}, "colour"),
    ],
)
def test_bad_maps_name_the_key(device: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(config(**device))
    assert fragment in str(err.value)
    assert str(err.value).startswith("edge.yaml: ")


def test_units_and_devices_must_be_unique() -> None:
    data = config()
    data["buses"][0]["devices"].append(dict(data["buses"][0]["devices"][0], device="meter-2"))
    with pytest.raises(ConfigError, match=r"devices.1.unit 1 is used twice"):
        load(data)
    data["buses"][0]["devices"][1]["unit"] = 2
    data["buses"][0]["devices"][1]["device"] = "meter-1"
    with pytest.raises(ConfigError, match=r"device 'meter-1' is used twice"):
        load(data)


def test_a_tenant_the_edge_does_not_serve_is_refused() -> None:
    cfg = load(config(tenant="acme"))
    with pytest.raises(ConfigError, match=r"modbus.buses.0.devices.0.tenant: 'acme'"):
        build_modbus_adapter(cfg, tenants=["default"])
