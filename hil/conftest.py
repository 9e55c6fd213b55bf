"""Hardware-in-the-loop: one suite of device-level tests, run against the firmware sims by default
and against real hardware when ``--hw-profile FILE`` names it.

A profile is YAML with one section per transport (see hil/profiles/bench.example.yaml and the
sections of hil/README.md). A transport missing from the profile is skipped in hardware runs,
so a bench with only a serial device runs only the serial tests. Tests that need a human or a
relay to cause a fault (unplug, power loss) are skipped on hardware unless the profile says the
bench can do it (``faults: true`` in that transport's entry).

Each transport's fixture lives in ``hil/targets_<transport>.py`` and is imported by its test
module; they all read the profile through the ``hw_profile`` fixture below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hw-profile",
        action="store",
        default=None,
        help="YAML hardware profile: run hil/ against real devices instead of the firmware sims",
    )


def load_profile(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise pytest.UsageError(f"--hw-profile {path}: cannot load: {err}") from err
    if not isinstance(data, dict):
        raise pytest.UsageError(f"--hw-profile {path}: expected a mapping of transports")
    unknown = set(data) - {"serial", "modbus", "ble"}
    if unknown:
        raise pytest.UsageError(f"--hw-profile {path}: unknown sections {sorted(unknown)}")
    for section, entries in data.items():
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise pytest.UsageError(f"--hw-profile {path}: {section}: expected a list of devices")
    return data


@pytest.fixture(scope="session")
def hw_profile(pytestconfig: pytest.Config) -> dict[str, Any] | None:
    """The loaded hardware profile, or None when running against the sims."""
    option = pytestconfig.getoption("--hw-profile")
    return None if option is None else load_profile(Path(option))
