"""Counters of one Modbus adapter, read by the agent's metrics (``adapter.stats``).

Plain integers on a dataclass owned by the adapter instance (no registry, no globals); the
agent exports them as ``fieldgate_modbus_<name>_total{adapter="modbus"}``. Per-device errors
live in the adapter's :class:`~fieldgate.edge.health.HealthBoard`; these are the bus totals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ModbusStats:
    # Modbus requests put on a bus (reads and writes, retries inside pymodbus not counted).
    requests: int = 0
    # Device polls that got at least one answer.
    polls: int = 0
    # Measurement events made durable by the sink.
    measurements_accepted: int = 0
    # Failed requests and bad points, by kind: timeout, crc, exception_<code>, decode.
    errors: dict[str, int] = field(default_factory=dict)
    # Samples not kept because the buffer refused them (reject_new): a later poll reads again.
    samples_dropped: int = 0
    # A bus's serial port could not be opened or went away (unplug), and times it came back.
    port_errors: int = 0
    port_reconnects: int = 0
    # Devices that stopped answering (marked offline) and came back.
    devices_lost: int = 0
    devices_recovered: int = 0
    commands_sent: int = 0
    commands_failed: int = 0
    online_callback_errors: int = 0
    # A bus task failed unexpectedly and was restarted (logged with the traceback).
    task_restarts: int = 0

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
