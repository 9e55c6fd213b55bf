"""Prometheus metrics of one edge agent (no global registry).

Each :class:`EdgeMetrics` owns a :class:`prometheus_client.CollectorRegistry`, so two agents in
one process (tests, the all-in-one suite) never share or clash over counters. The agent's own
counters (events accepted, payloads rejected by reason kind) are ordinary prometheus_client
counters; the buffer, uplink, command router and adapters keep plain integer ``stats`` on
themselves (they know nothing of Prometheus) and a collector reads them at scrape time.

Served on ``http://127.0.0.1:<metrics_port>/metrics`` when the port is non-zero.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields, is_dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from fieldgate.edge.buffer import EventBuffer
from fieldgate.edge.commands import CommandRouter
from fieldgate.edge.health import HealthBoard
from fieldgate.edge.uplink import Uplink

# Rejection reasons are free text; their metric label is a short "kind" with a bounded set.
MAX_REASON_KINDS = 32
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`|\d+(\.\d+)?")
_NAME = re.compile(r"[^a-z0-9_]+")


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
        self.registry = CollectorRegistry(auto_describe=True)
        self.reason_kind = ReasonKinds()
        self.events_accepted = Counter(
            "fieldgate_edge_events_accepted",
            "Events made durable in the buffer (acknowledged to their device).",
            registry=self.registry,
        )
        self.payloads_rejected = Counter(
            "fieldgate_edge_payloads_rejected",
            "Payloads put into the failed-decode lane, by reason kind.",
            ["reason"],
            registry=self.registry,
        )
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
        self.registry.register(_ComponentCollector(buffer, uplink, router, adapters))

    def count_rejected(self, reason: str) -> None:
        self.payloads_rejected.labels(self.reason_kind(reason)).inc()

    def render(self) -> str:
        """The exposition text (what ``/metrics`` serves)."""
        return generate_latest(self.registry).decode()

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    def serve(self, port: int) -> None:
        """Serve ``/metrics`` on 127.0.0.1:``port`` (0 = any free port) in a daemon thread."""
        if self._server is None:
            self._server, self._thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class _ComponentCollector(Collector):
    """Reads the components' plain counters at scrape time."""

    def __init__(
        self, buffer: EventBuffer, uplink: Uplink, router: CommandRouter, adapters: Sequence[Any]
    ) -> None:
        self._buffer = buffer
        self._uplink = uplink
        self._router = router
        self._adapters = adapters

    def collect(self) -> Iterable[Metric]:
        b, bs = self._buffer, self._buffer.stats
        yield _gauge("fieldgate_buffer_depth", "Events in the buffer awaiting the cloud's ack.", b.depth)
        yield _counter("fieldgate_buffer_appended", "Events committed to the buffer.", bs.appended)
        yield _counter("fieldgate_buffer_commits", "Buffer transactions that appended events.", bs.commits)
        yield _counter("fieldgate_buffer_acked", "Events removed after the cloud's ack.", bs.acked)
        yield _counter(
            "fieldgate_buffer_dropped", "Events evicted by overflow policy drop_oldest.", bs.dropped
        )
        yield _counter(
            "fieldgate_buffer_rejected", "Events refused by overflow policy reject_new.", bs.rejected
        )
        yield _gauge("fieldgate_failed_decodes", "Entries in the failed-decode lane.", b.failed_depth)
        yield _counter(
            "fieldgate_failed_decodes_dropped",
            "Failed-decode entries evicted by its bound.",
            bs.failed_dropped,
        )

        us = self._uplink.stats
        yield _gauge(
            "fieldgate_uplink_connected", "1 while the stream to the cloud is up.", int(us.connected)
        )
        yield _counter("fieldgate_uplink_sessions", "Streams established (Welcome received).", us.sessions)
        yield _counter("fieldgate_uplink_reconnects", "Reconnect attempts after a failure.", us.reconnects)
        yield _gauge("fieldgate_uplink_backoff_seconds", "Last reconnect backoff delay.", us.last_backoff_s)
        yield _counter("fieldgate_uplink_batches_sent", "Event batches sent.", us.batches_sent)
        yield _counter("fieldgate_uplink_batches_acked", "Event batches acknowledged.", us.batches_acked)
        yield _counter("fieldgate_uplink_events_sent", "Events sent (resends included).", us.events_sent)
        yield _counter("fieldgate_uplink_events_acked", "Events acknowledged by the cloud.", us.events_acked)
        yield _counter(
            "fieldgate_uplink_events_refused", "Events the cloud refused permanently.", us.events_refused
        )
        yield _counter("fieldgate_uplink_commands_received", "CommandDown messages.", us.commands_received)

        commands = CounterMetricFamily(
            "fieldgate_commands", "Command statuses reported, and answers seen.", labels=["status"]
        )
        # Scrapes run on the HTTP thread: copy dicts in one C-level step before iterating.
        for status, count in sorted(dict(self._router.stats).items()):
            commands.add_metric([status], count)
        yield commands
        yield _gauge(
            "fieldgate_commands_pending", "Commands waiting for a device or its answer.", self._router.pending
        )
        yield from self._adapter_metrics()
        yield from self._link_health()

    def _link_health(self) -> Iterator[Metric]:
        """Per-device link health of every adapter that keeps a ``health`` board."""
        labels = ["adapter", "tenant", "device"]
        connected = GaugeMetricFamily(
            "fieldgate_device_connected", "1 while the device's link is up.", labels=labels
        )
        last_seen = GaugeMetricFamily(
            "fieldgate_device_last_seen_timestamp_seconds",
            "When the device was last heard from.",
            labels=labels,
        )
        reconnects = CounterMetricFamily(
            "fieldgate_device_reconnects", "Times the device's link was re-established.", labels=labels
        )
        errors = CounterMetricFamily(
            "fieldgate_device_errors", "Link errors by kind.", labels=[*labels, "kind"]
        )
        for adapter in self._adapters:
            board = getattr(adapter, "health", None)
            if not isinstance(board, HealthBoard):
                continue
            name = str(getattr(adapter, "name", type(adapter).__name__))
            for (tenant, device), h in board.snapshot().items():
                key = [name, tenant, device]
                connected.add_metric(key, 1.0 if h.connected else 0.0)
                last_seen.add_metric(key, h.last_seen_ms / 1000.0)
                reconnects.add_metric(key, h.reconnects)
                for kind, count in h.errors.items():
                    errors.add_metric([*key, kind], count)
        yield from (connected, last_seen, reconnects, errors)

    def _adapter_metrics(self) -> Iterator[Metric]:
        """Every integer (or {kind: integer}) field of each adapter's ``stats`` dataclass."""
        families: dict[str, CounterMetricFamily] = {}
        for adapter in self._adapters:
            stats = getattr(adapter, "stats", None)
            if stats is None or not is_dataclass(stats) or isinstance(stats, type):
                continue
            name = str(getattr(adapter, "name", type(adapter).__name__))
            for f in fields(stats):
                key = f.name
                value = getattr(stats, key)
                if isinstance(value, dict):
                    value = dict(value)
                metric = "fieldgate_adapter_" + _NAME.sub("_", key.lower())
                if isinstance(value, bool) or not isinstance(value, int | dict):
                    continue
                if isinstance(value, int):
                    family = families.setdefault(
                        metric, CounterMetricFamily(metric, f"Adapter counter {key}.", labels=["adapter"])
                    )
                    family.add_metric([name], value)
                else:
                    family = families.setdefault(
                        metric,
                        CounterMetricFamily(metric, f"Adapter counter {key}.", labels=["adapter", "kind"]),
                    )
                    for kind, count in value.items():
                        if isinstance(count, int):
                            family.add_metric([name, str(kind)], count)
        yield from families.values()


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
