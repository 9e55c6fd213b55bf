"""The one log throttle: a recurring condition logged at most once per interval, with a count.

A flood of the same failure (a full buffer, undecodable payloads, refused logins) must not
flood the log: the first occurrence is logged, the next ones within ``interval_s`` are only
counted, and the next line that is logged says how many were not::

    refused = LogThrottle(10.0)
    ...
    suppressed = refused.ready()
    if suppressed is not None:
        log.warning("login refused for %r (%d more since the last report)", user, suppressed)
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["LogThrottle"]


class LogThrottle:
    """Lets one log line through per ``interval_s`` (monotonic ``clock``, injectable for tests)."""

    __slots__ = ("_clock", "_next", "_suppressed", "interval_s")

    def __init__(self, interval_s: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not interval_s >= 0:
            raise ValueError(f"interval_s must not be negative, got {interval_s!r}")
        self.interval_s = interval_s
        self._clock = clock
        self._next: float | None = None
        self._suppressed = 0

    def ready(self) -> int | None:
        """None: stay quiet (counted). Else log now: how many were kept quiet since the last line."""
        now = self._clock()
        if self._next is not None and now < self._next:
            self._suppressed += 1
            return None
        self._next = now + self.interval_s
        count, self._suppressed = self._suppressed, 0
        return count
