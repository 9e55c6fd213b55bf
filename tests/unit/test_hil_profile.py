"""The example hardware profile stays loadable by every transport's hil target."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil import targets_ble, targets_modbus, targets_serial
from hil.conftest import load_profile

EXAMPLE = Path(__file__).resolve().parents[2] / "hil" / "profiles" / "bench.example.yaml"


def test_example_profile_parses_for_every_transport() -> None:
    profile = load_profile(EXAMPLE)
    assert set(profile) == {"serial", "modbus", "ble"}
    assert targets_serial._from_profile(profile["serial"]).devices == ["esp32-bench-1"]
    assert targets_modbus._from_profile(profile["modbus"]).devices == ["plc-1"]
    assert [d.device for d in targets_ble.hardware_devices(profile["ble"])] == ["env-1"]


def test_bad_profiles_are_usage_errors(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("lora: []\n")
    with pytest.raises(pytest.UsageError, match="unknown sections"):
        load_profile(bad)
    bad.write_text("serial: {port: x}\n")
    with pytest.raises(pytest.UsageError, match="list of devices"):
        load_profile(bad)
