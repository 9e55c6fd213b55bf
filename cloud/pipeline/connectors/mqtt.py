"""MQTT sink: publish each event (QoS 1) to an external broker with paho-mqtt.

The topic comes from the connector's template (``{tenant}``, ``{device}``, ``{type}``,
``{assignment}``, ``{connector}``), the payload is the event's JSON document. A delivery is
done when the broker's PUBACK arrived for every message of it. paho runs its network loop in
its own thread (``loop_start``) and reconnects by itself (1 s … 30 s); its callbacks only
resolve asyncio futures through ``call_soon_threadsafe``. While it is not connected,
``send`` fails at once (retried by the runner) instead of letting paho queue messages in
memory without a bound.

Every (re)connect is vetted against the operator's
:class:`~fieldgate.cloud.domain.connectors.targets.TargetPolicy`: before it, the host is resolved and
every address checked (paho's ``on_pre_connect``, so a refused target is never contacted);
after it, the socket's peer is checked once more (``on_socket_open``, before any MQTT byte is
sent), since paho resolves the name again itself. A refused target makes deliveries fail
permanently (dead letters, reason ``target refused: …``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from fieldgate.cloud.domain.connectors.events import encode_document, event_document, event_type
from fieldgate.cloud.domain.connectors.models import DeliverySpec, MqttSpec
from fieldgate.cloud.domain.connectors.sink import DeliveryError
from fieldgate.cloud.domain.connectors.targets import RESOLVE_TIMEOUT_S, TargetPolicy, TargetRefused, vet_peer
from fieldgate.v1 import events_pb2 as pb

log = logging.getLogger(__name__)


def render_topic(template: str, ev: pb.Event, connector: str) -> str:
    return template.format(
        tenant=ev.tenant,
        device=ev.device,
        type=event_type(ev) or "event",
        assignment=ev.assignment or "none",
        connector=connector,
    )


class MqttSink:
    def __init__(
        self,
        tenant: str,
        connector: str,
        spec: MqttSpec,
        delivery: DeliverySpec,
        *,
        targets: TargetPolicy | None = None,
    ) -> None:
        self._tenant = tenant
        self._targets = targets or TargetPolicy()
        self._refused: str | None = None  # why the last (re)connect was refused (paho's thread)
        self._connector = connector
        self._spec = spec
        self._timeout = delivery.timeout_s
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._pending: dict[int, asyncio.Future[None]] = {}  # mid -> PUBACK (guarded by _lock)
        self._early: set[int] = set()  # PUBACKs that came before we registered the mid
        self._connected = asyncio.Event()
        self._last_error = "not connected yet"

    async def start(self) -> None:
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        client_id = (
            self._spec.client_id or f"fieldgate-{self._tenant}-{self._connector}-{uuid.uuid4().hex[:6]}"
        )
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if self._spec.username is not None:
            pw = self._spec.password.get_secret_value() if self._spec.password is not None else None
            client.username_pw_set(self._spec.username, pw)
        if self._spec.tls:
            client.tls_set_context(ssl.create_default_context())
        client.reconnect_delay_set(1, 30)
        client.max_inflight_messages_set(100)
        client.on_pre_connect = self._on_pre_connect
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(self._spec.host, self._spec.port, keepalive=30)
        client.loop_start()
        self._client = client

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return

        def close() -> None:
            client.disconnect()
            client.loop_stop()

        await asyncio.to_thread(close)
        with self._lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(DeliveryError("mqtt sink stopped"))

    # paho's thread ------------------------------------------------------------------

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            loop.call_soon_threadsafe(fn, *args)

    def _on_pre_connect(self, _c: Any, _u: Any) -> None:
        """Resolve and check the host before paho connects (in paho's thread; the resolver
        runs on the event loop). An OSError makes paho count a failed connect and retry."""
        loop = self._loop
        if loop is None:
            raise ConnectionRefusedError("mqtt sink is not started")
        vet = asyncio.run_coroutine_threadsafe(self._targets.vet(self._spec.host, self._spec.port), loop)
        try:
            vet.result(RESOLVE_TIMEOUT_S + 1.0)
        except TargetRefused as err:
            self._refuse(err.detail)
            raise ConnectionRefusedError(err.reason) from err
        except TimeoutError as err:
            vet.cancel()
            raise ConnectionRefusedError(f"resolving {self._spec.host!r} timed out") from err
        self._refused = None

    def _on_socket_open(self, _c: Any, _u: Any, sock: Any) -> None:
        """The peer paho reached (its own resolution) must be allowed too."""
        try:
            vet_peer(self._targets, sock, self._spec.host)
        except TargetRefused as err:
            self._refuse(err.detail)
            with contextlib.suppress(OSError):
                sock.close()
            raise ConnectionRefusedError(err.reason) from err
        except OSError as err:  # not connected after all: paho's own error handling follows
            log.info("connector %s/%s: mqtt peer unknown: %s", self._tenant, self._connector, err)

    def _refuse(self, detail: str) -> None:
        self._refused = detail
        self._last_error = f"target refused: {detail}"
        log.warning("connector %s/%s: mqtt %s", self._tenant, self._connector, self._last_error)

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._last_error = f"connect refused: {reason}"
            log.warning("connector %s/%s: mqtt %s", self._tenant, self._connector, self._last_error)
            return
        log.info(
            "connector %s/%s: connected to mqtt %s:%d",
            self._tenant,
            self._connector,
            self._spec.host,
            self._spec.port,
        )
        self._call(self._connected.set)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._last_error = f"disconnected: {reason}"
        self._call(self._connected.clear)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        with self._lock:
            fut = self._pending.pop(mid, None)
            if fut is None:
                self._early.add(mid)
                return
        self._call(_resolve, fut)

    # the loop -----------------------------------------------------------------------

    async def send(self, events: Sequence[pb.Event], *, attempt: int) -> None:
        await self.start()
        client = self._client
        assert client is not None and self._loop is not None
        if not self._connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self._timeout, 2.0)):
                    await self._connected.wait()
            refused = self._refused
            if refused is not None:
                raise TargetRefused(refused)
            if not self._connected.is_set():
                raise DeliveryError(f"mqtt {self._spec.host}:{self._spec.port} {self._last_error}")
        futures: list[asyncio.Future[None]] = []
        for ev in events:
            topic = render_topic(self._spec.topic, ev, self._connector)
            payload = encode_document(event_document(ev))
            fut: asyncio.Future[None] = self._loop.create_future()
            with self._lock:
                info = client.publish(topic, payload, qos=self._spec.qos)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise DeliveryError(f"mqtt publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    fut.set_result(None)
                else:
                    self._pending[info.mid] = fut
            futures.append(fut)
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(*futures)
        except TimeoutError as err:
            with self._lock:
                for mid, f in list(self._pending.items()):
                    if f in futures:
                        del self._pending[mid]
            raise DeliveryError(
                f"no PUBACK from {self._spec.host}:{self._spec.port} within {self._timeout}s"
            ) from err


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
