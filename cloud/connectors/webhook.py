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
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import httpx

from fieldgate import __version__
from fieldgate.cloud.connectors.events import encode_document, event_document
from fieldgate.cloud.connectors.models import DeliverySpec, WebhookSpec
from fieldgate.cloud.connectors.sink import DeliveryError
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


class WebhookSink:
    def __init__(self, tenant: str, connector: str, spec: WebhookSpec, delivery: DeliverySpec) -> None:
        self._tenant = tenant
        self._connector = connector
        self._spec = spec
        self._url = str(spec.url)
        self._timeout = delivery.timeout_s
        self._batch = delivery.batch_size > 1
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout),
                follow_redirects=False,
                headers={"User-Agent": f"fieldgate/{__version__}"},
                limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
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
        try:
            resp = await self._client.post(self._url, content=body, headers=headers)
        except httpx.TimeoutException as err:
            raise DeliveryError(f"timeout after {self._timeout}s: {type(err).__name__}") from err
        except httpx.HTTPError as err:
            raise DeliveryError(f"{type(err).__name__}: {err}") from err
        if 200 <= resp.status_code < 300:
            return
        text = resp.text[:200]
        reason = f"HTTP {resp.status_code}: {text}" if text else f"HTTP {resp.status_code}"
        if resp.status_code >= 500 or resp.status_code in RETRIED_STATUSES:
            raise DeliveryError(reason, retry_after_s=_retry_after(resp.headers.get("Retry-After")))
        raise DeliveryError(reason, permanent=True)
