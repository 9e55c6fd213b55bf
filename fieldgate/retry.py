"""The one retry policy: capped exponential backoff, with optional jitter, counted.

Every loop in fieldgate that waits before trying again — the edge's uplink and MQTT
reconnects, serial/Modbus/BLE reopens, buffer-full retries, the cloud stages' consumer
reopens and record retries, the connectors' delivery and store retries, the suite's
service restarts — asks a :class:`Backoff` for its next delay::

    backoff = Backoff(0.5, 30.0)
    while True:
        try:
            await connect()
        except OSError:
            await asyncio.sleep(backoff.next_delay())  # 0.5, 1, 2, 4 ... 30, 30
            continue
        backoff.reset()  # a good session: the next failure waits 0.5 s again

The n-th delay since the last :meth:`~Backoff.reset` (n from 0) is
``min(max_s, initial_s * 2**n)`` — the cap bounds the first delay too. With ``jitter`` the
delay is drawn from ``[d/2, d]`` ("equal jitter"): clients that lost the same server at the
same moment do not come back in lockstep, and none waits less than half the nominal delay.
Jitter is for loops that many clients run against one server (the uplink, the external MQTT
broker, the cloud's stages against the bus and the store, the connectors' sinks); a loop
that reopens a local port has no herd to spread and stays exact, which keeps its tests
deterministic.

Not an off-the-shelf library (``tenacity``, ``backoff``, ``stamina``): those wrap one call
in a decorator or an ``AsyncRetrying`` controller that ends at the first success, while most
of these loops are long-lived supervisors — they reset after a session that lasted, the
wait is sometimes cut short by a stop event or a probe, and the delay and the retry count
are reported in each component's stats and metrics. A decorator would own the loop; this
class only answers "how long now", so each loop keeps its own control flow and the policy
is written once.
"""

from __future__ import annotations

import asyncio
import random

__all__ = ["Backoff"]

# 2**64 times any positive delay is far above any cap; bounding the exponent keeps the float finite.
_MAX_EXPONENT = 64


class Backoff:
    """Capped exponential backoff (see the module docstring).

    ``attempt`` counts the delays handed out since the last :meth:`reset` (the failures of
    the current outage); ``retries`` counts every delay ever handed out (for stats);
    ``last_s`` is the last delay. ``rng`` draws the jitter (pass a seeded one in tests).
    """

    __slots__ = ("_rng", "attempt", "factor", "initial_s", "jitter", "last_s", "max_s", "retries")

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        *,
        jitter: bool = False,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if not initial_s > 0:
            raise ValueError(f"initial_s must be positive, got {initial_s!r}")
        if not max_s > 0:
            raise ValueError(f"max_s must be positive, got {max_s!r}")
        if not factor >= 1:
            raise ValueError(f"factor must be at least 1, got {factor!r}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self.attempt = 0
        self.retries = 0
        self.last_s = 0.0

    def nominal(self, attempt: int | None = None) -> float:
        """The capped delay of failure number ``attempt`` (default: the next one), before jitter."""
        n = self.attempt if attempt is None else attempt
        return min(self.max_s, self.initial_s * self.factor ** min(max(n, 0), _MAX_EXPONENT))

    def next_delay(self) -> float:
        """The delay to wait now; counts one retry and moves to the next step."""
        cap = self.nominal()
        delay = cap / 2 + self._rng.uniform(0.0, cap / 2) if self.jitter else cap
        self.attempt += 1
        self.retries += 1
        self.last_s = delay
        return delay

    def reset(self) -> None:
        """Start over: the next delay is ``initial_s`` again (after a success)."""
        self.attempt = 0

    async def sleep(self) -> float:
        """Sleep for :meth:`next_delay`; returns the delay slept."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay

    def __repr__(self) -> str:
        return (
            f"Backoff(initial_s={self.initial_s}, max_s={self.max_s}, jitter={self.jitter}, "
            f"attempt={self.attempt}, retries={self.retries})"
        )
