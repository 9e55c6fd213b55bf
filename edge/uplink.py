"""The edge agent's uplink: one bidirectional gRPC stream to the cloud (EdgeUplink.Connect).

Why it is shaped like this:

- **The buffer is the outbox.** The uplink holds no events of its own. Each session starts
  reading the buffer from its beginning, so everything that was not acknowledged by the cloud
  (sent in a session that broke, or never sent) is sent again; the cloud de-duplicates on the
  alternate id. Events leave the buffer only on ``BatchAck``.
- **Batches, pre-encoded.** Events are stored serialized; a batch message is assembled from
  those bytes (:func:`encode_batch`) instead of parsing and re-serializing every event.
  A batch holds up to ``batch_max_events`` (and at most :data:`MAX_BATCH_BYTES`); when fewer
  are waiting and earlier batches are still unacknowledged, the uplink waits up to
  ``batch_max_delay_ms`` for it to fill (an idle link sends at once).
- **Backpressure.** At most ``max_inflight_batches`` are unacknowledged; beyond that the
  sender waits for acks (the buffer absorbs the difference, under its own bound).
- **Reconnect policy.** On any stream failure the uplink waits a capped exponential backoff
  with jitter (:class:`fieldgate.retry.Backoff`) and reconnects on a fresh channel, logging and counting
  every attempt. The backoff starts over after a session that lived a while.
- **Failover between cloud replicas.** ``target`` is a gRPC target, so it may name several
  ingest replicas (``ipv4:10.0.0.1:50051,10.0.0.2:50051``, or a DNS name with several
  addresses); gRPC's default ``pick_first`` policy connects to the first that answers. Since
  every session uses a fresh channel, a lost session is retried (after the backoff) from the
  first address again, and a replica that is gone is skipped at once (connection refused).
  The new replica gets the buffer from its beginning, like any reconnect. Client keepalive
  pings (:data:`KEEPALIVE_OPTIONS`) end a stream whose replica vanished without closing its
  connection (a host that lost power), so the failover does not wait for TCP to give up.
- **TLS.** With ``ca_file``/``cert_file`` (or ``tls: true``) every channel — sessions and the
  backoff probe — is a TLS channel (mutual TLS with the edge's certificate); the files are
  read at ``start()``, so a missing one fails the agent's start. A cloud that refuses the
  edge's certificate (UNAUTHENTICATED: revoked; PERMISSION_DENIED: another edge's) is not
  probed: the uplink waits its whole backoff, as retrying sooner cannot help.
- **Command statuses survive outages.** :meth:`Uplink.send_status` writes a status if a
  session is up; the :class:`StatusOutbox` (the command router's table) keeps every status
  until it is *confirmed*. A status counts as confirmed once the cloud acknowledges a batch
  sent after it on the same stream (a stream is ordered, so the cloud has read the status).
  Unconfirmed statuses are sent again at the start of every session.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from fieldgate import __version__
from fieldgate.edge.buffer import EventBuffer
from fieldgate.edge.config import UplinkConfig
from fieldgate.edge.errors import EdgeError, UplinkError
from fieldgate.errors import ConfigError
from fieldgate.retry import Backoff
from fieldgate.tasks import cancel_and_wait
from fieldgate.timeutil import now_ms
from fieldgate.v1 import events_pb2 as pb
from fieldgate.v1 import services_pb2 as svc

log = logging.getLogger(__name__)

CONNECT_METHOD = "/fieldgate.v1.EdgeUplink/Connect"
# Stay below gRPC's default 4 MiB receive limit on the cloud side.
MAX_BATCH_BYTES = 3 * 1024 * 1024
WELCOME_TIMEOUT_S = 10.0
# A session that lived at least this long resets the backoff to its initial delay.
HEALTHY_SESSION_S = 1.0
# Statuses written on a stream and waiting for a later BatchAck to confirm them. Past this
# the oldest are forgotten here; they stay unconfirmed in the outbox and are resent later.
MAX_UNCONFIRMED_TRACKED = 10_000

# Ping the cloud every 20 s, also while nothing is sent, and give up on the stream when a
# ping is not answered within 10 s. The cloud's ingest server accepts pings 5 s apart or more.
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

OnCommand = Callable[[svc.CommandDown], Awaitable[None]]


class StatusOutbox(Protocol):
    """Durable store of command statuses that the cloud may not have seen yet."""

    async def unconfirmed_statuses(self) -> list[svc.CommandStatusUpdate]:
        """Latest status of every invocation whose status is not confirmed, oldest first."""

    async def confirm_statuses(self, keys: Sequence[tuple[str, int]]) -> None:
        """Mark ``(invocation, status)`` pairs as seen by the cloud."""


@dataclass(slots=True)
class UplinkStats:
    connected: bool = False
    sessions: int = 0  # streams that got a Welcome
    reconnects: int = 0  # backoff waits after a failed or lost stream
    batches_sent: int = 0
    events_sent: int = 0
    batches_acked: int = 0
    events_acked: int = 0
    events_refused: int = 0  # the cloud acknowledged but refused them permanently (BatchAck.rejected)
    commands_received: int = 0
    command_errors: int = 0
    statuses_sent: int = 0
    edge_statuses_sent: int = 0  # EdgeStatus reports (buffer figures) sent
    last_backoff_s: float = 0.0
    probe_shortcuts: int = 0  # backoff waits cut short because the cloud answered a probe
    auth_refusals: int = 0  # sessions the cloud refused for this edge's certificate
    last_error: str = ""  # why the last session failed or ended


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_batch(seq: int, events: Sequence[bytes]) -> bytes:
    """The wire bytes of ``EdgeMessage{batch: EventBatchUp{seq, events}}`` from serialized events.

    Protobuf's encoding of a repeated message field is the concatenation of
    ``tag, length, bytes`` per element, so already-serialized events are framed, not re-encoded.
    """
    parts = [b"\x08", _varint(seq)]  # EventBatchUp.seq (field 1, varint)
    for data in events:
        parts += (b"\x12", _varint(len(data)), data)  # EventBatchUp.events (field 2)
    inner = b"".join(parts)
    return b"\x12" + _varint(len(inner)) + inner  # EdgeMessage.batch (field 2)


def _serialize(message: svc.EdgeMessage | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


@dataclass(slots=True)
class _Session:
    call: grpc.aio.StreamStreamCall[svc.EdgeMessage | bytes, svc.CloudMessage]
    slots: asyncio.Semaphore
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_seq: int = 1
    # seq -> (first buffer seq, last buffer seq, event count)
    inflight: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    # (first batch seq that confirms it, invocation, status)
    unconfirmed: list[tuple[int, str, int]] = field(default_factory=list)
    reports: bool = False  # the cloud takes EdgeStatus (Welcome.features)


class Uplink:
    """Streams the buffer to the cloud and passes commands down; see the module docstring.

    Lifecycle: ``await start()`` … ``await stop()`` (idempotent). ``on_command`` is awaited
    for every CommandDown; ``outbox`` (optional) makes command statuses survive outages.
    """

    def __init__(
        self,
        config: UplinkConfig,
        edge_id: str,
        buffer: EventBuffer,
        on_command: OnCommand,
        *,
        outbox: StatusOutbox | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._edge_id = edge_id
        self._buffer = buffer
        self._on_command = on_command
        self._outbox = outbox
        self._rng = rng or random.Random()
        self.stats = UplinkStats()
        self._task: asyncio.Task[None] | None = None
        self._session: _Session | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._welcomed = False
        self._credentials: grpc.ChannelCredentials | None = None

    def _load_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials from the configured files (None: plaintext); ConfigError naming the
        key when a file cannot be read."""
        cfg = self._config
        if not cfg.uses_tls:
            return None

        def read(path: Path | None, key: str) -> bytes | None:
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as err:
                raise ConfigError(f"uplink.{key}: cannot read {path}: {err.strerror}") from err

        return grpc.ssl_channel_credentials(
            root_certificates=read(cfg.ca_file, "ca_file"),
            private_key=read(cfg.key_file, "key_file"),
            certificate_chain=read(cfg.cert_file, "cert_file"),
        )

    def _channel(self, options: Sequence[tuple[str, int | str]]) -> grpc.aio.Channel:
        """A fresh channel to the target: TLS when configured, else plaintext."""
        opts = list(options)
        if self._credentials is None:
            return grpc.aio.insecure_channel(self._config.target, options=opts)
        if self._config.server_name is not None:
            opts.append(("grpc.ssl_target_name_override", self._config.server_name))
        return grpc.aio.secure_channel(self._config.target, self._credentials, options=opts)

    @property
    def connected(self) -> bool:
        return self._session is not None

    async def start(self) -> None:
        if self._task is None:
            self._credentials = self._load_credentials()
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"uplink-{self._edge_id}")

    async def stop(self) -> None:
        """Close the stream; unacknowledged events stay in the buffer for the next start."""
        self._stopping = True
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def wait_connected(self, max_wait_s: float | None = None) -> bool:
        """Wait until a session is up; False on timeout (for tests and start-up checks)."""
        try:
            async with asyncio.timeout(max_wait_s):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def send_status(self, update: svc.CommandStatusUpdate) -> None:
        """Send a command status now if connected. Never raises: without a session (or if the
        write fails) the outbox still holds it and it is sent again after reconnecting."""
        session = self._session
        if session is None:
            return
        try:
            async with session.write_lock:
                await session.call.write(svc.EdgeMessage(command_status=update))
                session.unconfirmed.append((session.next_seq, update.invocation, update.status))
                if len(session.unconfirmed) > MAX_UNCONFIRMED_TRACKED:
                    del session.unconfirmed[0]
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as err:
            log.debug(
                "status %s for %s not sent now (%s); resent after reconnect",
                update.status,
                update.invocation,
                err,
            )
            return
        self.stats.statuses_sent += 1

    # ------------------------------------------------------------------ connection loop

    async def _run(self) -> None:
        backoff = Backoff(
            self._config.backoff_initial_s, self._config.backoff_max_s, jitter=True, rng=self._rng
        )
        loop = asyncio.get_running_loop()
        target = self._config.target
        while not self._stopping:
            started = loop.time()
            self._welcomed = False
            reason = "stream ended"
            refused = False
            try:
                await self._connect_once()
            except (grpc.aio.AioRpcError, EdgeError) as err:
                reason = _describe(err)
                refused = isinstance(err, grpc.aio.AioRpcError) and err.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                )
            except Exception as err:  # task top: the uplink must outlive any bug
                log.exception("uplink session to %s crashed", target)
                reason = f"crashed: {err!r}"
            if self._stopping:
                break
            if self._welcomed and loop.time() - started >= HEALTHY_SESSION_S:
                backoff.reset()
            delay = backoff.next_delay()
            attempt = backoff.attempt
            self.stats.reconnects += 1
            self.stats.last_backoff_s = delay
            self.stats.last_error = reason
            if refused:
                self.stats.auth_refusals += 1
            # The first failure is a warning; further attempts during the same outage are info.
            log.log(
                logging.WARNING if self._welcomed or attempt == 1 else logging.INFO,
                "uplink to %s %s: %s; reconnecting in %.2fs (attempt %d, %d events buffered)",
                target,
                "lost" if self._welcomed else "failed",
                reason,
                delay,
                attempt,
                self._buffer.depth,
            )
            if refused:  # the cloud answers but refuses this edge: probing would only hammer it
                await asyncio.sleep(delay)
            else:
                await self._wait_before_reconnect(delay)

    async def _wait_before_reconnect(self, delay: float) -> None:
        """Sleep ``delay`` — or less, if the cloud is reachable again before that.

        A channel with a short reconnect backoff (``probe_interval_s``) tries TCP connects only
        (no stream, no Hello) while we back off; when one succeeds the wait ends and the next
        session starts at once. The stream backoff still bounds how often sessions are
        attempted while the cloud is up but failing them; after an outage the edge notices the
        cloud within about one probe interval instead of up to ``backoff_max_s``.
        """
        probe_s = self._config.probe_interval_s
        if probe_s <= 0 or delay <= probe_s:
            await asyncio.sleep(delay)
            return
        ms = max(100, int(probe_s * 1000))
        options = [
            ("grpc.initial_reconnect_backoff_ms", ms),
            ("grpc.min_reconnect_backoff_ms", ms),
            ("grpc.max_reconnect_backoff_ms", ms),
        ]
        channel = self._channel(options)
        try:
            async with asyncio.timeout(delay):
                await channel.channel_ready()
            self.stats.probe_shortcuts += 1
        except TimeoutError:
            pass
        finally:
            await channel.close(None)

    async def _connect_once(self) -> None:
        """Run one session until it fails (it always ends by raising)."""
        # A fresh channel per session: a channel that saw the cloud go away applies gRPC's own
        # reconnect backoff (up to 2 minutes), which would override ours.
        channel = self._channel(KEEPALIVE_OPTIONS)
        try:
            connect = channel.stream_stream(CONNECT_METHOD, _serialize, svc.CloudMessage.FromString)
            call: grpc.aio.StreamStreamCall[svc.EdgeMessage | bytes, svc.CloudMessage] = connect(None)
            await call.write(svc.EdgeMessage(hello=svc.Hello(edge_id=self._edge_id, version=__version__)))
            try:
                async with asyncio.timeout(WELCOME_TIMEOUT_S):
                    first = await call.read()
            except TimeoutError as err:
                raise UplinkError(f"no Welcome within {WELCOME_TIMEOUT_S:.0f}s") from err
            if not isinstance(first, svc.CloudMessage) or first.WhichOneof("kind") != "welcome":
                raise UplinkError(f"expected Welcome, got {_kind(first)}")
            self._welcomed = True
            session = _Session(call, asyncio.Semaphore(self._config.max_inflight_batches))
            session.reports = "edge-status" in first.welcome.features
            self._session = session
            self.stats.connected = True
            self.stats.sessions += 1
            self._connected.set()
            log.info(
                "uplink connected to %s (session %s, %d events buffered)",
                self._config.target,
                first.welcome.session_id,
                self._buffer.depth,
            )
            if self._outbox is not None:
                for update in await self._outbox.unconfirmed_statuses():
                    await self.send_status(update)
            await self._pump(session)
        finally:
            self._session = None
            self.stats.connected = False
            self._connected.clear()
            await channel.close(grace=None)

    async def _pump(self, session: _Session) -> None:
        sender = asyncio.create_task(self._send_loop(session), name="uplink-send")
        receiver = asyncio.create_task(self._receive_loop(session), name="uplink-receive")
        tasks = {sender, receiver}
        if session.reports and self._config.status_interval_s > 0:
            tasks.add(asyncio.create_task(self._report_loop(session), name="uplink-status"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the failure
            raise UplinkError("uplink stream ended")
        finally:
            await cancel_and_wait(*tasks)

    async def edge_status(self) -> svc.EdgeStatus:
        """The figures only the edge knows: what is buffered and how old the oldest is."""
        buffer = self._buffer
        oldest_ms = 0
        if buffer.depth:
            first = await buffer.read_after(0, 1)
            if first:
                try:
                    ev = pb.Event.FromString(first[0][1])
                    oldest_ms = ev.received_time_ms or ev.event_time_ms
                except DecodeError:
                    oldest_ms = 0
        return svc.EdgeStatus(
            buffer_depth=buffer.depth,
            oldest_pending_ms=oldest_ms,
            failed_decodes=buffer.failed_depth,
            time_ms=now_ms(),
        )

    async def _report_loop(self, session: _Session) -> None:
        """EdgeStatus at once and every ``status_interval_s`` (a write failure ends the stream
        through the other loops; this one just stops)."""
        while True:
            status = await self.edge_status()
            async with session.write_lock:
                await session.call.write(svc.EdgeMessage(status=status))
            self.stats.edge_statuses_sent += 1
            await asyncio.sleep(self._config.status_interval_s)

    async def _send_loop(self, session: _Session) -> None:
        cfg = self._config
        buffer = self._buffer
        cursor = 0  # every session starts over: whatever is still buffered is unacknowledged
        delay = cfg.batch_max_delay_ms / 1000.0
        while True:
            await session.slots.acquire()
            seen = buffer.last_seq
            rows = await buffer.read_after(cursor, cfg.batch_max_events)
            if not rows:
                session.slots.release()
                cursor = max(cursor, seen)
                await buffer.wait_for_data(cursor)
                continue
            if len(rows) < cfg.batch_max_events and delay > 0 and session.inflight:
                # Nagle-style: only while earlier batches are still unacknowledged (the link is
                # busy) does a batch wait a moment to fill; an idle link sends at once, so a
                # lone event (a command response, say) is not delayed. New seqs are contiguous.
                missing = cfg.batch_max_events - len(rows)
                await buffer.wait_for_data(rows[-1][0] + missing - 1, max_wait_s=delay)
                rows += await buffer.read_after(rows[-1][0], missing)
            payloads: list[bytes] = []
            size = 0
            for _, data in rows:
                if payloads and size + len(data) > MAX_BATCH_BYTES:
                    break
                payloads.append(data)
                size += len(data) + 6
            first, last = rows[0][0], rows[len(payloads) - 1][0]
            async with session.write_lock:
                seq = session.next_seq
                session.next_seq += 1
                session.inflight[seq] = (first, last, len(payloads))
                await session.call.write(encode_batch(seq, payloads))
            cursor = last
            self.stats.batches_sent += 1
            self.stats.events_sent += len(payloads)

    async def _receive_loop(self, session: _Session) -> None:
        while True:
            message = await session.call.read()
            if not isinstance(message, svc.CloudMessage):
                raise UplinkError("cloud closed the stream")
            kind = message.WhichOneof("kind")
            if kind == "ack":
                await self._handle_ack(session, message.ack)
            elif kind == "command":
                self.stats.commands_received += 1
                try:
                    await self._on_command(message.command)
                except EdgeError as err:
                    self.stats.command_errors += 1
                    log.error(
                        "command %s for %s/%s not taken: %s",
                        message.command.invocation.invocation,
                        message.command.tenant,
                        message.command.device,
                        err,
                    )
            else:
                log.debug("uplink ignoring unexpected %s", kind)

    async def _handle_ack(self, session: _Session, ack: svc.BatchAck) -> None:
        entry = session.inflight.pop(ack.seq, None)
        if entry is None:
            log.debug("uplink: ack for unknown batch %d", ack.seq)
            return
        first, last, count = entry
        await self._buffer.ack(first, last)
        session.slots.release()
        self.stats.batches_acked += 1
        self.stats.events_acked += count
        if ack.rejected:
            self.stats.events_refused += ack.rejected
            log.warning("cloud refused %d events of batch %d: %s", ack.rejected, ack.seq, ack.reason)
        if session.unconfirmed and self._outbox is not None:
            confirmed = [(inv, st) for threshold, inv, st in session.unconfirmed if threshold <= ack.seq]
            if confirmed:
                session.unconfirmed = [u for u in session.unconfirmed if u[0] > ack.seq]
                await self._outbox.confirm_statuses(confirmed)


def _describe(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    return str(err) or type(err).__name__


def _kind(message: object) -> str:
    if isinstance(message, svc.CloudMessage):
        return message.WhichOneof("kind") or "empty message"
    return "end of stream"
