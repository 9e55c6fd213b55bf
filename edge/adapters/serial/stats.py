"""Counters of one serial adapter, read by the agent's metrics (``adapter.stats``).

Totals over all ports; the per-device view (connected, last seen, reconnects, errors by kind)
is the adapter's :class:`~fieldgate.edge.health.HealthBoard`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SerialStats:
    bytes_read: int = 0
    # Valid frames (binary) or lines (json), whatever they carried.
    frames_ok: int = 0
    events_accepted: int = 0
    # Bad input by kind: garbage, crc, truncated, oversize, decode, identity.
    frames_bad: dict[str, int] = field(default_factory=dict)
    # Partial frames dropped right after a port was opened (the agent joined mid-frame).
    resync_dropped: int = 0
    # Times the sink refused events (buffer full, reject_new) and reading paused to retry.
    buffer_full_waits: int = 0
    # Events lost because the sink failed unexpectedly (logged).
    events_failed: int = 0
    ports_open: int = 0
    open_failures: int = 0
    # Ports reopened after they were lost (unplug, I/O error).
    reconnects: int = 0
    links_lost: int = 0
    commands_sent: int = 0
    commands_acked: int = 0
    commands_failed: dict[str, int] = field(default_factory=dict)
    # Acks or responses for commands the agent no longer waits for (late, or unknown tag).
    unexpected_acks: int = 0
    # Unexpected failures caught at the top of a port's task (logged with the traceback).
    port_task_errors: int = 0
    online_callback_errors: int = 0

    def count_bad(self, kind: str) -> None:
        self.frames_bad[kind] = self.frames_bad.get(kind, 0) + 1

    def count_command_failed(self, kind: str) -> None:
        self.commands_failed[kind] = self.commands_failed.get(kind, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
