"""Simulated BLE peripherals behind a simulated BlueZ, so bleak's real BlueZ backend runs in CI.

:class:`BleSim` owns everything: a private ``dbus-daemon`` (:mod:`fieldgate.sims.ble_dbus`)
unless given a bus address, the ``org.bluez`` service (:mod:`fieldgate.sims.ble_bluez`) and the
peripherals (:mod:`fieldgate.sims.ble_gatt`), and it drives their notifications at ``rate_hz``.
A process that wants to talk to it with bleak points ``DBUS_SYSTEM_BUS_ADDRESS`` at
:attr:`BleSim.address` (tests: ``monkeypatch.setenv``; never globally)::

    async with BleSim(rate_hz=10) as sim:
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = sim.address   # in a subprocess / fixture
        ...
        sim.drop_link(ENV_1)                 # link loss: device vanishes, advertises again
        sim.power_off(HR_1); sim.power_on(HR_1)
        sim.send_wrong_length(ENV_1, TEMPERATURE)

Profiles (:func:`default_peripherals`):

- ``environmental_sensor``: Environmental Sensing 0x181A (Temperature 0x2A6E sint16 0.01 °C,
  Humidity 0x2A6F uint16 0.01 %) + Battery 0x180F (Battery Level 0x2A19 uint8 %, every 10th tick);
- ``heart_rate_sensor``: Heart Rate 0x180D (Heart Rate Measurement 0x2A37: uint8 bpm, every 5th
  tick uint16 bpm with sensor contact, energy expended and one RR interval) + Battery;
- ``custom_sensor``: the custom service (:data:`CUSTOM_DATA` laid out as :data:`CUSTOM_LAYOUT`),
  a command characteristic (write with response) that answers JSON commands on the response
  characteristic, like the firmware in docs/protocols/ble.md.

Every value notified is remembered (bounded) in :attr:`BleSim.sent`, so a test can compare what
the gateway decoded with what the "firmware" sent. ``python -m fieldgate.sims.ble`` runs the sim
on its own and prints the bus address (benchmarks, ``fieldgate up --sims ble``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence

from fieldgate.sims.ble_bluez import SimulatedBlueZ
from fieldgate.sims.ble_dbus import PrivateDbusDaemon
from fieldgate.sims.ble_gatt import (
    BATTERY_LEVEL,
    BATTERY_SERVICE,
    BODY_SENSOR_LOCATION,
    CUSTOM_COMMAND,
    CUSTOM_DATA,
    CUSTOM_RESPONSE,
    CUSTOM_SERVICE,
    ENVIRONMENTAL_SENSING,
    HEART_RATE_MEASUREMENT,
    HEART_RATE_SERVICE,
    HUMIDITY,
    TEMPERATURE,
    SimCharacteristic,
    SimPeripheral,
    SimService,
    encode_battery,
    encode_custom,
    encode_heart_rate,
    encode_humidity,
    encode_temperature,
    json_command_handler,
)
from fieldgate.sims.errors import SimConfigError
from fieldgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ENV_1 = "C0:FF:EE:00:00:01"
ENV_2 = "C0:FF:EE:00:00:02"
HR_1 = "C0:FF:EE:00:00:03"
CUSTOM_1 = "C0:FF:EE:00:00:04"

# The field layout of CUSTOM_DATA, in the edge's configuration format (docs/protocols/ble.md).
CUSTOM_LAYOUT: list[dict[str, object]] = [
    {"name": "temperature", "type": "i16", "scale": 0.01, "unit": "°C"},
    {"name": "pressure", "type": "u32", "scale": 1, "unit": "Pa"},
    {"name": "co2", "type": "u16", "scale": 1, "unit": "ppm"},
    {"name": "status", "type": "u8"},
]

MAX_SENT_KEPT = 10_000


def env_values(n: int) -> tuple[float, float, int]:
    """Temperature (°C), humidity (%), battery (%) of an environmental sensor at tick ``n``."""
    return 20.0 + (n % 100) / 10, 40.0 + (n % 50) / 2, 100 - (n // 10) % 100


def environmental_sensor(address: str, name: str) -> SimPeripheral:
    def tick(n: int) -> dict[str, bytes]:
        temp, hum, battery = env_values(n)
        out = {TEMPERATURE: encode_temperature(temp), HUMIDITY: encode_humidity(hum)}
        if n % 10 == 0:
            out[BATTERY_LEVEL] = encode_battery(battery)
        return out

    services = [
        SimService(
            ENVIRONMENTAL_SENSING,
            [
                SimCharacteristic(TEMPERATURE, ("read", "notify"), encode_temperature(20.0)),
                SimCharacteristic(HUMIDITY, ("read", "notify"), encode_humidity(40.0)),
            ],
        ),
        SimService(
            BATTERY_SERVICE, [SimCharacteristic(BATTERY_LEVEL, ("read", "notify"), encode_battery(100))]
        ),
    ]
    return SimPeripheral(address, name, services, tick)


def heart_rate_sensor(address: str, name: str) -> SimPeripheral:
    def tick(n: int) -> dict[str, bytes]:
        bpm = 60 + n % 40
        if n % 5 == 0:
            value = encode_heart_rate(
                bpm, energy_kj=n % 1000, rr_intervals_s=(0.75,), contact=True, wide=True
            )
        else:
            value = encode_heart_rate(bpm)
        out = {HEART_RATE_MEASUREMENT: value}
        if n % 10 == 0:
            out[BATTERY_LEVEL] = encode_battery(90)
        return out

    services = [
        SimService(
            HEART_RATE_SERVICE,
            [
                SimCharacteristic(HEART_RATE_MEASUREMENT, ("notify",)),
                SimCharacteristic(BODY_SENSOR_LOCATION, ("read",), bytes([1])),
            ],
        ),
        SimService(
            BATTERY_SERVICE, [SimCharacteristic(BATTERY_LEVEL, ("read", "notify"), encode_battery(90))]
        ),
    ]
    return SimPeripheral(address, name, services, tick)


def custom_values(n: int) -> tuple[float, int, int, int]:
    return 18.0 + (n % 60) / 4, 101_325 + n % 500, 400 + n % 200, n % 4


def custom_sensor(address: str, name: str) -> SimPeripheral:
    def tick(n: int) -> dict[str, bytes]:
        return {CUSTOM_DATA: encode_custom(*custom_values(n))}

    command = SimCharacteristic(CUSTOM_COMMAND, ("write",))
    peripheral = SimPeripheral(
        address,
        name,
        [
            SimService(
                CUSTOM_SERVICE,
                [
                    SimCharacteristic(CUSTOM_DATA, ("read", "notify"), encode_custom(*custom_values(0))),
                    command,
                    SimCharacteristic(CUSTOM_RESPONSE, ("notify",)),
                ],
            )
        ],
        tick,
    )
    command.on_write = json_command_handler(peripheral, CUSTOM_COMMAND, CUSTOM_RESPONSE)
    return peripheral


def default_peripherals() -> list[SimPeripheral]:
    """Two environmental sensors, a heart-rate strap and a custom sensor with commands."""
    return [
        environmental_sensor(ENV_1, "fg-env-1"),
        environmental_sensor(ENV_2, "fg-env-2"),
        heart_rate_sensor(HR_1, "fg-hr-1"),
        custom_sensor(CUSTOM_1, "fg-custom-1"),
    ]


class BleSim:
    """See the module docstring. ``async with BleSim() as sim: sim.address``."""

    def __init__(
        self,
        peripherals: Sequence[SimPeripheral] | None = None,
        *,
        rate_hz: float = 5.0,
        bus_address: str | None = None,
        adapter: str = "hci0",
        adv_interval_s: float = 0.1,
    ) -> None:
        if rate_hz < 0 or math.isnan(rate_hz):
            raise SimConfigError("rate_hz must be >= 0 (0 = as fast as possible)")
        self.peripherals = {p.address.upper(): p for p in (peripherals or default_peripherals())}
        self.rate_hz = rate_hz
        self._bus_address = bus_address
        self._daemon: PrivateDbusDaemon | None = None
        self.bluez: SimulatedBlueZ | None = None
        self._adapter = adapter
        self._adv_interval = adv_interval_s
        self._task: asyncio.Task[None] | None = None
        self._ticks: dict[str, int] = dict.fromkeys(self.peripherals, 0)
        # Values the firmware notified and a subscribed central received, per (address, uuid).
        self.sent: dict[tuple[str, str], deque[bytes]] = {}
        self.on_tick: Callable[[int], None] | None = None

    @property
    def address(self) -> str:
        """The D-Bus address to put in ``DBUS_SYSTEM_BUS_ADDRESS``."""
        if self._daemon is not None:
            return self._daemon.address
        return self._bus_address or ""

    @property
    def adapter(self) -> str:
        return self._adapter

    async def start(self) -> None:
        if self._bus_address is None:
            self._daemon = PrivateDbusDaemon()
            await asyncio.to_thread(self._daemon.start)
        try:
            self.bluez = SimulatedBlueZ(
                self.address, adapter=self._adapter, adv_interval_s=self._adv_interval
            )
            for p in self.peripherals.values():
                self.bluez.add_peripheral(p)
            await self.bluez.start()
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._run(), name="ble-sim-notify")

    async def stop(self) -> None:
        """Stop notifying, leave the bus, stop the daemon — the daemon even if a step failed."""
        try:
            if self._task is not None:
                task, self._task = self._task, None
                await cancel_and_wait(task)
                if not task.cancelled() and task.exception() is not None:
                    # the notifier died earlier (e.g. bus gone): report, keep stopping
                    log.error("BLE sim notifier had failed: %r", task.exception())
            if self.bluez is not None:
                bluez, self.bluez = self.bluez, None
                await bluez.stop()
        finally:
            if self._daemon is not None:
                daemon, self._daemon = self._daemon, None
                await asyncio.to_thread(daemon.stop)

    async def __aenter__(self) -> BleSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _bz(self) -> SimulatedBlueZ:
        if self.bluez is None:
            raise SimConfigError("the BLE sim is not running")
        return self.bluez

    async def _run(self) -> None:
        """Every tick, each peripheral notifies its next values to subscribed centrals."""
        while True:
            if self.tick_all():
                await self._bz().flush()
            await asyncio.sleep(
                1 / self.rate_hz if self.rate_hz > 0 else 0.001 if not self._any_connected() else 0
            )

    def _any_connected(self) -> bool:
        bz = self._bz()
        return any(bz.is_connected(k) for k in self.peripherals)

    def tick_all(self) -> int:
        """One notification round over every peripheral; returns how many were delivered."""
        bz = self._bz()
        delivered = 0
        for key, p in self.peripherals.items():
            if not bz.is_connected(key):
                continue
            n = self._ticks[key]
            sent_any = False
            for uuid, value in p.ticker(n).items():
                if bz.notify(key, uuid, value):
                    delivered += 1
                    sent_any = True
                    self._remember(key, uuid, value)
            if sent_any:
                self._ticks[key] = n + 1
        return delivered

    def _remember(self, address: str, uuid: str, value: bytes) -> None:
        log = self.sent.get((address, uuid))
        if log is None:
            log = self.sent[(address, uuid)] = deque(maxlen=MAX_SENT_KEPT)
        log.append(value)

    def set_rate(self, rate_hz: float) -> None:
        if rate_hz < 0:
            raise SimConfigError("rate_hz must be >= 0")
        self.rate_hz = rate_hz

    # ------------------------------------------------------------------ observation

    def peripheral(self, address: str) -> SimPeripheral:
        return self.peripherals[address.upper()]

    def is_connected(self, address: str) -> bool:
        return self._bz().is_connected(address)

    def is_notifying(self, address: str, uuid: str) -> bool:
        return self._bz().is_notifying(address, uuid)

    def writes(self, address: str) -> list[tuple[str, bytes]]:
        """What centrals wrote to the peripheral's writable characteristics, in order."""
        return list(self.peripheral(address).writes)

    # ------------------------------------------------------------------ faults

    def drop_link(self, address: str, *, readvertise_after_s: float | None = 0.2) -> None:
        """The link drops (``Connected`` false, device removed); it advertises again later."""
        self._bz().drop_link(address, readvertise_after_s=readvertise_after_s)

    def power_off(self, address: str) -> None:
        self._bz().power_off(address)

    def power_on(self, address: str) -> None:
        self._bz().power_on(address)

    def adapter_power(self, on: bool) -> None:
        self._bz().adapter_power(on)

    def send_wrong_length(self, address: str, uuid: str) -> bool:
        """Notify a value one byte longer than the characteristic's format allows."""
        key = address.upper()
        value = self.peripheral(key).characteristic(uuid).value + b"\xee"
        return self._bz().notify(key, uuid, value)

    def notify(self, address: str, uuid: str, value: bytes) -> bool:
        """Notify an arbitrary value (for tests of specific encodings)."""
        sent = self._bz().notify(address.upper(), uuid, value)
        if sent:
            self._remember(address.upper(), uuid, value)
        return sent


def describe(sim: BleSim) -> str:
    """A JSON line with the bus address and the peripherals (for a parent process)."""
    return json.dumps(
        {
            "address": sim.address,
            "adapter": sim.adapter,
            "peripherals": [{"address": p.address, "name": p.name} for p in sim.peripherals.values()],
        }
    )


async def _serve(ns: argparse.Namespace) -> None:
    async with BleSim(rate_hz=ns.rate) as sim:
        print(describe(sim), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ns.duration:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ns.duration)
        else:
            await stop.wait()


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=5.0, help="notifications per second per characteristic")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = run)")


def run_from_args(ns: argparse.Namespace) -> int:
    """Run the default peripherals until SIGINT/SIGTERM; prints ``describe()`` first."""
    asyncio.run(_serve(ns))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fieldgate.sims.ble", description=__doc__.split("\n")[0])
    add_cli_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
