"""One shared BLE scanner for all device links of an adapter.

bluetoothd keeps one discovery session per D-Bus client and answers a second ``StartDiscovery``
from the same client with ``InProgress``, and bleak shares one bus connection per process for
scanning, so links must not each run their own scanner. Instead each link that misses its device
asks :meth:`Discovery.find` with a matcher (the allow-list entry: address or advertised name);
the scanner runs while at least one link waits and stops when none does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from fieldgate.edge.adapters.ble.stats import BleStats

log = logging.getLogger(__name__)

Matcher = Callable[[BLEDevice, AdvertisementData], bool]


def allow_list_matcher(address: str | None, name: str | None) -> Matcher:
    """Matches the configured address (case-insensitive) or, failing that, the advertised name."""

    def match(device: BLEDevice, adv: AdvertisementData) -> bool:
        if address is not None:
            return device.address.upper() == address
        return name is not None and (adv.local_name == name or device.name == name)

    return match


class Discovery:
    def __init__(self, adapter: str | None, stats: BleStats) -> None:
        self._adapter = adapter
        self._stats = stats
        self._waiters: dict[int, tuple[Matcher, asyncio.Future[BLEDevice]]] = {}
        self._ids = itertools.count()
        self._scanner: BleakScanner | None = None
        self._lock = asyncio.Lock()

    @property
    def scanning(self) -> bool:
        return self._scanner is not None

    async def find(self, matcher: Matcher, timeout_s: float) -> BLEDevice | None:
        """The first advertisement that ``matcher`` accepts within ``timeout_s``, else None.

        Raises bleak's errors when scanning cannot start (no adapter, adapter powered off).
        """
        fut: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()
        wid = next(self._ids)
        self._waiters[wid] = (matcher, fut)
        try:
            await self._start()
            async with asyncio.timeout(timeout_s):
                return await fut
        except TimeoutError:
            return None
        finally:
            self._waiters.pop(wid, None)
            await self._stop_if_idle()

    def _on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        for matcher, fut in list(self._waiters.values()):
            if not fut.done() and matcher(device, adv):
                fut.set_result(device)

    async def _start(self) -> None:
        async with self._lock:
            if self._scanner is not None:
                return
            bluez = {} if self._adapter is None else {"adapter": self._adapter}
            scanner = BleakScanner(self._on_advertisement, bluez=bluez)  # type: ignore[arg-type]
            self._stats.scans_started += 1
            await scanner.start()
            self._scanner = scanner

    async def _stop_if_idle(self) -> None:
        async with self._lock:
            if self._waiters or self._scanner is None:
                return
            scanner, self._scanner = self._scanner, None
            await self._stop_scanner(scanner)

    async def close(self) -> None:
        async with self._lock:
            scanner, self._scanner = self._scanner, None
            if scanner is not None:
                await self._stop_scanner(scanner)

    @staticmethod
    async def _stop_scanner(scanner: BleakScanner) -> None:
        # Stopping fails when the adapter vanished or the bus died; scanning is over either way.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                try:
                    await scanner.stop()
                except (OSError, EOFError, AssertionError) as err:
                    log.info("BLE scanner stop failed (%s); scanning has ended anyway", err)
                except Exception as err:  # noqa: BLE001 - bleak raises BleakError/BleakDBusError here
                    log.info("BLE scanner stop failed (%s); scanning has ended anyway", err)
