"""One connector's place on its tenant's ``[persisted]`` topic (pure bookkeeping, no I/O).

Per partition a connector has

* ``next``: the next offset it must be offered — every record below was offered to it, or
  passed over (filtered out, undecodable, the connector disabled);
* ``pending``: offered offsets whose events it has not delivered or dead-lettered yet;
* its **position**: the first offset it has not finished (the lowest pending, else ``next``).

The position is what the connectors stage stores (``connector_positions``): after a restart,
a rebalance or a re-opened consumer the stage re-reads from the group's committed offset — held
back by the slowest connector — and offers a record only to the connectors whose position is
at or below it, so a healthy connector never re-sends what a dead one holds back. A new
connector's stored start is its first ``next``; a partition without a stored offset begins at
the stored default (``ANY_PARTITION``), or — for connectors recorded without a start — at
whatever record the stage reads first.
"""

from __future__ import annotations

from collections.abc import Mapping

from fieldgate.cloud.store.connectors import ANY_PARTITION


class ConnectorProgress:
    def __init__(self, stored: Mapping[int, int] | None = None) -> None:
        stored = stored or {}
        self._default: int | None = stored.get(ANY_PARTITION)
        self._next: dict[int, int] = {p: o for p, o in stored.items() if p != ANY_PARTITION}
        self._pending: dict[int, dict[int, int]] = {}
        self._saved: dict[int, int] = dict(self._next)

    def next(self, partition: int, reading: int) -> int:
        """The next offset to offer on ``partition``; where nothing is known yet, the stored
        default, else ``reading`` (the offset the stage is reading now)."""
        n = self._next.get(partition)
        if n is None:
            n = self._default if self._default is not None else reading
            self._next[partition] = n
        return n

    def known(self) -> dict[int, int]:
        """The partitions with a known ``next`` (for the stage's look at where it reads)."""
        return dict(self._next)

    def passed(self, partition: int, offset: int) -> None:
        """``offset`` was offered or passed over."""
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def add_pending(self, partition: int, offset: int, count: int) -> None:
        d = self._pending.setdefault(partition, {})
        d[offset] = d.get(offset, 0) + count

    def settle(self, partition: int, offset: int) -> None:
        """One event of ``offset`` is delivered or dead-lettered."""
        d = self._pending.get(partition)
        if d is None or offset not in d:
            return
        if d[offset] <= 1:
            del d[offset]
        else:
            d[offset] -= 1

    def rewind(self, partition: int, offset: int) -> None:
        """Offer again from ``offset`` (the group's offsets were moved back: a replay)."""
        self._next[partition] = min(self.next(partition, offset), offset)

    def catch_up(self, stored: Mapping[int, int]) -> None:
        """Take positions another replica stored beyond ours (it owned the partition while we
        did not)."""
        for p, o in stored.items():
            if p != ANY_PARTITION and o > self._next.get(p, -1):
                self._next[p] = o
                self._saved[p] = max(self._saved.get(p, -1), o)

    def position(self, partition: int) -> int | None:
        pending = self._pending.get(partition)
        if pending:
            return min(pending)
        return self._next.get(partition)

    def unsaved(self) -> dict[int, int]:
        """Positions that changed since :meth:`saved` was last told."""
        out: dict[int, int] = {}
        for p in self._next:
            pos = self.position(p)
            if pos is not None and self._saved.get(p) != pos:
                out[p] = pos
        return out

    def saved(self, positions: Mapping[int, int]) -> None:
        self._saved.update(positions)
