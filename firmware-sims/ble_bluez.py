"""A simulated bluetoothd: owns ``org.bluez`` on a (private) bus and serves the BlueZ D-Bus API.

It exports the objects bleak's real BlueZ backend reads and calls, with the behaviour bleak
relies on (checked against bleak 3.1's ``backends/bluezdbus``):

- ``/org/bluez/<hci>``: ``org.bluez.Adapter1`` with ``Roles`` (bleak picks the first powered
  adapter with the ``central`` role), ``SetDiscoveryFilter``, ``StartDiscovery``,
  ``StopDiscovery``, ``RemoveDevice``.
- ``/org/bluez/<hci>/dev_XX_..``: ``org.bluez.Device1``. A device object exists while the
  peripheral advertises (``InterfacesAdded``); while the adapter is discovering each advertising
  device sends an ``RSSI`` ``PropertiesChanged`` every ``adv_interval_s`` — bleak's scanner turns
  both into advertisement callbacks. ``Connect`` sets ``Connected``, exports the GATT objects and
  then sets ``ServicesResolved`` (bleak waits for it before service discovery).
- ``.../serviceXXXX`` ``org.bluez.GattService1`` and ``.../serviceXXXX/charYYYY``
  ``org.bluez.GattCharacteristic1`` (path shapes matter: bleak derives the device path by cutting
  21 characters off a characteristic path and handles from the last 4 hex digits).
  ``ReadValue``/``WriteValue``/``StartNotify``/``StopNotify``. bleak subscribes with
  ``StartNotify`` by default and receives notifications as ``PropertiesChanged`` of ``Value``,
  which is what :meth:`SimulatedBlueZ.notify` emits; ``AcquireNotify`` (fd passing) is not
  offered (no ``NotifyAcquired`` property), so bleak never tries it.

``GetManagedObjects`` is answered by dbus-fast's built-in ObjectManager on ``/``.
Fault controls (link loss, peripheral power, adapter power, malformed notifications) are
methods of :class:`SimulatedBlueZ`, driven by :class:`fieldgate.sims.ble.BleSim`.
"""

# No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus signatures from the
# annotations at class creation, and would take a postponed ``-> None`` for a signature.
import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

from dbus_fast import BusType, DBusError, Message, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusDict,
    DBusInt16,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt16,
    DBusUInt32,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from fieldgate.sims.ble_gatt import SimCharacteristic, SimPeripheral, SimService
from fieldgate.sims.errors import SimConnectError, SimError
from fieldgate.tasks import cancel_and_wait

log = logging.getLogger(__name__)

DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusPathList = Annotated[list[str], DBusSignature("ao")]

BLUEZ = "org.bluez"
ERR_FAILED = "org.bluez.Error.Failed"
ERR_NOT_READY = "org.bluez.Error.NotReady"
ERR_NOT_PERMITTED = "org.bluez.Error.NotPermitted"
ERR_NOT_SUPPORTED = "org.bluez.Error.NotSupported"
ERR_DOES_NOT_EXIST = "org.bluez.Error.DoesNotExist"
READ = PropertyAccess.READ


def device_path(adapter_path: str, address: str) -> str:
    return f"{adapter_path}/dev_{address.upper().replace(':', '_')}"


class Adapter1(ServiceInterface):
    def __init__(self, bluez: "SimulatedBlueZ", address: str, name: str) -> None:
        super().__init__("org.bluez.Adapter1")
        self._bluez = bluez
        self._address = address
        self._name = name
        self.powered = True
        self.discovering = False

    @dbus_property(access=READ)
    def Address(self) -> DBusStr:
        return self._address

    @dbus_property(access=READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(access=READ)
    def Name(self) -> DBusStr:
        return self._name

    @dbus_property(access=READ)
    def Alias(self) -> DBusStr:
        return self._name

    @dbus_property(access=READ)
    def Class(self) -> DBusUInt32:
        return 0

    @dbus_property(access=READ)
    def Powered(self) -> DBusBool:
        return self.powered

    @dbus_property(access=READ)
    def Discoverable(self) -> DBusBool:
        return False

    @dbus_property(access=READ)
    def Pairable(self) -> DBusBool:
        return True

    @dbus_property(access=READ)
    def Discovering(self) -> DBusBool:
        return self.discovering

    @dbus_property(access=READ)
    def UUIDs(self) -> DBusStrList:
        return []

    @dbus_property(access=READ)
    def Roles(self) -> DBusStrList:
        return ["central", "peripheral"]

    @dbus_method()
    def SetDiscoveryFilter(self, properties: DBusDict) -> None:
        self._bluez.stats_calls("SetDiscoveryFilter")

    @dbus_method()
    def StartDiscovery(self) -> None:
        if not self.powered:
            raise DBusError(ERR_NOT_READY, "Resource Not Ready")
        self._bluez.stats_calls("StartDiscovery")
        self._bluez.discovery_sessions(+1)

    @dbus_method()
    def StopDiscovery(self) -> None:
        if not self.powered:
            raise DBusError(ERR_NOT_READY, "Resource Not Ready")
        self._bluez.stats_calls("StopDiscovery")
        self._bluez.discovery_sessions(-1)

    @dbus_method()
    def RemoveDevice(self, device: DBusObjectPath) -> None:
        self._bluez.remove_device_path(device)

    @dbus_method()
    def GetDiscoveryFilters(self) -> DBusStrList:
        return ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern"]


class Device1(ServiceInterface):
    def __init__(self, bluez: "SimulatedBlueZ", dev: "_Device") -> None:
        super().__init__("org.bluez.Device1")
        self._bluez = bluez
        self._dev = dev

    @dbus_property(access=READ)
    def Address(self) -> DBusStr:
        return self._dev.peripheral.address

    @dbus_property(access=READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(access=READ)
    def Name(self) -> DBusStr:
        return self._dev.peripheral.name

    @dbus_property(access=READ)
    def Alias(self) -> DBusStr:
        return self._dev.peripheral.name

    @dbus_property(access=READ)
    def Adapter(self) -> DBusObjectPath:
        return self._bluez.adapter_path

    @dbus_property(access=READ)
    def Connected(self) -> DBusBool:
        return self._dev.connected

    @dbus_property(access=READ)
    def ServicesResolved(self) -> DBusBool:
        return self._dev.services_resolved

    @dbus_property(access=READ)
    def Paired(self) -> DBusBool:
        return False

    @dbus_property(access=READ)
    def Bonded(self) -> DBusBool:
        return False

    @dbus_property(access=READ)
    def Trusted(self) -> DBusBool:
        return False

    @dbus_property(access=READ)
    def Blocked(self) -> DBusBool:
        return False

    @dbus_property(access=READ)
    def LegacyPairing(self) -> DBusBool:
        return False

    @dbus_property(access=READ)
    def UUIDs(self) -> DBusStrList:
        return self._dev.peripheral.service_uuids

    @dbus_property(access=READ)
    def RSSI(self) -> DBusInt16:
        return self._dev.peripheral.rssi

    @dbus_method()
    async def Connect(self) -> None:
        await self._bluez.connect(self._dev)

    @dbus_method()
    def Disconnect(self) -> None:
        self._bluez.disconnect(self._dev, remove=False)

    @dbus_method()
    def Pair(self) -> None:
        raise DBusError(ERR_NOT_SUPPORTED, "Operation is not supported")

    @dbus_method()
    def CancelPairing(self) -> None:
        raise DBusError(ERR_DOES_NOT_EXIST, "Does Not Exist")


class GattService1(ServiceInterface):
    def __init__(self, uuid: str, device: str) -> None:
        super().__init__("org.bluez.GattService1")
        self._uuid = uuid
        self._device = device

    @dbus_property(access=READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=READ)
    def Primary(self) -> DBusBool:
        return True

    @dbus_property(access=READ)
    def Device(self) -> DBusObjectPath:
        return self._device

    @dbus_property(access=READ)
    def Includes(self) -> DBusPathList:
        return []


class GattCharacteristic1(ServiceInterface):
    def __init__(
        self, bluez: "SimulatedBlueZ", dev: "_Device", char: SimCharacteristic, service: str
    ) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self._bluez = bluez
        self._dev = dev
        self.char = char
        self._service = service
        self.notifying = False

    @dbus_property(access=READ)
    def UUID(self) -> DBusStr:
        return self.char.uuid

    @dbus_property(access=READ)
    def Service(self) -> DBusObjectPath:
        return self._service

    @dbus_property(access=READ)
    def Value(self) -> DBusBytes:
        return self.char.value

    @dbus_property(access=READ)
    def Notifying(self) -> DBusBool:
        return self.notifying

    @dbus_property(access=READ)
    def Flags(self) -> DBusStrList:
        return list(self.char.flags)

    @dbus_property(access=READ)
    def MTU(self) -> DBusUInt16:
        return 247

    def _check_connected(self) -> None:
        if not self._dev.connected:
            raise DBusError(ERR_FAILED, "Not connected")

    @dbus_method()
    def ReadValue(self, options: DBusDict) -> DBusBytes:
        self._check_connected()
        if "read" not in self.char.flags:
            raise DBusError(ERR_NOT_PERMITTED, "Read not permitted")
        return self.char.value

    @dbus_method()
    def WriteValue(self, value: DBusBytes, options: DBusDict) -> None:
        self._check_connected()
        kind = options.get("type", Variant("s", "request")).value
        wanted = "write" if kind == "request" else "write-without-response"
        if wanted not in self.char.flags:
            raise DBusError(ERR_NOT_PERMITTED, "Write not permitted")
        self.char.value = bytes(value)
        self._bluez.stats.writes += 1
        if self.char.on_write is not None:
            answer = self.char.on_write(bytes(value))
            if answer is not None:
                # The firmware answers after the write response, like a real device would.
                self._bluez.later(self._bluez.notify_later(self._dev, *answer))

    @dbus_method()
    def StartNotify(self) -> None:
        self._check_connected()
        if "notify" not in self.char.flags and "indicate" not in self.char.flags:
            raise DBusError(ERR_NOT_SUPPORTED, "Operation is not supported")
        if not self.notifying:
            self.notifying = True
            self.emit_properties_changed({"Notifying": True})

    @dbus_method()
    def StopNotify(self) -> None:
        if self.notifying:
            self.notifying = False
            self.emit_properties_changed({"Notifying": False})

    def notify(self, value: bytes) -> bool:
        """Send one notification (a ``Value`` change) if a central subscribed; True if sent."""
        self.char.value = value
        if not self.notifying:
            return False
        self.emit_properties_changed({"Value": value})
        return True


@dataclass
class _Device:
    peripheral: SimPeripheral
    path: str
    iface: Device1 | None = None
    advertising: bool = True
    connected: bool = False
    services_resolved: bool = False
    exported: bool = False
    # GATT object paths exported while connected, and the characteristics by uuid.
    gatt_paths: list[tuple[str, ServiceInterface]] = field(default_factory=list)
    chars: dict[str, GattCharacteristic1] = field(default_factory=dict)


@dataclass
class BlueZStats:
    connects: int = 0
    disconnects: int = 0
    notifications: int = 0
    writes: int = 0
    calls: dict[str, int] = field(default_factory=dict)


class SimulatedBlueZ:
    """The ``org.bluez`` service on the bus at ``bus_address`` with one adapter.

    ``async with SimulatedBlueZ(address) as bluez: bluez.add_peripheral(p)``.
    """

    def __init__(
        self,
        bus_address: str,
        *,
        adapter: str = "hci0",
        adapter_address: str = "00:1A:7D:DA:71:13",
        adv_interval_s: float = 0.1,
        connect_delay_s: float = 0.0,
    ) -> None:
        self._bus_address = bus_address
        self.adapter_path = f"/org/bluez/{adapter}"
        self._adapter = Adapter1(self, adapter_address, f"fieldgate-sim-{adapter}")
        self._adv_interval = adv_interval_s
        self._connect_delay = connect_delay_s
        self._bus: MessageBus | None = None
        self._devices: dict[str, _Device] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._adv_task: asyncio.Task[None] | None = None
        self._sessions = 0
        self.stats = BlueZStats()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        bus = MessageBus(bus_address=self._bus_address, bus_type=BusType.SYSTEM)
        await bus.connect()
        reply = await bus.request_name(BLUEZ)
        if reply is not RequestNameReply.PRIMARY_OWNER:
            bus.disconnect()
            raise SimConnectError(f"could not own {BLUEZ} on {self._bus_address}: {reply}")
        self._bus = bus
        bus.export(self.adapter_path, self._adapter)
        for dev in self._devices.values():
            if dev.advertising:
                self._export_device(dev)
        self._adv_task = asyncio.create_task(self._advertise(), name="ble-sim-advertise")

    async def stop(self) -> None:
        adv, self._adv_task = self._adv_task, None
        await cancel_and_wait(adv, *self._tasks)
        if self._bus is not None:
            self._bus.disconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._bus.wait_for_disconnect(), 5)  # type: ignore[no-untyped-call]
            self._bus = None

    async def __aenter__(self) -> "SimulatedBlueZ":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def flush(self) -> None:
        """Wait until dbus-daemon has read everything sent so far (a Ping round trip).

        dbus-fast queues outgoing messages without bound; a sim notifying as fast as it can
        awaits this between rounds so its queue never outgrows the socket.
        """
        if self._bus is not None:
            await self._bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus.Peer",
                    member="Ping",
                )
            )

    def later(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task owned by this object (cancelled on stop)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats_calls(self, name: str) -> None:
        self.stats.calls[name] = self.stats.calls.get(name, 0) + 1

    # ------------------------------------------------------------------ peripherals

    def add_peripheral(self, peripheral: SimPeripheral, *, advertising: bool = True) -> None:
        key = peripheral.address.upper()
        if key in self._devices:
            raise SimError(f"peripheral {peripheral.address} already added")
        dev = _Device(peripheral, device_path(self.adapter_path, peripheral.address), advertising=advertising)
        self._devices[key] = dev
        if advertising and self._bus is not None:
            self._export_device(dev)

    def _dev(self, address: str) -> _Device:
        try:
            return self._devices[address.upper()]
        except KeyError:
            raise SimError(f"no simulated peripheral {address}") from None

    def is_connected(self, address: str) -> bool:
        return self._dev(address).connected

    def is_notifying(self, address: str, uuid: str) -> bool:
        char = self._dev(address).chars.get(uuid)
        return char is not None and char.notifying

    def _export_device(self, dev: "_Device") -> None:
        if dev.exported or self._bus is None or not self._adapter.powered:
            return
        dev.iface = Device1(self, dev)
        dev.exported = True
        self._bus.export(dev.path, dev.iface)

    def _unexport_device(self, dev: "_Device") -> None:
        if not dev.exported or self._bus is None:
            return
        dev.exported = False
        self._bus.unexport(dev.path)
        dev.iface = None

    def remove_device_path(self, path: str) -> None:
        for dev in self._devices.values():
            if dev.path == path:
                self.disconnect(dev, remove=True)
                return
        raise DBusError(ERR_DOES_NOT_EXIST, "Does Not Exist")

    def discovery_sessions(self, delta: int) -> None:
        """bluetoothd keeps one discovery session per client: scanning stops with the last one.

        (dbus-fast does not hand the caller's name to a method, so sessions are counted rather
        than keyed by client; a client that vanishes without StopDiscovery leaves one behind.)
        """
        self._sessions = max(0, self._sessions + delta)
        self.set_discovering(self._sessions > 0)

    def set_discovering(self, on: bool) -> None:
        if self._adapter.discovering != on:
            self._adapter.discovering = on
            self._adapter.emit_properties_changed({"Discovering": on})
        if on:
            self._advertise_once()

    def _advertise_once(self) -> None:
        for dev in self._devices.values():
            if dev.advertising and not dev.connected and self._adapter.powered:
                if not dev.exported:
                    self._export_device(dev)
                elif dev.iface is not None:
                    dev.iface.emit_properties_changed({"RSSI": dev.peripheral.rssi})

    async def _advertise(self) -> None:
        """While discovering, every advertising device is "heard" once per interval."""
        while True:
            await asyncio.sleep(self._adv_interval)
            if self._adapter.discovering:
                self._advertise_once()

    async def connect(self, dev: "_Device") -> None:
        if not self._adapter.powered:
            raise DBusError(ERR_NOT_READY, "Resource Not Ready")
        if dev.connected:
            return
        if not dev.advertising:
            raise DBusError(ERR_FAILED, "le-connection-abort-by-local")
        if self._connect_delay:
            await asyncio.sleep(self._connect_delay)
        if not dev.exported or self._bus is None:
            raise DBusError(ERR_FAILED, "Software caused connection abort")
        dev.connected = True
        self.stats.connects += 1
        assert dev.iface is not None
        dev.iface.emit_properties_changed({"Connected": True})
        self._export_gatt(dev)
        # bluetoothd resolves services after the Connect reply; bleak waits for this flag.
        self.later(self._resolve_services(dev))

    async def _resolve_services(self, dev: "_Device") -> None:
        await asyncio.sleep(0.01)
        if dev.connected and dev.iface is not None:
            dev.services_resolved = True
            dev.iface.emit_properties_changed({"ServicesResolved": True})

    def _export_gatt(self, dev: "_Device") -> None:
        assert self._bus is not None
        handle = 0x0009
        for service in dev.peripheral.services:
            handle += 1
            spath = f"{dev.path}/service{handle:04x}"
            siface = GattService1(service.uuid, dev.path)
            self._bus.export(spath, siface)
            dev.gatt_paths.append((spath, siface))
            for char in service.characteristics:
                handle += 2  # declaration + value handle
                cpath = f"{spath}/char{handle:04x}"
                ciface = GattCharacteristic1(self, dev, char, spath)
                self._bus.export(cpath, ciface)
                dev.gatt_paths.append((cpath, ciface))
                dev.chars[char.uuid] = ciface

    def _unexport_gatt(self, dev: "_Device") -> None:
        if self._bus is None:
            return
        for path, _iface in reversed(dev.gatt_paths):
            self._bus.unexport(path)
        dev.gatt_paths.clear()
        dev.chars.clear()

    def disconnect(self, dev: "_Device", *, remove: bool) -> None:
        """Drop the link: ``Connected`` false, GATT objects gone; ``remove`` drops the device too."""
        if dev.connected:
            dev.connected = False
            dev.services_resolved = False
            self.stats.disconnects += 1
            if dev.iface is not None:
                dev.iface.emit_properties_changed({"Connected": False, "ServicesResolved": False})
            self._unexport_gatt(dev)
        if remove:
            self._unexport_device(dev)

    # ------------------------------------------------------------------ firmware side

    def notify(self, address: str, uuid: str, value: bytes) -> bool:
        """The peripheral notifies ``value`` on characteristic ``uuid``; True if a central got it."""
        dev = self._dev(address)
        if not dev.connected:
            dev.peripheral.characteristic(uuid).value = value
            return False
        char = dev.chars.get(uuid)
        if char is None:
            raise SimError(f"{address} has no characteristic {uuid}")
        sent = char.notify(value)
        if sent:
            self.stats.notifications += 1
        return sent

    async def notify_later(self, dev: "_Device", uuid: str, value: bytes) -> None:
        await asyncio.sleep(0)
        if dev.connected and uuid in dev.chars:
            if dev.chars[uuid].notify(value):
                self.stats.notifications += 1

    # ------------------------------------------------------------------ faults

    def drop_link(self, address: str, *, readvertise_after_s: float | None = 0.2) -> None:
        """Link loss: the device disconnects and vanishes from BlueZ, then advertises again."""
        dev = self._dev(address)
        self.disconnect(dev, remove=True)
        if readvertise_after_s is None:
            dev.advertising = False
        else:
            dev.advertising = False
            self.later(self._readvertise(dev, readvertise_after_s))

    async def _readvertise(self, dev: "_Device", after_s: float) -> None:
        await asyncio.sleep(after_s)
        dev.advertising = True
        if self._adapter.discovering:
            self._export_device(dev)

    def power_off(self, address: str) -> None:
        """The peripheral loses power: link dropped, device removed, no advertising."""
        dev = self._dev(address)
        dev.advertising = False
        self.disconnect(dev, remove=True)

    def power_on(self, address: str) -> None:
        dev = self._dev(address)
        dev.advertising = True
        if self._adapter.discovering:
            self._export_device(dev)

    def adapter_power(self, on: bool) -> None:
        """Power the host adapter off (every link drops, devices vanish) or back on."""
        if self._adapter.powered == on:
            return
        if not on:
            for dev in self._devices.values():
                self.disconnect(dev, remove=True)
            self._adapter.discovering = False
            self._sessions = 0
            self._adapter.powered = False
            self._adapter.emit_properties_changed({"Powered": False, "Discovering": False})
        else:
            self._adapter.powered = True
            self._adapter.emit_properties_changed({"Powered": True})


__all__ = ["BlueZStats", "SimCharacteristic", "SimService", "SimulatedBlueZ"]
