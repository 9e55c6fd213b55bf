"""Liveness and readiness of an edge agent, served beside its metrics (``/healthz``, ``/readyz``).

The metrics HTTP server runs in a thread of its own, so an HTTP answer alone would prove only
that the thread lives. Liveness therefore rests on a **heartbeat** of the agent's event loop:
a task stamps the time every ``interval_s``; the loop is live while the stamp is younger than
``stale_s`` (a loop blocked that long — a stuck call in the event loop — is what a restart
fixes). Under systemd the same heartbeat pings the unit's watchdog (``on_beat``, see
:mod:`fieldgate.edge.systemd`): a blocked loop stops the pings, and systemd restarts the agent. Readiness: the agent has started (buffer open, adapters and broker up) and its buffer
is not full — a full buffer refuses devices' events (``reject_new``) or evicts the oldest
(``drop_oldest``), which an operator must hear of. A cloud outage does *not* make the agent
unready: buffering through it is the agent's job. The body says the rest (uplink connected,
buffer depth) for people.

The answers are computed from plain attributes in the HTTP thread (no awaiting the loop), so a
probe cannot block on, or load, the agent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from fieldgate.tasks import cancel_and_wait


class _Agent(Protocol):
    @property
    def running(self) -> bool: ...


class _Buffer(Protocol):
    @property
    def depth(self) -> int: ...


class _Uplink(Protocol):
    @property
    def connected(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    body: dict[str, Any]

    def http(self) -> tuple[str, bytes]:
        status = "200 OK" if self.ok else "503 Service Unavailable"
        return status, json.dumps(self.body, sort_keys=True).encode()


class AgentProbes:
    def __init__(
        self,
        agent: _Agent,
        buffer: _Buffer,
        uplink: _Uplink,
        max_events: int,
        *,
        interval_s: float = 1.0,
        stale_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self._agent = agent
        self._buffer = buffer
        self._uplink = uplink
        self._max_events = max_events
        self._interval_s = interval_s
        self._stale_s = stale_s
        self._clock = clock
        self._on_beat = on_beat
        self._beat: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._beat = self._clock()
        self._task = asyncio.create_task(self._heartbeat(), name="edge-heartbeat")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _heartbeat(self) -> None:
        while True:
            self._beat = self._clock()
            if self._on_beat is not None:
                self._on_beat()
            await asyncio.sleep(self._interval_s)

    def liveness(self) -> ProbeResult:
        if self._beat is None:
            return ProbeResult(True, {"status": "starting"})
        age = self._clock() - self._beat
        ok = age < self._stale_s
        return ProbeResult(ok, {"status": "ok" if ok else "event loop stalled", "loop_age_s": round(age, 1)})

    def readiness(self) -> ProbeResult:
        depth = self._buffer.depth
        body: dict[str, Any] = {
            "buffer_depth": depth,
            "buffer_max_events": self._max_events,
            "uplink_connected": self._uplink.connected,
        }
        live = self.liveness()
        if not self._agent.running:
            body["status"] = "not started"
        elif not live.ok:
            body["status"] = "event loop stalled"
        elif depth >= self._max_events:
            body["status"] = "buffer full"
        else:
            body["status"] = "ok"
        return ProbeResult(body["status"] == "ok", body)


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def with_probes(metrics_app: WsgiApp, probes: AgentProbes) -> WsgiApp:
    """A WSGI application serving ``/healthz`` and ``/readyz`` and passing the rest (``/metrics``)
    to ``metrics_app``."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            result = probes.liveness() if path == "/healthz" else probes.readiness()
            status, body = result.http()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics_app(environ, start_response)

    return app


__all__ = ["AgentProbes", "ProbeResult", "with_probes"]
