"""The shared policies: the backoff schedule (fieldgate.retry) and the log throttle (fieldgate.throttle)."""

from __future__ import annotations

import random

import pytest

from fieldgate.retry import Backoff
from fieldgate.throttle import LogThrottle


def test_doubles_from_initial_to_the_cap_without_jitter() -> None:
    backoff = Backoff(0.5, 5.0)
    assert [backoff.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert backoff.attempt == backoff.retries == 7
    assert backoff.last_s == 5.0


def test_reset_starts_over_and_keeps_counting_retries() -> None:
    backoff = Backoff(0.1, 1.0)
    for _ in range(3):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 0.1
    assert backoff.retries == 4  # the counter of every wait, for stats


def test_equal_jitter_stays_within_half_and_whole_of_the_capped_delay() -> None:
    backoff = Backoff(0.1, 5.0, jitter=True, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(40)]
    for attempt, delay in enumerate(delays):
        cap = min(5.0, 0.1 * 2**attempt)
        assert cap / 2 <= delay <= cap
    assert delays[0] <= 0.1 < delays[6]
    assert len({round(d, 9) for d in delays[-10:]}) == 10  # jittered, also at the cap
    backoff.attempt = 10_000  # a very long outage: the exponent is bounded, the float finite
    assert 2.5 <= backoff.next_delay() <= 5.0


def test_a_seeded_rng_repeats_the_schedule() -> None:
    one = Backoff(0.2, 3.0, jitter=True, rng=random.Random(7))
    two = Backoff(0.2, 3.0, jitter=True, rng=random.Random(7))
    assert [one.next_delay() for _ in range(8)] == [two.next_delay() for _ in range(8)]


def test_the_cap_bounds_the_first_delay_too() -> None:
    assert Backoff(2.0, 0.5).next_delay() == 0.5


def test_nominal_is_the_delay_before_jitter() -> None:
    backoff = Backoff(1.0, 10.0, jitter=True)
    assert [backoff.nominal(n) for n in range(5)] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff.nominal() == 1.0
    backoff.next_delay()
    assert backoff.nominal() == 2.0


@pytest.mark.parametrize(
    ("initial", "cap", "factor", "what"),
    [(0.0, 1.0, 2.0, "initial_s"), (1.0, -1.0, 2.0, "max_s"), (1.0, 1.0, 0.5, "factor")],
)
def test_bad_settings_are_refused(initial: float, cap: float, factor: float, what: str) -> None:
    with pytest.raises(ValueError, match=what):
        Backoff(initial, cap, factor=factor)


async def test_sleep_waits_the_next_delay() -> None:
    backoff = Backoff(0.001, 0.002)
    assert await backoff.sleep() == 0.001
    assert await backoff.sleep() == 0.002
    assert backoff.retries == 2


def test_log_throttle_lets_one_through_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    throttle = LogThrottle(10.0, clock=lambda: now[0])
    assert throttle.ready() == 0  # the first one is logged
    assert [throttle.ready() for _ in range(3)] == [None, None, None]
    now[0] += 9.9
    assert throttle.ready() is None
    now[0] += 0.1
    assert throttle.ready() == 4  # logged again, saying how many were kept quiet
    now[0] += 10.0
    assert throttle.ready() == 0


def test_log_throttle_starts_open_whatever_the_clock_reads() -> None:
    throttle = LogThrottle(10.0, clock=lambda: 0.0)
    assert throttle.ready() == 0
    assert throttle.ready() is None


def test_log_throttle_refuses_a_negative_interval() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        LogThrottle(-1.0)
