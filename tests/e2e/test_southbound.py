"""`fieldgate up --sims serial,modbus,ble`: serial, Modbus RTU and BLE devices (firmware sims on
pseudo-terminals and a simulated BlueZ) → the edge agent in its own process → cloud → REST, and
REST commands back down to each of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.suite import Suite, SuiteOptions
from tests.e2e.conftest import login
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def measurements(api: httpx.AsyncClient, device: str) -> list[dict[str, Any]]:
    r = await api.get(f"/api/v1/devices/{device}/events", params={"type": "measurement", "page_size": 10})
    return r.json()["items"] if r.status_code == 200 else []


async def invoke(api: httpx.AsyncClient, device: str, command: str, params: dict[str, Any]) -> dict[str, Any]:
    r = await api.post(f"/api/v1/devices/{device}/commands", json={"command": command, "params": params})
    assert r.status_code == 201, r.text
    inv_id = r.json()["id"]

    async def final() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/api/v1/invocations/{inv_id}")).json()
        return body if body["status"] in ("answered", "failed", "expired") else None

    return await eventually(final, timeout=20, what=f"{command} on {device} finished")


async def test_serial_modbus_and_ble_devices_end_to_end(tmp_path: Path) -> None:
    opts = SuiteOptions(
        data_dir=tmp_path / "fg",
        admin_password="pw-of-the-south",
        edge_process=True,
        southbound=("serial", "modbus", "ble"),
        sim_rate_hz=5.0,
    )
    async with Suite(opts) as suite:
        api = await login(suite.rest_url, "pw-of-the-south")
        try:
            for device in ("sim-serial-1", "sim-modbus-1", "sim-modbus-2", "sim-ble-env-1", "sim-ble-hr-1"):
                await eventually(lambda d=device: measurements(api, d), timeout=30, what=f"{device} events")
            modbus = (await measurements(api, "sim-modbus-1"))[0]
            assert {"temperature", "humidity", "energy", "voltage"} <= set(modbus["values"])
            assert modbus["metadata"].get("unit.temperature") == "°C"
            temps = [
                e["values"]["temperature"]
                for e in await measurements(api, "sim-ble-env-1")
                if "temperature" in e["values"]
            ]
            assert temps and all(15.0 < t < 35.0 for t in temps)

            serial = await invoke(api, "sim-serial-1", "ping", {})
            assert serial["status"] == "answered" and serial["response"] == {"pong": True}
            written = await invoke(api, "sim-modbus-2", "set-setpoint", {"value": 22.5})
            assert written["status"] == "answered", written
            assert suite.southbound is not None and suite.southbound.modbus is not None
            assert suite.southbound.modbus.values(2)["setpoint"] == pytest.approx(22.5)
            custom = await invoke(api, "sim-ble-custom-1", "ping", {})
            assert custom["status"] == "answered", custom
        finally:
            await api.aclose()
