"""Test infrastructure for BLE: the simulated BlueZ on a private D-Bus, owned by the test.

:func:`ble_sim_env` starts :class:`fieldgate.sims.ble.BleSim` (its own ``dbus-daemon`` process,
stopped by PID on exit) and points ``DBUS_SYSTEM_BUS_ADDRESS`` at it for this test only
(``monkeypatch.setenv``), so bleak's real BlueZ backend talks to the simulation. A test module
turns it into a fixture::

    @pytest.fixture
    async def ble_sim(monkeypatch):
        async with ble_sim_env(monkeypatch) as sim:
            yield sim
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest

from fieldgate.sims.ble import BleSim
from fieldgate.sims.ble_dbus import DBUS_DAEMON
from fieldgate.sims.ble_gatt import SimPeripheral

needs_dbus_daemon = pytest.mark.skipif(
    not os.access(DBUS_DAEMON, os.X_OK), reason=f"{DBUS_DAEMON} not installed (Debian package 'dbus')"
)


@asynccontextmanager
async def ble_sim_env(
    monkeypatch: pytest.MonkeyPatch,
    *,
    rate_hz: float = 20.0,
    peripherals: Sequence[SimPeripheral] | None = None,
) -> AsyncIterator[BleSim]:
    """The default peripherals (or ``peripherals``) behind a simulated BlueZ, for one test."""
    sim = BleSim(peripherals, rate_hz=rate_hz)
    await sim.start()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", sim.address)
    try:
        yield sim
    finally:
        await sim.stop()
