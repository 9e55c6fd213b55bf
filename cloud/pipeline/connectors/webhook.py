"""Webhook sink: an HTTP POST of a JSON document per event (or per small batch).

Each request carries

* ``Idempotency-Key``: the event id (for a batch: ``batch-`` and a SHA-256 of the ids) — the
  same event always has the same key, whether it is a retry, a replay or a re-drive;
* ``X-Fieldgate-Signature: sha256=<hex>``: HMAC-SHA256 of the exact body bytes with the
  connector's secret (when one is set), which a receiver recomputes to authenticate us;
* ``X-Fieldgate-Tenant``, ``X-Fieldgate-Connector``, ``X-Fieldgate-Attempt`` (1-based),
  ``X-Fieldgate-Event-Count``.

2xx is delivered. 408, 425, 429 and 5xx, timeouts and connection errors are retried (a
``Retry-After`` in seconds is honoured up to the connector's maximum back-off); any other
status is permanent: the events are dead-lettered at once (a 400 or 404 will not heal).
Redirects are not followed (a 3xx is permanent too): a redirect would be a second target that
nobody vetted. The reason of a failure is the status line with the standard phrase for the
code (``HTTP 500 Internal Server Error``), never the receiver's body or its own phrase — a
dead letter must not become a way to read what an address answers — and the body is not
even read.

Connections go through :class:`VettedTransport`: the sink resolves the URL's host itself,
checks every address against the operator's :class:`~fieldgate.cloud.domain.connectors.targets.
TargetPolicy` and connects to a checked address (TLS still verifies the certificate against
the URL's name), so a name that resolves elsewhere at connect time than at creation (DNS
rebinding) is caught, and no proxy from the environment is used.
"""

from __future__ import annotations

import hashlib
import hmac
import http
import ssl
import typing
from collections.abc import AsyncIterator, Iterable, Sequence

import httpcore
import httpx

from fieldgate import __version__
from fieldgate.cloud.domain.connectors.events import encode_document, event_document
from fieldgate.cloud.domain.connectors.models import DeliverySpec, WebhookSpec
from fieldgate.cloud.domain.connectors.sink import DeliveryError
from fieldgate.cloud.domain.connectors.targets import TargetPolicy, TargetRefused, parse_address
from fieldgate.v1 import events_pb2 as pb

RETRIED_STATUSES = frozenset({408, 425, 429})
SIGNATURE_HEADER = "X-Fieldgate-Signature"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def idempotency_key(events: Sequence[pb.Event]) -> str:
    if len(events) == 1:
        return events[0].id
    digest = hashlib.sha256("\n".join(ev.id for ev in events).encode()).hexdigest()[:40]
    return f"batch-{digest}"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: use our own back-off


def status_line(code: int) -> str:
    """``HTTP <code> <standard phrase>``: what a failure's reason says of a response."""
    try:
        return f"HTTP {code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


class _VettingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy allows: the name
    is resolved here, every address checked, and the connection made to a checked address;
    the peer is checked once more after connecting."""

    def __init__(self, policy: TargetPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addrs = await self._policy.vet(host, port, timeout_s=timeout or 10.0)
        failure: Exception | None = None
        for addr in addrs:
            try:
                stream = await self._inner.connect_tcp(
                    str(addr), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as err:
                failure = err
                continue
            peer = stream.get_extra_info("server_addr")
            peer_addr = parse_address(str(peer[0])) if isinstance(peer, tuple) else None
            try:
                if peer_addr is None:
                    raise TargetRefused(f"{host}: the connection's peer is not an IP address ({peer!r})")
                self._policy.check_address(peer_addr, host)
            except TargetRefused:
                await stream.aclose()
                raise
            return stream
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("a unix socket is not a connector target")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except httpcore.TimeoutException as err:
            raise httpx.ReadTimeout(str(err)) from err
        except (httpcore.NetworkError, httpcore.ProtocolError) as err:
            raise httpx.ReadError(str(err)) from err

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class VettedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore connection pool whose connections are made by
    :class:`_VettingBackend` (no proxies, no unix sockets)."""

    def __init__(self, policy: TargetPolicy, *, max_connections: int = 4, max_keepalive: int = 2) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive,
            keepalive_expiry=5.0,
            network_backend=_VettingBackend(policy),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            resp = await self._pool.handle_async_request(req)
        except httpcore.ConnectTimeout as err:
            raise httpx.ConnectTimeout(str(err), request=request) from err
        except httpcore.TimeoutException as err:
            raise httpx.TimeoutException(str(err), request=request) from err
        except httpcore.ConnectError as err:
            raise httpx.ConnectError(str(err), request=request) from err
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as err:
            raise httpx.TransportError(f"{type(err).__name__}: {err}", request=request) from err
        assert isinstance(resp.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_ResponseStream(resp.stream),
            extensions=resp.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class WebhookSink:
    def __init__(
        self,
        tenant: str,
        connector: str,
        spec: WebhookSpec,
        delivery: DeliverySpec,
        *,
        targets: TargetPolicy | None = None,
    ) -> None:
        self._tenant = tenant
        self._connector = connector
        self._spec = spec
        self._url = str(spec.url)
        self._timeout = delivery.timeout_s
        self._batch = delivery.batch_size > 1
        self._targets = targets or TargetPolicy()
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=VettedTransport(self._targets),
                timeout=httpx.Timeout(self._timeout),
                follow_redirects=False,
                trust_env=False,
                headers={"User-Agent": f"fieldgate/{__version__}"},
            )

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def request(self, events: Sequence[pb.Event], attempt: int) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one delivery (public for tests of the wire format)."""
        docs = [event_document(ev) for ev in events]
        body = encode_document({"events": docs}) if self._batch else encode_document(docs[0])
        headers = {
            **self._spec.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key(events),
            "X-Fieldgate-Tenant": self._tenant,
            "X-Fieldgate-Connector": self._connector,
            "X-Fieldgate-Attempt": str(attempt),
            "X-Fieldgate-Event-Count": str(len(events)),
        }
        if self._spec.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._spec.secret.get_secret_value(), body)
        return body, headers

    async def send(self, events: Sequence[pb.Event], *, attempt: int) -> None:
        if not events:
            return
        if len(events) > 1 and not self._batch:
            raise ValueError("batch_size is 1: send one event at a time")
        await self.start()
        assert self._client is not None
        body, headers = self.request(events, attempt)
        request = self._client.build_request("POST", self._url, content=body, headers=headers)
        try:
            # The body is not read (nor kept): only the status decides.
            resp = await self._client.send(request, stream=True)
            await resp.aclose()
        except httpx.TimeoutException as err:
            raise DeliveryError(f"timeout after {self._timeout}s: {type(err).__name__}") from err
        except httpx.HTTPError as err:
            raise DeliveryError(f"{type(err).__name__}: {err}") from err
        code = resp.status_code
        if 200 <= code < 300:
            return
        reason = status_line(code)
        if 300 <= code < 400:
            raise DeliveryError(f"{reason} (redirects are not followed)", permanent=True)
        if code >= 500 or code in RETRIED_STATUSES:
            raise DeliveryError(reason, retry_after_s=_retry_after(resp.headers.get("Retry-After")))
        raise DeliveryError(reason, permanent=True)
