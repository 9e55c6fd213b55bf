"""The test toolkit's waits: they return what they waited for and fail with a useful message."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.helpers.waiting import (
    collect,
    eventually,
    eventually_sync,
    free_port,
    never,
    not_yet,
    port_open,
    wait_for_port,
)


async def test_eventually_returns_the_first_truthy_value_of_a_sync_probe() -> None:
    calls: list[int] = []

    def probe() -> list[int]:
        calls.append(1)
        return calls if len(calls) >= 3 else []

    assert await eventually(probe, 5, interval=0.001) == [1, 1, 1]


async def test_eventually_awaits_an_async_probe() -> None:
    count = 0

    async def probe() -> str | None:
        nonlocal count
        count += 1
        return "ready" if count == 2 else None

    assert await eventually(probe, 5, interval=0.001) == "ready"
    assert await eventually(lambda: probe_value(), 5) == {"n": 1}


async def probe_value() -> dict[str, int]:
    return {"n": 1}


async def test_eventually_names_what_it_waited_for_and_the_last_value() -> None:
    rows = [1, 2]
    with pytest.raises(AssertionError, match=r"waited 0\.\d s for new rows; last value: \[\]"):
        await eventually(lambda: rows[2:], 0.1, "new rows")
    with pytest.raises(AssertionError, match=r"for 3 rows; last value: False"):
        await eventually(lambda: len(rows) == 3, 0.1, "3 rows")
    # Without ``what`` the probe's own source names it.
    with pytest.raises(AssertionError, match=r"len\(rows\) == 3"):
        await eventually(lambda: len(rows) == 3, 0.1)


async def test_a_probe_says_why_it_is_not_there_yet() -> None:
    status = iter([503, 503, 200])

    def probe() -> object:
        code = next(status, 404)
        return {"ok": True} if code == 200 else not_yet(f"HTTP {code}")

    assert await eventually(probe, 5, interval=0.001) == {"ok": True}
    with pytest.raises(AssertionError, match=r"for the report; last value: not yet: HTTP 404$"):
        await eventually(probe, 0.1, "the report")


async def test_eventually_lets_a_probe_error_through() -> None:
    def probe() -> bool:
        raise KeyError("gone")

    with pytest.raises(KeyError):
        await eventually(probe, 1)


def test_eventually_sync_polls_in_the_calling_thread() -> None:
    values = iter([0, 0, 7])
    assert eventually_sync(lambda: next(values), 5, interval=0.001) == 7
    with pytest.raises(AssertionError, match=r"waited 0\.\d s for the seventh; last value: 0"):
        eventually_sync(lambda: 0, 0.1, "the seventh")


async def test_never_watches_the_whole_window() -> None:
    calls = 0

    def probe() -> bool:
        nonlocal calls
        calls += 1
        return False

    await never(probe, within=0.2, interval=0.01)
    assert calls >= 5


async def test_never_fails_as_soon_as_the_bad_thing_happens() -> None:
    seen = [1]
    with pytest.raises(AssertionError, match=r"a duplicate happened after 0\.\d\d s \(of 30 s watched\): 2"):
        await never(lambda: len(seen) + 1 if seen else 0, within=30, what="a duplicate")


async def test_collect_gathers_batches_until_enough() -> None:
    batches = iter([[1], [], [2, 3], [4, 5, 6]])

    async def fetch() -> list[int]:
        return next(batches, [])

    assert await collect(fetch, 3) == [1, 2, 3]

    async def nothing() -> list[int]:
        return []

    with pytest.raises(AssertionError, match=r"waited 0\.1 s for 2 records, got 0: \[\]"):
        await collect(nothing, 2, 0.1, "records")


def test_free_port_and_wait_for_port() -> None:
    port = free_port()
    assert not port_open(port)
    with pytest.raises(
        AssertionError, match=f"for something to listen on 127.0.0.1:{port}; last value: False"
    ):
        wait_for_port(port, timeout=0.1)
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        wait_for_port(port, timeout=5)
        assert port_open(port)


def test_wait_for_port_fails_at_once_when_the_server_process_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(AssertionError, match=r"exited with 3 before listening"):
        wait_for_port(free_port(), timeout=30, proc=proc)
