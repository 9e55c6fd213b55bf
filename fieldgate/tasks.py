"""Stopping asyncio tasks reliably.

``task.cancel(); await task`` can hang for ever on Python 3.11: ``asyncio.wait_for`` there
swallows a cancellation that arrives in the same loop iteration as the awaited future's result
(CPython bpo-42130, fixed in 3.12 by re-implementing ``wait_for`` on ``asyncio.timeout``).
Libraries we run inside our tasks use ``wait_for`` on every request (pymodbus's transaction
manager, pyserial-asyncio's and bleak's connects), so a loop that polls a device every 100 ms
loses the one cancel() now and then and keeps polling. CI saw exactly that as a five-minute
hang in the Modbus adapter's stop. :func:`cancel_and_wait` cancels again until the task is
done, after a grace period that leaves a task's own cleanup on cancellation alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

GRACE_S = 2.0
NUDGE_S = 0.2


async def cancel_and_wait(
    *tasks: asyncio.Task[Any] | None, grace_s: float = GRACE_S, nudge_s: float = NUDGE_S
) -> None:
    """Cancel ``tasks`` and return once every one of them has finished.

    After the first cancel() a task gets ``grace_s`` to finish (its own cleanup on
    CancelledError may await: closing a connection, leaving a bus); one still running then
    swallowed the cancellation and is cancelled again every ``nudge_s`` until it is done.
    Results and exceptions of the tasks are retrieved and dropped (the tasks' own code logs
    what matters); if the caller itself is cancelled while waiting, that CancelledError
    propagates.
    """
    pending = {t for t in tasks if t is not None and not t.done()}
    wait_s = grace_s
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=wait_s)
        wait_s = nudge_s
    for finished in tasks:
        if finished is not None and finished.done() and not finished.cancelled():
            finished.exception()  # mark retrieved: no "exception was never retrieved" at shutdown
