"""The edge session table: which edge owns which device, and each edge's open uplink stream.

:class:`EdgeSessions` remembers which edge owns which (tenant, device) — learned from the
events each edge sends — and sends ``CommandDown`` to the right stream. Its listeners are how
command delivery hears that a device became reachable (a new route, or its edge reconnected)
and about ``CommandStatusUpdate`` messages from edges.

Every stream's outbound direction is a bounded queue (``outbound_queue_size``). Overflow
policy: **acks block** (the stream stops reading until the edge drains its acks, which is
gRPC flow control back to the edge); **commands are refused** (:meth:`EdgeSessions.send_command`
returns False and counts it) — the invocation stays QUEUED in the invocation store and command
delivery sends it again later.

Ingest (cloud/pipeline/ingest/service.py) opens, feeds and closes the sessions; command delivery
(cloud/pipeline/delivery.py) sends through them and listens to them. Both stages share one
:class:`EdgeSessions` object of the process, so it lives here, beside the stages, not in either.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from fieldgate.timeutil import now_ms
from fieldgate.v1 import services_pb2 as svc

log = logging.getLogger(__name__)

# (tenant, device) that just became reachable for commands. Called synchronously from the
# stream handler: it must not block (put the work on the listener's own bounded queue).
RouteListener = Callable[[str, str], None]
# A CommandStatusUpdate from an edge; awaited, so a slow listener slows that edge's stream.
StatusListener = Callable[[svc.CommandStatusUpdate], Awaitable[None]]


@dataclass(slots=True)
class SessionStats:
    sessions_opened: int = 0
    sessions_superseded: int = 0  # an edge reconnected while its old stream was still open
    commands_sent: int = 0
    commands_refused_offline: int = 0  # no connected edge owns the device
    commands_refused_queue_full: int = 0  # the stream's outbound queue was full
    routes_learned: int = 0
    routes_evicted: int = 0  # least recently seen routes forgotten (max_routes)
    status_updates: int = 0


class EdgeSession:
    """One connected edge stream: its identity and its bounded outbound queue."""

    def __init__(self, edge_id: str, queue_size: int, tenants: frozenset[str] | None = None) -> None:
        self.edge_id = edge_id
        # The tenants the edge's client certificate allows (None: no client authentication,
        # any tenant); events and statuses of other tenants are refused.
        self.tenants = tenants
        self.session_id = uuid.uuid4().hex
        self.connected_ms = now_ms()
        self.outbound: asyncio.Queue[svc.CloudMessage] = asyncio.Queue(maxsize=queue_size)
        # Set when the session must end (superseded by a newer stream of the edge, shutdown).
        self.closed = asyncio.Event()
        # Set when the replica drains (SIGTERM): take no further batch, send the acks of what
        # was committed, then end the stream with UNAVAILABLE so the edge goes elsewhere.
        self.draining = asyncio.Event()
        self.batches = 0
        self.events = 0
        self.last_seq = 0


class EdgeSessions:
    """Which edge owns which device, and the open stream of each edge.

    Routes (tenant, device) → edge id outlive a stream: when an edge reconnects its devices
    are reachable again at once (listeners hear of each), without waiting for new events.
    The route table is an LRU bounded by ``max_routes`` (overflow: the least recently seen
    device is forgotten until it sends again; counted in ``stats.routes_evicted``).
    """

    def __init__(self, *, outbound_queue_size: int = 256, max_routes: int = 100_000) -> None:
        self.stats = SessionStats()
        self._queue_size = outbound_queue_size
        self._max_routes = max_routes
        self._routes: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._active: dict[str, EdgeSession] = {}
        self._route_listeners: list[RouteListener] = []
        self._status_listeners: list[StatusListener] = []

    # -- listeners -----------------------------------------------------------------------

    def add_route_listener(self, listener: RouteListener) -> None:
        self._route_listeners.append(listener)

    def add_status_listener(self, listener: StatusListener) -> None:
        self._status_listeners.append(listener)

    def remove_route_listener(self, listener: RouteListener) -> None:
        if listener in self._route_listeners:
            self._route_listeners.remove(listener)

    def remove_status_listener(self, listener: StatusListener) -> None:
        if listener in self._status_listeners:
            self._status_listeners.remove(listener)

    # -- queries -------------------------------------------------------------------------

    @property
    def connected_edges(self) -> list[str]:
        return list(self._active)

    def edge_of(self, tenant: str, device: str) -> str | None:
        """The edge that last sent events of the device (connected or not)."""
        return self._routes.get((tenant, device))

    def is_connected(self, tenant: str, device: str) -> bool:
        edge = self._routes.get((tenant, device))
        return edge is not None and edge in self._active

    def reachable_devices(self) -> list[tuple[str, str]]:
        """Every (tenant, device) whose edge is connected now."""
        return [key for key, edge in self._routes.items() if edge in self._active]

    async def send_command(self, tenant: str, device: str, command: svc.CommandDown) -> bool:
        """Queue ``command`` on the stream of the device's edge; False if it cannot be now."""
        edge = self._routes.get((tenant, device))
        session = self._active.get(edge) if edge is not None else None
        if session is None or session.closed.is_set():
            self.stats.commands_refused_offline += 1
            return False
        try:
            session.outbound.put_nowait(svc.CloudMessage(command=command))
        except asyncio.QueueFull:
            self.stats.commands_refused_queue_full += 1
            log.warning(
                "edge %s: outbound queue full; command %s stays queued",
                session.edge_id,
                command.invocation.invocation,
            )
            return False
        self.stats.commands_sent += 1
        return True

    # -- called by the stream handler ----------------------------------------------------

    def open(self, edge_id: str, tenants: frozenset[str] | None = None) -> EdgeSession:
        """A new stream of ``edge_id`` (allowed ``tenants``, None = any); supersedes (ends) an
        older stream of the same edge."""
        old = self._active.get(edge_id)
        if old is not None:
            self.stats.sessions_superseded += 1
            old.closed.set()
            log.info("edge %s reconnected; ending its previous stream %s", edge_id, old.session_id)
        session = EdgeSession(edge_id, self._queue_size, tenants)
        self._active[edge_id] = session
        self.stats.sessions_opened += 1
        for tenant, device in [k for k, e in self._routes.items() if e == edge_id]:
            self._notify_route(tenant, device)
        return session

    def close(self, session: EdgeSession) -> None:
        session.closed.set()
        if self._active.get(session.edge_id) is session:
            del self._active[session.edge_id]

    def drain_all(self) -> None:
        """Ask every stream to finish the batch in hand and end (see :meth:`~fieldgate.cloud.pipeline.ingest.service.IngestService.drain`)."""
        for session in list(self._active.values()):
            session.draining.set()

    def close_all(self) -> None:
        """End every stream (shutdown): each handler finishes and its stream completes."""
        for session in list(self._active.values()):
            session.closed.set()

    def learn(self, session: EdgeSession, tenant: str, devices: Iterable[str]) -> None:
        """Record that ``devices`` sent events through ``session``'s edge."""
        if self._active.get(session.edge_id) is not session:
            return  # a superseded stream: its newer stream owns the routes
        edge = session.edge_id
        for device in devices:
            key = (tenant, device)
            current = self._routes.get(key)
            if current == edge:
                self._routes.move_to_end(key)
                continue
            self._routes[key] = edge
            self._routes.move_to_end(key)
            self.stats.routes_learned += 1
            if len(self._routes) > self._max_routes:
                self._routes.popitem(last=False)
                self.stats.routes_evicted += 1
            self._notify_route(tenant, device)

    async def report_status(self, session: EdgeSession, update: svc.CommandStatusUpdate) -> None:
        self.stats.status_updates += 1
        if update.tenant and update.device:
            self.learn(session, update.tenant, [update.device])
        for listener in self._status_listeners:
            await listener(update)

    def _notify_route(self, tenant: str, device: str) -> None:
        for listener in self._route_listeners:
            listener(tenant, device)
