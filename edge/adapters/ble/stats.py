"""Counters of one BLE adapter, read by the agent's metrics (``adapter.stats``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class BleStats:
    notifications: int = 0
    events_accepted: int = 0
    # Notifications that could not be decoded (wrong length, out of range); the reason is logged.
    decode_errors: int = 0
    # Notifications dropped because the device's queue was full (policy: drop newest), or
    # because the sink refused them (buffer full under reject_new): BLE cannot redeliver.
    dropped: dict[str, int] = field(default_factory=dict)
    scans_started: int = 0
    scan_failures: int = 0
    scan_misses: int = 0  # a scan interval passed without the device advertising
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    commands_sent: int = 0
    commands_failed: int = 0
    command_responses: int = 0
    command_responses_synthesized: int = 0
    online_callback_errors: int = 0
    sink_errors: int = 0

    def drop(self, kind: str, n: int = 1) -> None:
        self.dropped[kind] = self.dropped.get(kind, 0) + n

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
