"""Embedded durable bus: an append-only log in one SQLite file (WAL) for one machine.

(Skeleton — implementation in progress by the cloud-storage helper.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from fieldgate.cloud.bus import Message, Record


class EmbeddedConsumer:
    """A member of a consumer group reading every tenant's topic of one stage."""

    async def __aenter__(self) -> Self:
        raise NotImplementedError

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        raise NotImplementedError

    async def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        raise NotImplementedError

    async def commit(self, records: Sequence[Record]) -> None:
        raise NotImplementedError

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        raise NotImplementedError


class EmbeddedBus:
    """Implements :class:`fieldgate.cloud.bus.Bus`."""

    def __init__(self, path: Path, *, prefix: str = "fieldgate") -> None:
        self._path = path
        self._prefix = prefix

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        raise NotImplementedError

    def consumer(self, group: str, stage: str) -> EmbeddedConsumer:
        raise NotImplementedError

    async def reset_offsets(
        self,
        group: str,
        stage: str,
        tenant: str,
        *,
        to_offset: int | None = None,
        to_time_ms: int | None = None,
    ) -> int:
        """Set the group's committed offset of that tenant's topic; returns the new offset."""
        raise NotImplementedError

    async def trim(self) -> int:
        """Delete records every known group has committed past; returns how many."""
        raise NotImplementedError
