"""fieldgate.tasks.cancel_and_wait: stops tasks even when library code swallows a cancel()."""

from __future__ import annotations

import asyncio

import pytest

from fieldgate.tasks import cancel_and_wait


async def _swallows_first_cancels(times: int, polls: list[int]) -> None:
    """Like a poll loop whose library call (3.11 wait_for) ate the cancellation."""
    swallowed = 0
    while True:
        try:
            await asyncio.sleep(0.01)
            polls.append(1)
        except asyncio.CancelledError:
            if swallowed == times:
                raise
            swallowed += 1


async def test_a_task_that_swallows_cancellations_is_stopped() -> None:
    polls: list[int] = []
    task = asyncio.create_task(_swallows_first_cancels(3, polls))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(5):
        await cancel_and_wait(task, grace_s=0.05, nudge_s=0.05)
    assert task.cancelled()


async def test_a_single_cancel_would_not_have_stopped_it() -> None:
    polls: list[int] = []
    task = asyncio.create_task(_swallows_first_cancels(1, polls))
    await asyncio.sleep(0.02)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done  # the failure mode cancel_and_wait exists for
    await cancel_and_wait(task, grace_s=0.05)
    assert task.done()


async def test_failures_and_results_are_retrieved_and_none_is_ignored() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    async def returns() -> int:
        return 1

    failed = asyncio.create_task(fails())
    returned = asyncio.create_task(returns())
    await asyncio.sleep(0)
    await cancel_and_wait(failed, returned, None)
    assert failed.done() and returned.result() == 1


async def test_the_callers_own_cancellation_propagates() -> None:
    stubborn = asyncio.create_task(_swallows_first_cancels(20, []))
    waiter = asyncio.create_task(cancel_and_wait(stubborn, grace_s=0.01, nudge_s=0.01))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    stubborn.cancel()  # clean up: it swallows, so nudge until it is really done
    await cancel_and_wait(stubborn, grace_s=0.001, nudge_s=0.001)


async def test_cleanup_on_cancellation_gets_its_grace_period() -> None:
    cleaned: list[str] = []

    async def graceful() -> None:
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            # The slow cleanup under test (e.g. leaving a bus), not a wait: must not be cut short.
            await asyncio.sleep(0.3)
            cleaned.append("done")
            raise

    task = asyncio.create_task(graceful())
    await asyncio.sleep(0)
    await cancel_and_wait(task, grace_s=2.0, nudge_s=0.01)
    assert cleaned == ["done"] and task.cancelled()
