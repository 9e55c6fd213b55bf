"""Metrics of one edge agent, exported to Prometheus on demand (no global registry).

The agent's own counters (events accepted, payloads rejected by reason kind) are plain
integers here; the buffer, uplink, command router and adapters keep plain integer ``stats`` on
themselves (they know nothing of Prometheus). :mod:`fieldgate.edge.metrics_export` reads them
all at scrape time; it (and prometheus_client) is imported only the first time the metrics are
rendered or served — an agent that never exports them does not carry the library in memory.

Served on ``http://<metrics_host>:<metrics_port>/metrics`` when the port is non-zero, with the
agent's ``/healthz`` and ``/readyz`` (:mod:`fieldgate.edge.probes`) on the same port.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

    from fieldgate.edge.buffer import EventBuffer
    from fieldgate.edge.commands import CommandRouter
    from fieldgate.edge.probes import AgentProbes
    from fieldgate.edge.uplink import Uplink

# Rejection reasons are free text; their metric label is a short "kind" with a bounded set.
MAX_REASON_KINDS = 32
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`|\d+(\.\d+)?")


class ReasonKinds:
    """Maps a free-text reason to a low-cardinality label value.

    "invalid JSON: Expecting value: line 1 column 1" → ``invalid json``; quoted values and
    numbers are dropped; past :data:`MAX_REASON_KINDS` distinct kinds everything is ``other``.
    """

    def __init__(self, limit: int = MAX_REASON_KINDS) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, reason: str) -> str:
        head = reason.split(":", 1)[0]
        kind = " ".join(_QUOTED.sub("", head).lower().split())[:40] or "unknown"
        if kind in self._seen:
            return kind
        if len(self._seen) >= self._limit:
            return "other"
        self._seen.add(kind)
        return kind


class EdgeMetrics:
    """The metrics of one agent. Components are attached with :meth:`watch`."""

    def __init__(self) -> None:
        self.reason_kind = ReasonKinds()
        self.events_accepted = 0
        self.rejected_by_kind: dict[str, int] = {}
        self._components: tuple[EventBuffer, Uplink, CommandRouter, Sequence[Any]] | None = None
        self._registry: CollectorRegistry | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def watch(
        self,
        *,
        buffer: EventBuffer,
        uplink: Uplink,
        router: CommandRouter,
        adapters: Sequence[Any] = (),
    ) -> None:
        self._components = (buffer, uplink, router, adapters)
        self._registry = None  # rebuilt with the components on next use

    def count_accepted(self, events: int) -> None:
        self.events_accepted += events

    def count_rejected(self, reason: str) -> None:
        kind = self.reason_kind(reason)
        self.rejected_by_kind[kind] = self.rejected_by_kind.get(kind, 0) + 1

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            from fieldgate.edge.metrics_export import build_registry

            self._registry = build_registry(self, self._components)
        return self._registry

    def render(self) -> str:
        """The exposition text (what ``/metrics`` serves)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    def serve(self, port: int, host: str = "127.0.0.1", probes: AgentProbes | None = None) -> None:
        """Serve ``/metrics`` (and, with ``probes``, ``/healthz`` and ``/readyz``) on
        ``host``:``port`` (0 = any free port) in a daemon thread."""
        if self._server is None:
            from wsgiref.simple_server import WSGIRequestHandler, make_server

            from prometheus_client import make_wsgi_app
            from prometheus_client.exposition import ThreadingWSGIServer

            class _Quiet(WSGIRequestHandler):
                def log_message(self, format: str, *args: Any) -> None:
                    """Scrapes and probes every few seconds: not worth a log line each."""

            app: Any = make_wsgi_app(self.registry)
            if probes is not None:
                from fieldgate.edge.probes import with_probes

                app = with_probes(app, probes)
            server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_Quiet)
            thread = threading.Thread(target=server.serve_forever, name="edge-metrics", daemon=True)
            thread.start()
            self._server, self._thread = server, thread

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
