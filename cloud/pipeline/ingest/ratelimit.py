"""Ingest's per-tenant rate limits: one token bucket per tenant whose live settings set
``max_events_per_s`` (per ingest replica; ``burst_events`` deep, one second's worth by
default), remade when those settings change. :meth:`RateLimits.reserve` takes a batch's events
from every limited tenant it names, or nothing and says how long to wait; a batch larger than a
bucket passes when the bucket is full (it goes into debt, which later batches wait off), so the
average holds. What ingest does with a wait (holds the batch unacknowledged) is in
cloud/pipeline/ingest/service.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fieldgate.v1 import services_pb2 as svc

if TYPE_CHECKING:
    from fieldgate.cloud.zk.models import TenantSettingsRegistry


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; may go into debt (see
    :meth:`delay`). ``clock`` is monotonic seconds (injectable for tests)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def delay(self, n: int) -> float:
        """Seconds until ``n`` events may pass (0: now). More than ``burst`` pass when the
        bucket is full, leaving it in debt."""
        self._refill()
        need = min(float(n), self.burst)
        return 0.0 if self._tokens >= need else (need - self._tokens) / self.rate

    def take(self, n: int) -> None:
        self._refill()
        self._tokens -= n


class RateLimits:
    """The tenants' buckets, made from (and remade when) their live ``max_events_per_s`` /
    ``burst_events`` change; tenants without a limit have none."""

    def __init__(self, live: TenantSettingsRegistry | None, clock: Callable[[], float]) -> None:
        self._live = live
        self._clock = clock
        self._buckets: dict[str, tuple[tuple[float, float], TokenBucket]] = {}

    def bucket(self, tenant: str) -> TokenBucket | None:
        settings = self._live.get(tenant) if self._live is not None else None
        rate = settings.max_events_per_s if settings is not None else None
        if rate is None or settings is None:
            self._buckets.pop(tenant, None)
            return None
        key = (rate, float(settings.burst_events or max(rate, 1.0)))
        held = self._buckets.get(tenant)
        if held is None or held[0] != key:
            held = self._buckets[tenant] = (key, TokenBucket(key[0], key[1], self._clock))
        return held[1]

    def reserve(self, batch: svc.EventBatchUp) -> tuple[float, str]:
        """Take the batch's tokens from every limited tenant it names and return ``(0, "")``,
        or take nothing and return the longest wait with the reason."""
        counts: dict[str, int] = {}
        for ev in batch.events:
            counts[ev.tenant] = counts.get(ev.tenant, 0) + 1
        wait, reason = 0.0, ""
        buckets = []
        for tenant, n in counts.items():
            bucket = self.bucket(tenant)
            if bucket is None:
                continue
            buckets.append((bucket, n))
            d = bucket.delay(n)
            if d > wait:
                wait = d
                reason = f"tenant {tenant!r} is over its rate limit of {bucket.rate:g} events/s"
        if wait > 0:
            return wait, reason
        for bucket, n in buckets:
            bucket.take(n)
        return 0.0, ""

    def forget(self, tenant: str) -> None:
        self._buckets.pop(tenant, None)
