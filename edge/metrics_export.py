"""Prometheus exposition of an edge agent's metrics (imported only when they are scraped or
served, so an agent that never exports them does not load prometheus_client).

:func:`build_registry` makes a :class:`prometheus_client.CollectorRegistry` of its own per agent
(no global registry) with one collector that reads, at scrape time, the agent's counters and the
plain integer ``stats`` of the buffer, uplink, command router and adapters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import fields, is_dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from fieldgate.edge.buffer import EventBuffer
from fieldgate.edge.commands import CommandRouter
from fieldgate.edge.health import HealthBoard
from fieldgate.edge.uplink import Uplink

_NAME = re.compile(r"[^a-z0-9_]+")


def build_registry(agent_counters: AgentCounters, components: Components | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_AgentCollector(agent_counters))
    if components is not None:
        registry.register(_ComponentCollector(*components))
    return registry


class AgentCounters(Protocol):
    """What the agent counts itself (fieldgate.edge.metrics.EdgeMetrics)."""

    @property
    def events_accepted(self) -> int: ...
    @property
    def rejected_by_kind(self) -> Mapping[str, int]: ...


Components = tuple[EventBuffer, Uplink, CommandRouter, Sequence[Any]]


class _AgentCollector(Collector):
    def __init__(self, counters: AgentCounters) -> None:
        self._c = counters

    def collect(self) -> Iterable[Metric]:
        yield _counter(
            "fieldgate_edge_events_accepted",
            "Events made durable in the buffer (acknowledged to their device).",
            self._c.events_accepted,
        )
        rejected = CounterMetricFamily(
            "fieldgate_edge_payloads_rejected",
            "Payloads put into the failed-decode lane, by reason kind.",
            labels=["reason"],
        )
        for kind, count in sorted(dict(self._c.rejected_by_kind).items()):
            rejected.add_metric([kind], count)
        yield rejected


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
