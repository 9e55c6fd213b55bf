"""The bus: durable publish/subscribe with consumer groups, committed offsets and replay.

Two implementations sit behind :class:`Bus`: the embedded SQLite log (one machine, this
package's ``embedded`` module) and Kafka (a later issue). Topics are named by
:func:`topic_name`, one per tenant per stage; records carry a key (the device token) so that
per-device order holds on partitioned backends.

Delivery is at-least-once: a consumer that crashes before committing gets the records again,
so every stage's effect must be idempotent (events are keyed by their alternate id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

if TYPE_CHECKING:
    from fieldgate.cloud.config import CloudConfig

# Stages (topic suffixes). SiteWhere's names in brackets.
DECODED = "decoded"  # events accepted from edges [decoded-events]
UNREGISTERED = "unregistered"  # events of unknown devices [unregistered-device-events]
ENRICHED = "enriched"  # events with device/assignment context [inbound-events]
PERSISTED = "persisted"  # events stored [outbound-events]
COMMAND_INVOCATIONS = "command-invocations"  # [command-invocations]
UNDELIVERED_COMMANDS = "undelivered-commands"  # [undelivered-command-invocations]
FAILED_DECODE = "failed-decode"  # dead letters [failed-decode-events]

STAGES = (
    DECODED,
    UNREGISTERED,
    ENRICHED,
    PERSISTED,
    COMMAND_INVOCATIONS,
    UNDELIVERED_COMMANDS,
    FAILED_DECODE,
)


def topic_name(tenant: str, stage: str, prefix: str = "fieldgate") -> str:
    """``fieldgate.tenant.<tenant>.<stage>`` (SiteWhere's layout)."""
    return f"{prefix}.tenant.{tenant}.{stage}"


def parse_topic(topic: str, prefix: str = "fieldgate") -> tuple[str, str]:
    """Inverse of :func:`topic_name`: ``(tenant, stage)``. Raises ValueError if not ours."""
    head = f"{prefix}.tenant."
    if not topic.startswith(head):
        raise ValueError(f"not a fieldgate topic: {topic!r}")
    tenant, _, stage = topic[len(head) :].rpartition(".")
    if not tenant or stage not in STAGES:
        raise ValueError(f"not a fieldgate topic: {topic!r}")
    return tenant, stage


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Message:
    """What a producer hands to :meth:`Bus.publish`."""

    key: bytes
    value: bytes


class Consumer(Protocol):
    """A member of a consumer group, reading every topic whose stage is ``stage``.

    Use as ``async with bus.consumer(group, stage) as c:``; ``poll`` returns records after the
    group's committed position; ``commit`` moves that position past the given records.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Up to ``max_records`` records; waits up to ``timeout_s`` for the first one."""

    async def commit(self, records: Sequence[Record]) -> None:
        """Commit the highest offset of each (topic, partition) in ``records``."""

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        """Replay: the next poll of that topic-partition starts at ``offset``."""


class Bus(Protocol):
    """What every part of the cloud may ask of a bus; both buses (embedded.py, kafka.py) are
    complete implementations, so no caller needs to know which one it holds."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def ping(self) -> None:
        """Readiness: the bus answers a real request now (BusError if it does not)."""

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Append ``messages`` to ``topic``; returns once they are durable."""

    def consumer(self, group: str, stage: str, *, tail: bool = False) -> Consumer:
        """A consumer of ``stage`` across all tenants' topics (pattern subscription).

        ``tail=True``: an ephemeral reader that starts at the end of each topic that exists
        when it subscribes (later topics from their start), never commits and never holds back
        retention — for live views that must not replay history (cloud/services/live.py)."""

    async def topic_end_offsets(self, topic: str) -> dict[int, int]:
        """``{partition: next offset to be written}`` of ``topic`` ({} if it does not exist):
        where a reader that must see everything from now on starts (a new connector)."""

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """``{partition: committed offset (next to read)}`` of ``group`` on ``topic`` ({} if the
        group committed nothing there)."""

    async def reset_offsets(
        self,
        group: str,
        stage: str,
        tenant: str,
        *,
        to_offset: int | None = None,
        to_time_ms: int | None = None,
    ) -> dict[int, int]:
        """Move ``group``'s committed offsets of ``tenant``'s ``stage`` topic (replay or skip):
        exactly one of ``to_offset`` (per partition, clamped to what it holds) or ``to_time_ms``
        (per partition, the first record stamped at or after it; the end if none). Returns
        ``{partition: new committed offset}`` ({} if the bus knows no such topic). BusError if
        the bus refuses (Kafka: the group has live members) — a reset is never reported as done
        when it was not."""

    async def ensure_tenant_topics(self, tenant: str) -> list[str]:
        """Provision every stage's topic of a new tenant; their names."""

    async def delete_tenant_topics(self, tenant: str) -> list[str]:
        """Delete every stage's topic of ``tenant`` with its records; the ones that existed."""

    def forget_tenant(self, tenant: str) -> None:
        """Forget cached knowledge of the tenant's topics (another process deleted them)."""


def build_bus(config: CloudConfig, *, client_id: str = "fieldgate") -> Bus:
    """The pipeline's bus ``config.bus.kind`` names: Kafka, or the embedded SQLite log in
    ``data_dir/bus.db``. ``client_id`` names this process to Kafka (its logs and metrics). The
    Kafka client library is imported only when chosen."""
    bus = config.bus
    if bus.kind == "kafka":
        from fieldgate.cloud.bus.kafka import KafkaBus

        return KafkaBus(
            bus.bootstrap,
            prefix=bus.topic_prefix,
            partitions=bus.partitions,
            replication=bus.replication,
            client_id=client_id,
            tenants=[t.token for t in config.tenants],
        )
    from fieldgate.cloud.bus.embedded import EmbeddedBus

    return EmbeddedBus(config.data_dir / "bus.db")
