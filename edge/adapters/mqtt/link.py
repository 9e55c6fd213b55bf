"""The link state of MQTT devices: which clients serve which device. Pure, no I/O.

Both MQTT backends report a device's link on their :class:`~fieldgate.edge.health.HealthBoard`
(attribute ``health``), whose transitions the agent forwards to the cloud as PRESENCE state
changes ``connected``/``disconnected`` — as the serial, Modbus and BLE adapters do. The cloud
shows a present device whose link is down as ``offline`` (docs/rules.md).

**Embedded broker** (:class:`LinkTracker`): the broker sees every connection, so the link
is exact. A client *serves* a device from the first sign that it speaks for it —

- it logged in with the device's credentials (``mqtt.auth``; a gateway's own token),
- it subscribes to the device's own commands topic (``fieldgate/<t>/devices/<d>/commands``;
  wildcard filters do not count: a monitor on ``#`` is not every device),
- it publishes events for the device (the topic's device, or each device a SiteWhere payload
  names), or
- it publishes ``connected`` on the device's link topic (``fieldgate/<t>/devices/<d>/link``)

— until it publishes ``disconnected`` there or its connection ends: DISCONNECT, a missed
keepalive, a closed socket, the broker stopping. A device is connected while at least one
client serves it, so one client (a gateway) can serve several devices, and a device that
reconnects with a new client id stays connected while the old connection times out.
Clients are keyed by MQTT client id and each id counts its open connections: in a takeover
(the same id connecting again) the new connection opens before the old one closes, and the
devices stay connected throughout. A client id with no open connection cannot bind anything
(a late event of a connection that is gone changes nothing).

**External broker** (:class:`ReportedLinks`): another broker's clients are invisible to the
agent (Mosquitto publishes client counts under ``$SYS``, not who connected), so the link is
what the devices say on their link topic — ``connected`` after connecting, ``disconnected``
as their will message (the broker publishes it when the client misses its keepalive or its
connection breaks) and before a clean DISCONNECT. Devices that do not publish there have no
link state (docs/protocols/mqtt.md).

Both are bounded: beyond ``max_bindings`` (client, device) pairs a new binding is refused and
counted (``untracked``); the board itself is bounded too.
"""

from __future__ import annotations

from typing import Protocol

from fieldgate.edge.health import HealthBoard

DeviceKey = tuple[str, str]  # (tenant, device)


class LinkReports(Protocol):
    """What the dispatcher tells about links: a client published events for a device, or
    reported the device's link on its link topic. ``client`` is None when unknown (external)."""

    def spoke(self, client: str | None, tenant: str, device: str) -> None: ...

    def reported(self, client: str | None, tenant: str, device: str, up: bool) -> None: ...


class LinkTracker:
    """The embedded broker's view (see the module docstring)."""

    def __init__(self, board: HealthBoard, *, max_bindings: int = 100_000) -> None:
        if max_bindings < 1:
            raise ValueError("max_bindings must be at least 1")
        self.board = board
        self._max = max_bindings
        self._connections: dict[str, int] = {}  # client id → open connections
        self._by_client: dict[str, set[DeviceKey]] = {}
        self._by_device: dict[DeviceKey, set[str]] = {}
        self._bindings = 0
        self.untracked = 0

    # connections ---------------------------------------------------------------------------

    def opened(self, client: str) -> None:
        self._connections[client] = self._connections.get(client, 0) + 1

    def closed(self, client: str) -> None:
        """A connection of ``client`` ended; its devices are released with its last one."""
        left = self._connections.get(client, 0) - 1
        if left > 0:
            self._connections[client] = left
            return
        self._connections.pop(client, None)
        for key in sorted(self._by_client.pop(client, set())):
            self._release(client, key)

    def close_all(self) -> None:
        """The broker stopped: every device is disconnected."""
        for client in list(self._connections):
            self._connections[client] = 1
            self.closed(client)

    # bindings ------------------------------------------------------------------------------

    def bind(self, client: str, tenant: str, device: str) -> None:
        if client not in self._connections:
            return  # that connection is gone already
        key = (tenant, device)
        devices = self._by_client.setdefault(client, set())
        if key in devices:
            return
        if self._bindings >= self._max:
            self.untracked += 1
            if not devices:
                del self._by_client[client]
            return
        devices.add(key)
        self._bindings += 1
        clients = self._by_device.setdefault(key, set())
        clients.add(client)
        if len(clients) == 1:
            self.board.connected(tenant, device)

    def unbind(self, client: str, tenant: str, device: str) -> None:
        key = (tenant, device)
        devices = self._by_client.get(client)
        if devices is None or key not in devices:
            return
        devices.discard(key)
        if not devices:
            del self._by_client[client]
        self._release(client, key)

    def _release(self, client: str, key: DeviceKey) -> None:
        self._bindings -= 1
        clients = self._by_device.get(key)
        if clients is None:
            return
        clients.discard(client)
        if not clients:
            del self._by_device[key]
            self.board.disconnected(*key)

    # LinkReports ---------------------------------------------------------------------------

    def spoke(self, client: str | None, tenant: str, device: str) -> None:
        if client is None:
            return
        self.bind(client, tenant, device)
        if client in self._connections:
            self.board.seen(tenant, device)

    def reported(self, client: str | None, tenant: str, device: str, up: bool) -> None:
        if client is None:
            return
        if up:
            self.bind(client, tenant, device)
        else:
            self.unbind(client, tenant, device)

    # queries -------------------------------------------------------------------------------

    def connected(self, tenant: str, device: str) -> bool:
        return (tenant, device) in self._by_device

    def clients_of(self, tenant: str, device: str) -> frozenset[str]:
        return frozenset(self._by_device.get((tenant, device), ()))

    @property
    def bindings(self) -> int:
        return self._bindings


class ReportedLinks:
    """The external broker's view: the devices' own reports on their link topics."""

    def __init__(self, board: HealthBoard) -> None:
        self.board = board

    def spoke(self, client: str | None, tenant: str, device: str) -> None:
        # A message proves that the device was connected when it sent it, not that it still
        # is: a QoS 1 message delivered late (after the device's will) must not bring it back.
        return

    def reported(self, client: str | None, tenant: str, device: str, up: bool) -> None:
        if up:
            self.board.connected(tenant, device)
        else:
            self.board.down(tenant, device)
