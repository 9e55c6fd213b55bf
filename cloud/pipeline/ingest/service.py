"""Ingest: the cloud end of the edge uplink (``EdgeUplink.Connect``).

One bidirectional gRPC stream per edge agent. The edge sends ``Hello`` first (anything else
ends the stream with INVALID_ARGUMENT), the cloud answers ``Welcome``; then the edge sends
``EventBatchUp`` messages and the cloud answers each with ``BatchAck(seq)`` **after** the
batch's events are durably published to the tenants' ``[decoded]`` topics — only then may the
edge delete them from its buffer. Batches of one stream are handled in order, so the acks go
out in seq order and a device's events stay in order on the bus; batches that are already
waiting when the previous publish returns (the edge keeps several in flight) are published
together, one durable bus write for all of them, and then acknowledged one by one. Events of a tenant
the registry does not know, and events without a device or an alternate id, are refused
permanently: counted, and reported in ``BatchAck.rejected``/``reason`` (the edge does not
retry them). If the bus is unavailable the stream ends with UNAVAILABLE and no ack: the edge
keeps the batch and sends it again after reconnecting (the pipeline de-duplicates).

Client certificates (``tls`` with ``require_client_cert``, cloud/tls.py): the certificate is
checked before Hello (missing, revoked → UNAUTHENTICATED; naming no edge → PERMISSION_DENIED),
a Hello whose edge id is not the certificate's is refused (PERMISSION_DENIED), and events or
command statuses naming a tenant the certificate does not list are refused like the other
permanent refusals (counted, ``BatchAck.rejected``), so they never reach the bus or a route.

Rate limits: a tenant whose live settings set ``max_events_per_s`` gets a token bucket (per
ingest replica; ``burst_events`` deep, one second's worth by default;
cloud/pipeline/ingest/ratelimit.py). A batch whose events
would overdraw its tenant's bucket is **held**: the batches before it are published and
acknowledged, it is not — it waits, unacknowledged, until the bucket has refilled, and the
stream reads nothing meanwhile (the edge's in-flight window fills and its durable buffer holds
the rest). Counted in ``stats.batches_throttled`` / ``events_throttled`` / ``throttled_s`` and
logged with the reason. Not a refusal in ``BatchAck.rejected``: the edge deletes every event of
an acknowledged batch, refused ones included, so only a batch that is not acknowledged is
retried — nothing over the rate is lost. A batch larger than the bucket passes when the bucket
is full (the bucket goes into debt, which later batches wait off), so the average holds. A
draining or superseded stream ends the wait; the held batch is sent again by the edge.

Allowed payload formats: the edge's MQTT adapter records the format each event was decoded
from in its metadata (``fieldgate.format``: json, protobuf, sitewhere). A tenant whose live
settings (``tenant_settings``, from ZooKeeper) restrict ``decoders`` has events of any other
format published to its ``[failed-decode]`` topic (a ``FailedDecode`` with the reason and the
serialized event) instead of ``[decoded]``, and reported as refused in the ack. Events without
that key (other adapters, presence) are not filtered. This is the first cloud stage that sees
the format, so a change applies to the next batch.

Edge sessions (:class:`~fieldgate.cloud.pipeline.sessions.EdgeSessions`, shared with command
delivery): each stream opens a session there, teaches it which devices the edge carries, and
sends the session's outbound queue (acks and commands) to the edge. Overflow policy of that
queue: **acks block** (the stream stops reading until the edge drains its acks, which is gRPC
flow control back to the edge); commands are refused (cloud/pipeline/sessions.py).

Known tenants: :class:`~fieldgate.cloud.pipeline.ingest.tenants.TenantCache` (positives for a
minute, unknown tenants for seconds).

Sharing the server: the api helper's gRPC services (device management, event queries,
command invocations) run on the same server and port. Register them before ``start()``::

    ingest = IngestService(bus, registry, sessions, "127.0.0.1", 50051)
    ingest.add_servicers(lambda server: svc_grpc.add_DeviceManagementServicer_to_server(dm, server))
    await ingest.start()       # ingest.port is the bound port (port 0 picks a free one)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc import aio

from fieldgate.cloud.bus import DECODED, FAILED_DECODE, Bus, Message, topic_name
from fieldgate.cloud.errors import BusError, CloudError, StoreError
from fieldgate.cloud.pipeline.ingest.ratelimit import RateLimits
from fieldgate.cloud.pipeline.ingest.tenants import TenantCache
from fieldgate.cloud.pipeline.sessions import EdgeSession, EdgeSessions
from fieldgate.cloud.pipeline.stage import messages_by_device
from fieldgate.cloud.store.registry import Registry
from fieldgate.cloud.tls import PeerRefused, ServerTls
from fieldgate.protocol.topics import FORMAT_METADATA_KEY
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc
from fieldgate.v1 import services_pb2_grpc as svc_grpc

if TYPE_CHECKING:
    from fieldgate.cloud.pipeline.ingest.edges import EdgeTracker
    from fieldgate.cloud.zk.models import TenantSettingsRegistry

log = logging.getLogger(__name__)

# Messages of one stream read ahead of the handler (bounded; overflow policy: stop reading).
READ_AHEAD = 64
# Welcome.features: the optional uplink messages this cloud takes (EdgeStatus).
FEATURES = ("edge-status",)
# Events of consecutive batches published together at most (one bus write for all of them).
MAX_COALESCED_EVENTS = 20_000
ServicerRegistrar = Callable[[aio.Server], None]


class ProtocolViolation(CloudError):
    """The edge broke the uplink protocol (e.g. no Hello first); its stream is ended."""


@dataclass(slots=True)
class IngestStats:
    streams_active: int = 0
    streams_total: int = 0
    streams_refused: int = 0  # over max_streams
    # Refused by the client certificate: missing, revoked, naming no edge or another edge id.
    streams_unauthenticated: int = 0
    protocol_errors: int = 0
    stream_failures: int = 0  # ended by an unexpected error (logged)
    batches: int = 0
    events_accepted: int = 0
    events_rejected: int = 0  # refused permanently (reported in BatchAck.rejected)
    rejected_unknown_tenant: int = 0
    rejected_invalid: int = 0  # no device or no alternate id
    rejected_format: int = 0  # payload format not among the tenant's decoders ([failed-decode])
    rejected_foreign_tenant: int = 0  # a tenant the edge's certificate does not allow
    statuses_foreign_tenant: int = 0  # command statuses of such a tenant (dropped)
    publish_failures: int = 0  # bus unavailable; batch not acked, stream ended UNAVAILABLE
    batches_throttled: int = 0  # held unacknowledged: their tenant was over max_events_per_s
    events_throttled: int = 0  # the events of those batches (counted once per hold)
    throttled_s: float = 0.0  # time streams spent waiting for a tenant's bucket


class _Servicer(svc_grpc.EdgeUplinkServicer):
    def __init__(self, ingest: IngestService) -> None:
        self._ingest = ingest

    async def Connect(
        self,
        request_iterator: AsyncIterator[svc.EdgeMessage],
        context: aio.ServicerContext[svc.EdgeMessage, svc.CloudMessage],
    ) -> AsyncIterator[svc.CloudMessage]:
        # grpc.aio needs an async generator function here (it inspects the handler's kind).
        async for msg in self._ingest.connect(request_iterator, context):
            yield msg


class IngestService:
    """The gRPC server of the cloud, hosting ``EdgeUplink`` (and the api's services)."""

    def __init__(
        self,
        bus: Bus,
        registry: Registry,
        sessions: EdgeSessions,
        host: str = "127.0.0.1",
        port: int = 50051,
        *,
        topic_prefix: str = "fieldgate",
        max_streams: int = 1024,
        max_message_bytes: int = 64 * 1024 * 1024,
        grace_s: float = 2.0,
        tenant_cache_ttl_s: float = 60.0,
        unknown_tenant_ttl_s: float = 5.0,
        tenant_settings: TenantSettingsRegistry | None = None,
        tls: ServerTls | None = None,
        clock: Callable[[], float] = time.monotonic,
        edges: EdgeTracker | None = None,
    ) -> None:
        self.stats = IngestStats()
        # The shared edge directory (the dashboard's edges page), fed from the streams.
        self._edges = edges
        self._limits = RateLimits(tenant_settings, clock)
        # None: plaintext. With client authentication, each stream's certificate decides its
        # edge id and tenants (cloud/tls.py).
        self._tls = tls
        self._live = tenant_settings
        self.host = host
        self.port = port
        self._bus = bus
        self._sessions = sessions
        self._prefix = topic_prefix
        self._max_streams = max_streams
        self._max_message_bytes = max_message_bytes
        self._grace_s = grace_s
        self._tenants = TenantCache(registry, tenant_cache_ttl_s, unknown_tenant_ttl_s, 10_000)
        self._registrars: list[ServicerRegistrar] = []
        self._server: aio.Server | None = None
        self._draining = False
        self._no_streams = asyncio.Event()  # set while no edge stream is open
        self._no_streams.set()

    def forget_tenant(self, tenant: str) -> None:
        """A deleted tenant: ask the registry again (its events are refused from now on)."""
        self._tenants.forget(tenant)
        self._limits.forget(tenant)

    def add_servicers(self, registrar: ServicerRegistrar) -> None:
        """Have ``registrar(server)`` add more gRPC services to this server (before start)."""
        if self._server is not None:
            raise RuntimeError("add_servicers must be called before start()")
        self._registrars.append(registrar)

    async def start(self) -> None:
        options = [
            ("grpc.max_receive_message_length", self._max_message_bytes),
            ("grpc.max_send_message_length", self._max_message_bytes),
            # Notice dead edges (a gateway that lost power keeps no TCP FIN to send).
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        server = aio.server(options=options)
        svc_grpc.add_EdgeUplinkServicer_to_server(_Servicer(self), server)
        for registrar in self._registrars:
            registrar(server)
        address = f"{self.host}:{self.port}"
        if self._tls is not None:
            bound = server.add_secure_port(address, self._tls.credentials())
        else:
            bound = server.add_insecure_port(address)
        if bound == 0:
            raise CloudError(f"cannot bind the gRPC server to {self.host}:{self.port}")
        await server.start()
        self._server = server
        self.port = bound
        log.info(
            "ingest: gRPC listening on %s:%d (%s)",
            self.host,
            bound,
            "plaintext" if self._tls is None else "mutual TLS" if self._tls.client_auth else "TLS",
        )

    @property
    def draining(self) -> bool:
        return self._draining

    async def drain(self, timeout_s: float) -> bool:
        """Graceful shutdown, first half: refuse new streams (UNAVAILABLE), let each open stream
        finish the batch it is publishing, send the acks of everything committed, and end it
        with UNAVAILABLE — the edge keeps what was not acknowledged and sends it to another
        replica (or to this one after its restart). True if every stream ended within
        ``timeout_s``; :meth:`stop` then closes whatever is left."""
        self._draining = True
        self._sessions.drain_all()
        log.info("ingest: draining %d edge stream(s)", self.stats.streams_active)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._no_streams.wait()
        drained = self.stats.streams_active == 0
        if not drained:
            log.warning(
                "ingest: %d stream(s) still open after %.0f s of draining",
                self.stats.streams_active,
                timeout_s,
            )
        return drained

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._draining = True
        self._sessions.close_all()
        await server.stop(self._grace_s)

    # -- one stream ----------------------------------------------------------------------

    async def connect(
        self,
        requests: AsyncIterator[svc.EdgeMessage],
        context: aio.ServicerContext[svc.EdgeMessage, svc.CloudMessage],
    ) -> AsyncIterator[svc.CloudMessage]:
        if self._draining:
            self.stats.streams_refused += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this cloud replica is shutting down; reconnect")
        if self.stats.streams_active >= self._max_streams:
            self.stats.streams_refused += 1
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many edge streams; retry later")
        peer = None
        if self._tls is not None:
            try:  # before Hello: a revoked or foreign certificate gets nothing further
                peer = self._tls.peer(context)
            except PeerRefused as err:
                self.stats.streams_unauthenticated += 1
                log.warning("edge stream from %s refused: %s", context.peer(), err)
                await context.abort(err.code, str(err))
        try:
            first = await anext(aiter(requests))
        except StopAsyncIteration:
            return
        if first.WhichOneof("kind") != "hello" or not first.hello.edge_id:
            self.stats.protocol_errors += 1
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello with an edge_id"
            )
        tenants = None
        if peer is not None:
            if peer.identity is None:
                self.stats.streams_unauthenticated += 1
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "the client certificate names no edge (urn:fieldgate:edge:<tenant>:<edge_id>)",
                )
            if first.hello.edge_id != peer.identity.edge_id:
                self.stats.streams_unauthenticated += 1
                log.warning(
                    "edge stream refused: Hello names edge %r, its certificate edge %r",
                    first.hello.edge_id[:128],
                    peer.identity.edge_id,
                )
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"Hello names edge {first.hello.edge_id[:128]!r} but the client certificate is "
                    f"edge {peer.identity.edge_id!r}'s",
                )
            tenants = peer.identity.tenants
        session = self._sessions.open(first.hello.edge_id, tenants)
        if self._edges is not None:
            self._edges.opened(session.edge_id, session.session_id, first.hello.version)
        self.stats.streams_total += 1
        self.stats.streams_active += 1
        self._no_streams.clear()
        log.info(
            "edge %s connected (session %s, version %r)",
            session.edge_id,
            session.session_id,
            first.hello.version,
        )
        reader = asyncio.create_task(self._read(requests, session), name=f"uplink-read:{session.edge_id}")
        try:
            yield svc.CloudMessage(welcome=svc.Welcome(session_id=session.session_id, features=FEATURES))
            while True:
                msg = await self._next_outbound(session, reader)
                if msg is None:
                    break
                yield msg
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                await self._end_with_error(reader.exception(), session, context)
            if session.draining.is_set():
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "this cloud replica is shutting down; reconnect"
                )
        finally:
            await cancel_and_wait(reader)
            self._sessions.close(session)
            if self._edges is not None:
                self._edges.closed(session.session_id)
            self.stats.streams_active -= 1
            if self.stats.streams_active == 0:
                self._no_streams.set()
            log.info("edge %s disconnected (session %s)", session.edge_id, session.session_id)

    async def _next_outbound(
        self, session: EdgeSession, reader: asyncio.Task[None]
    ) -> svc.CloudMessage | None:
        """The next message for the edge; None when the stream should end.

        After the reader finished (the edge half-closed, or an error) the acks already queued
        are still sent, so that a clean close loses no acknowledgement.
        """
        while True:
            try:
                return session.outbound.get_nowait()
            except asyncio.QueueEmpty:
                pass
            if reader.done() or session.closed.is_set():
                return None
            getter = asyncio.ensure_future(session.outbound.get())
            closed = asyncio.ensure_future(session.closed.wait())
            try:
                await asyncio.wait({getter, closed, reader}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                return getter.result()

    async def _end_with_error(
        self,
        err: BaseException | None,
        session: EdgeSession,
        context: aio.ServicerContext[svc.EdgeMessage, svc.CloudMessage],
    ) -> None:
        if isinstance(err, ProtocolViolation):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if isinstance(err, BusError | StoreError):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cloud cannot accept events now: {err}")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the cloud's log")

    async def _read(self, requests: AsyncIterator[svc.EdgeMessage], session: EdgeSession) -> None:
        """Handle the edge's messages in order; consecutive batches already received are
        published together (one bus publish per tenant for all of them: one durable write
        instead of one per batch), then acknowledged one by one in seq order."""
        inbox: asyncio.Queue[svc.EdgeMessage | BaseException | None] = asyncio.Queue(maxsize=READ_AHEAD)
        pump = asyncio.create_task(self._pump(requests, inbox), name=f"uplink-pump:{session.edge_id}")
        try:
            item = await self._take(inbox, session)
            while item is not None:
                if isinstance(item, BaseException):
                    raise item
                kind = item.WhichOneof("kind")
                if kind == "batch":
                    batches = [item.batch]
                    size = len(item.batch.events)
                    item = None
                    while size < MAX_COALESCED_EVENTS and not session.draining.is_set():
                        try:
                            nxt = inbox.get_nowait()
                        except asyncio.QueueEmpty:
                            break
                        if isinstance(nxt, svc.EdgeMessage) and nxt.WhichOneof("kind") == "batch":
                            batches.append(nxt.batch)
                            size += len(nxt.batch.events)
                        else:
                            item = nxt  # handled after these batches, in stream order
                            break
                    if not await self._accept_in_rate(session, batches):
                        return  # draining or superseded while a batch was held: it is not acked
                    if item is None:
                        item = await self._take(inbox, session)
                    continue
                if kind == "command_status":
                    update = item.command_status
                    if session.tenants is not None and update.tenant not in session.tenants:
                        # Else a status naming another tenant's device would route its commands here.
                        self.stats.statuses_foreign_tenant += 1
                        log.warning(
                            "edge %s: command status for tenant %r dropped (not in its certificate)",
                            session.edge_id,
                            update.tenant[:70],
                        )
                    else:
                        await self._sessions.report_status(session, update)
                elif kind == "status":  # the edge's buffer figures (EdgeStatus)
                    if self._edges is not None:
                        self._edges.reported(session.session_id, item.status)
                elif kind == "hello":
                    raise ProtocolViolation("Hello sent twice on one stream")
                else:
                    raise ProtocolViolation("empty EdgeMessage")
                item = await self._take(inbox, session)
        except ProtocolViolation as err:
            self.stats.protocol_errors += 1
            log.warning("edge %s: protocol error: %s", session.edge_id, err)
            raise
        except (BusError, StoreError) as err:
            self.stats.publish_failures += 1
            log.warning(
                "edge %s: cannot accept events (%s); ending the stream, the edge retries",
                session.edge_id,
                err,
            )
            raise
        except asyncio.CancelledError:
            raise
        except Exception:  # task top: count and log; the stream ends with INTERNAL
            self.stats.stream_failures += 1
            log.exception("edge %s: stream reader failed", session.edge_id)
            raise
        finally:
            await cancel_and_wait(pump)

    async def _accept_in_rate(self, session: EdgeSession, batches: list[svc.EventBatchUp]) -> bool:
        """Publish and acknowledge ``batches`` in order, holding each batch that its tenants'
        rate limits do not allow yet (module docstring). False when the session started
        draining or closed during a hold (the held batch and the rest stay unacknowledged)."""
        i = 0
        while i < len(batches):
            admitted: list[svc.EventBatchUp] = []
            wait, reason = 0.0, ""
            for batch in batches[i:]:
                wait, reason = self._limits.reserve(batch)
                if wait > 0:
                    break
                admitted.append(batch)
            if admitted:
                for ack in await self._accept_batches(session, admitted):
                    # Overflow policy for acks: block (stop reading until the edge drains them).
                    await session.outbound.put(svc.CloudMessage(ack=ack))
                i += len(admitted)
            if i >= len(batches):
                return True
            held = batches[i]
            self.stats.batches_throttled += 1
            self.stats.events_throttled += len(held.events)
            log.warning(
                "edge %s: batch %d (%d events) held %.2fs: %s",
                session.edge_id,
                held.seq,
                len(held.events),
                wait,
                reason,
            )
            started = time.monotonic()
            ended = await self._hold(session, wait)
            self.stats.throttled_s += time.monotonic() - started
            if ended:
                return False
        return True

    @staticmethod
    async def _hold(session: EdgeSession, wait_s: float) -> bool:
        """Wait ``wait_s``; True if the session drains or closes first."""
        stop = asyncio.ensure_future(session.draining.wait())
        closed = asyncio.ensure_future(session.closed.wait())
        try:
            done, _ = await asyncio.wait({stop, closed}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            closed.cancel()
        return bool(done)

    @staticmethod
    async def _take(
        inbox: asyncio.Queue[svc.EdgeMessage | BaseException | None], session: EdgeSession
    ) -> svc.EdgeMessage | BaseException | None:
        """The next message read from the edge; None once the session drains (what is still
        in the inbox is not acknowledged: the edge sends it again elsewhere)."""
        if session.draining.is_set():
            return None
        try:
            return inbox.get_nowait()
        except asyncio.QueueEmpty:
            pass
        getter = asyncio.ensure_future(inbox.get())
        drain = asyncio.ensure_future(session.draining.wait())
        try:
            await asyncio.wait({getter, drain}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None

    @staticmethod
    async def _pump(
        requests: AsyncIterator[svc.EdgeMessage],
        inbox: asyncio.Queue[svc.EdgeMessage | BaseException | None],
    ) -> None:
        """Read ahead of the handler (bounded: a full inbox stops reading, gRPC flow control
        then holds the edge back); the end of the stream or its failure is queued last."""
        try:
            async for msg in requests:
                await inbox.put(msg)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - handed to the reader, which raises it in order
            await inbox.put(err)
            return
        await inbox.put(None)

    def _refuse_formats(
        self,
        tenant: str,
        by_tenant: dict[str, list[pb.Event]],
        rejected: dict[str, int],
        edge_id: str,
        received: int,
    ) -> list[Message]:
        """Take the tenant's events of a payload format its decoders do not allow out of
        ``by_tenant`` (counted in ``rejected``); their [failed-decode] messages."""
        live = self._live.get(tenant) if self._live is not None else None
        if live is None or live.allows_every_format:
            return []
        allowed = live.decoders
        kept: list[pb.Event] = []
        out: list[Message] = []
        for ev in by_tenant[tenant]:
            fmt = ev.metadata.get(FORMAT_METADATA_KEY, "")
            if not fmt or fmt in allowed:
                kept.append(ev)
                continue
            reason = (
                f"payload format {fmt!r} is not among tenant {tenant!r}'s decoders "
                f"({', '.join(allowed) or 'none'})"
            )
            rejected[reason] = rejected.get(reason, 0) + 1
            self.stats.rejected_format += 1
            failed = pb.FailedDecode(
                tenant=tenant,
                source=f"ingest:{edge_id}:{ev.device}",
                reason=reason,
                payload=ev.SerializeToString(),
                received_time_ms=received,
            )
            out.append(Message(key=ev.device.encode(), value=failed.SerializeToString()))
        by_tenant[tenant] = kept
        return out

    async def _accept_batches(
        self, session: EdgeSession, batches: list[svc.EventBatchUp]
    ) -> list[svc.BatchAck]:
        """Publish the batches' acceptable events to [decoded]; one ack per batch (in order)
        saying what was refused. Nothing is acknowledged unless every publish succeeded."""
        received = now_ms()
        per_batch: list[tuple[svc.EventBatchUp, dict[str, list[pb.Event]], dict[str, int]]] = []
        for batch in batches:
            if batch.seq <= session.last_seq and session.batches:
                log.warning(
                    "edge %s: batch seq %d after %d (not increasing)",
                    session.edge_id,
                    batch.seq,
                    session.last_seq,
                )
            session.last_seq = batch.seq
            session.batches += 1
            self.stats.batches += 1
            by_tenant: dict[str, list[pb.Event]] = {}
            rejected: dict[str, int] = {}
            for ev in batch.events:
                if not ev.device or not ev.alternate_id:
                    reason = "event without device" if not ev.device else "event without alternate id"
                    rejected[reason] = rejected.get(reason, 0) + 1
                    self.stats.rejected_invalid += 1
                    continue
                if session.tenants is not None and ev.tenant not in session.tenants:
                    reason = f"tenant {ev.tenant[:70]!r} not allowed by the edge's certificate"
                    rejected[reason] = rejected.get(reason, 0) + 1
                    self.stats.rejected_foreign_tenant += 1
                    continue
                if not ev.received_time_ms:
                    ev.received_time_ms = received
                tenant_events = by_tenant.get(ev.tenant)
                if tenant_events is None:
                    tenant_events = by_tenant[ev.tenant] = []
                tenant_events.append(ev)
            per_batch.append((batch, by_tenant, rejected))

        known: dict[str, bool] = {}
        merged: dict[str, list[pb.Event]] = {}
        failed: dict[str, list[Message]] = {}
        for _batch, by_tenant, rejected in per_batch:
            for tenant in list(by_tenant):
                if tenant not in known:
                    known[tenant] = bool(tenant) and await self._tenants.exists(tenant)
                if not known[tenant]:
                    reason = f"unknown tenant {tenant!r}"
                    n = len(by_tenant.pop(tenant))
                    rejected[reason] = rejected.get(reason, 0) + n
                    self.stats.rejected_unknown_tenant += n
                    continue
                dead = self._refuse_formats(tenant, by_tenant, rejected, session.edge_id, received)
                if dead:
                    failed.setdefault(tenant, []).extend(dead)
                if by_tenant[tenant]:
                    merged.setdefault(tenant, []).extend(by_tenant[tenant])

        for tenant, messages in failed.items():
            await self._bus.publish(topic_name(tenant, FAILED_DECODE, self._prefix), messages)

        for tenant, events in merged.items():
            await self._bus.publish(topic_name(tenant, DECODED, self._prefix), messages_by_device(events))
        for tenant, events in merged.items():
            self._sessions.learn(session, tenant, {ev.device for ev in events})
            if self._edges is not None:
                self._edges.carried(session.session_id, tenant)

        acks = []
        for batch, by_tenant, rejected in per_batch:
            accepted = sum(len(evs) for evs in by_tenant.values())
            refused = sum(rejected.values())
            session.events += accepted
            self.stats.events_accepted += accepted
            self.stats.events_rejected += refused
            text = "; ".join(f"{reason}: {n}" for reason, n in rejected.items())
            if refused:
                log.warning(
                    "edge %s: batch %d: refused %d events (%s)", session.edge_id, batch.seq, refused, text
                )
            acks.append(svc.BatchAck(seq=batch.seq, rejected=refused, reason=text))
        return acks
