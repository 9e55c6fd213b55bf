"""Liveness and readiness of one cloud process, for Kubernetes probes and operators.

Two questions with different consequences, so two answers:

* **live** (``/healthz``): should this process be restarted? True while the event loop answers
  (the HTTP handler runs on it) and no stage task of this process has died. A dependency being
  down is *not* a reason: restarting would not bring Kafka back, and the stages already retry
  with back-off.
* **ready** (``/readyz``): should traffic be sent here? True when every dependency this process
  uses answers a real request within ``timeout_s`` — the bus (a metadata request to Kafka), the
  stores (a read through the same interface the stages use, so a Cassandra that accepts TCP but
  cannot serve reads counts as down) — and the process is not draining. While draining (SIGTERM
  received) it is false at once, so Services stop routing new edges and requests here.

Results are cached for ``cache_s`` and concurrent probes share one evaluation, so a probe storm
cannot become a load on Kafka or Cassandra. Served over HTTP by :func:`health_app` (the health
listener, ``health.port``, and the REST API's own port) and over the gRPC health checking
protocol by :class:`GrpcHealth` on ingest's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

log = logging.getLogger(__name__)

#: A readiness check: completes when the dependency answers, raises when it does not.
ReadyCheck = Callable[[], Awaitable[object]]
#: A liveness check: False when the part is dead and only a restart helps.
LiveCheck = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class HealthReport:
    ok: bool
    # check name -> "ok" or the reason it failed
    checks: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "unavailable", "checks": self.checks}


class CloudHealth:
    """The checks of one process. Parts register themselves with :meth:`add_ready` /
    :meth:`add_live` as the process is assembled; :meth:`drain` flips readiness off for good."""

    def __init__(self, *, timeout_s: float = 2.0, cache_s: float = 1.0) -> None:
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._ready: dict[str, ReadyCheck] = {}
        self._live: dict[str, LiveCheck] = {}
        self._draining = False
        self._cached: tuple[float, HealthReport] | None = None
        self._inflight: asyncio.Future[HealthReport] | None = None
        self._last_logged: bool | None = None

    def add_ready(self, name: str, check: ReadyCheck) -> None:
        self._ready[name] = check
        self._cached = None

    def add_live(self, name: str, check: LiveCheck) -> None:
        self._live[name] = check

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """Not ready from now on (the process is shutting down)."""
        self._draining = True
        self._cached = None

    def liveness(self) -> HealthReport:
        checks = {name: ("ok" if check() else "stopped unexpectedly") for name, check in self._live.items()}
        return HealthReport(all(v == "ok" for v in checks.values()), checks)

    async def readiness(self) -> HealthReport:
        if self._draining:
            return HealthReport(False, {"draining": "shutting down"})
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self._cache_s:
            return self._cached[1]
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._evaluate())
            self._inflight.add_done_callback(self._clear_inflight)
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, _fut: asyncio.Future[HealthReport]) -> None:
        self._inflight = None

    async def _evaluate(self) -> HealthReport:
        names = list(self._ready)
        results = await asyncio.gather(*(self._run(self._ready[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        live = self.liveness()
        checks.update({k: v for k, v in live.checks.items() if v != "ok"})
        ok = all(v == "ok" for v in checks.values()) and not self._draining
        report = HealthReport(ok, checks)
        self._cached = (time.monotonic(), report)
        if ok != self._last_logged:
            self._last_logged = ok
            if ok:
                log.info("ready")
            else:
                log.warning("not ready: %s", ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok"))
        return report

    async def _run(self, check: ReadyCheck) -> str:
        try:
            async with asyncio.timeout(self._timeout_s):
                await check()
        except TimeoutError:
            return f"no answer within {self._timeout_s:g} s"
        except Exception as err:  # noqa: BLE001 - a probe's top: any failure means "not ready", with its reason
            return f"{type(err).__name__}: {err}"[:300]
        return "ok"


def health_routes(health: CloudHealth) -> list[Route]:
    """``/healthz`` and ``/readyz`` (no authentication; they reveal only check names/reasons)."""

    async def healthz(_request: Request) -> JSONResponse:
        report = health.liveness()
        return JSONResponse(report.body(), status_code=200 if report.ok else 503)

    async def readyz(_request: Request) -> JSONResponse:
        report = await health.readiness()
        return JSONResponse(report.body(), status_code=200 if report.ok else 503)

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]


def health_app(health: CloudHealth) -> Starlette:
    """The health listener's application (services without the REST API)."""
    return Starlette(routes=health_routes(health))


class GrpcHealth:
    """The gRPC health checking protocol (``grpc.health.v1.Health``) on ingest's server:
    SERVING while :class:`CloudHealth` says ready, NOT_SERVING otherwise — for the overall
    service ``""`` and each of ``services``. Re-evaluated every ``interval_s`` so Watch
    subscribers (and Kubernetes' grpc probes) see changes; :meth:`drain` is immediate."""

    def __init__(self, health: CloudHealth, services: tuple[str, ...], *, interval_s: float = 2.0) -> None:
        from grpc_health.v1.health import aio as grpc_health_aio  # type: ignore[attr-defined]

        self._health = health
        self._services = ("", *services)
        self._interval_s = interval_s
        self.servicer = grpc_health_aio.HealthServicer()
        self._task: asyncio.Task[None] | None = None

    def add_to(self, server: Any) -> None:
        from grpc_health.v1 import health_pb2_grpc

        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def _set(self, serving: bool) -> None:
        from grpc_health.v1 import health_pb2

        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._services:
            await self.servicer.set(name, status)

    async def start(self) -> None:
        await self._set((await self._health.readiness()).ok)
        self._task = asyncio.create_task(self._run(), name="grpc-health")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._set((await self._health.readiness()).ok)

    async def drain(self) -> None:
        self._health.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._set(False)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
