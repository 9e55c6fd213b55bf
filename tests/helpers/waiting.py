"""Waiting on conditions: the only kind of timing tests may rely on.

The machine a test runs on may be busy (two cores shared by several test runs, a CI runner under
load), so no test sleeps a fixed time and hopes something happened meanwhile. It waits on the
condition instead, with a generous deadline that only matters when the test fails:

- :func:`eventually` polls a predicate (sync or async) until it returns something truthy and
  returns that value; after ``timeout`` seconds it fails, naming what it waited for and the last
  value it saw. :func:`eventually_sync` is the same for code that cannot await.
- :func:`never` is the negative check ("no duplicate lands", "nothing more arrives"): it polls a
  predicate for the whole window and fails as soon as it turns truthy. A negative claim can only
  be checked for a while, so wait for the positive condition first (the count reached, the
  stream caught up), then use ``never`` for the window in which a wrong extra would show up.
- :func:`collect` gathers batches from a fetch call (a consumer's ``poll``) until enough arrived.
- :func:`not_yet` lets a probe say why it is not there yet (a falsy value with a useful repr,
  e.g. the last HTTP status and body), which the failure message then shows.
- :func:`free_port` and :func:`wait_for_port` for servers a test starts itself.

Usage::

    await eventually(lambda: len(cloud.events) == 5, what="5 events at the cloud")
    rows = await eventually(lambda: api.rows(device), timeout=60)   # async probe: awaited
    await never(lambda: len(cloud.events) > 5, within=1.0, what="a duplicate event")
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, overload

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_INTERVAL_S = 0.05
_REPR_LIMIT = 300


class NotYet:
    """A falsy probe result that carries what the probe saw (see :func:`not_yet`)."""

    __slots__ = ("detail",)

    def __init__(self, detail: object) -> None:
        self.detail = detail

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"not yet: {self.detail}"


def not_yet(detail: object) -> NotYet:
    """``return not_yet(f"{r.status_code} {r.text}")`` from a probe: keep waiting, and if the wait
    fails, show this as the last value."""
    return NotYet(detail)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT] + f"... ({len(text)} chars)"


def _describe(probe: Callable[..., Any], what: str | None) -> str:
    """``what`` when given; else the probe's source (a lambda's line) or its name."""
    if what:
        return what
    try:
        source = inspect.getsource(probe).strip()
    except (OSError, TypeError):
        source = ""
    if source:
        return source if len(source) <= 200 else source[:200] + "..."
    return getattr(probe, "__qualname__", repr(probe))


async def _value(probe: Callable[[], Any]) -> Any:
    value = probe()
    if inspect.isawaitable(value):
        value = await value
    return value


# The probe's falsy results (None, NotYet) are what it returns while waiting, so they are not in
# the returned type. ``Callable[..., ...]``: a probe that is a lambda with default arguments
# (``lambda d=device: ...``, binding a loop variable) is one mypy can check too.
@overload
async def eventually(
    probe: Callable[..., Awaitable[T | NotYet | None]],
    timeout: float = ...,
    what: str | None = ...,
    *,
    interval: float = ...,
) -> T: ...
@overload
async def eventually(
    probe: Callable[..., T | NotYet | None],
    timeout: float = ...,
    what: str | None = ...,
    *,
    interval: float = ...,
) -> T: ...
async def eventually(
    probe: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT_S,
    what: str | None = None,
    *,
    interval: float = DEFAULT_INTERVAL_S,
) -> Any:
    """Call ``probe`` (awaiting its result if it is awaitable) until the result is truthy, and
    return that result. After ``timeout`` seconds fail with an AssertionError that names
    ``what`` (or the probe's source) and the last value. Exceptions from the probe propagate.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout
    while True:
        value = await _value(probe)
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(
                f"waited {loop.time() - started:.1f} s for {_describe(probe, what)}; last value: {_short(value)}"
            )
        await asyncio.sleep(interval)


def eventually_sync(
    probe: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT_S,
    what: str | None = None,
    *,
    interval: float = DEFAULT_INTERVAL_S,
) -> T:
    """:func:`eventually` for code that cannot await: sync fixtures, a helper's thread, a test
    that blocks its event loop on purpose. Blocks the calling thread while it polls."""
    started = time.monotonic()
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() - started >= timeout:
            raise AssertionError(
                f"waited {time.monotonic() - started:.1f} s for {_describe(probe, what)}; last value: {_short(value)}"
            )
        time.sleep(interval)


async def never(
    probe: Callable[[], Any],
    within: float,
    what: str | None = None,
    *,
    interval: float = DEFAULT_INTERVAL_S,
) -> None:
    """Poll ``probe`` for ``within`` seconds; fail as soon as its result is truthy (the thing
    that must not happen happened), naming ``what`` and the value. Checks once more at the end.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + within
    while True:
        value = await _value(probe)
        if value:
            raise AssertionError(
                f"{_describe(probe, what)} happened after {loop.time() - started:.2f} s "
                f"(of {within:g} s watched): {_short(value)}"
            )
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(interval, remaining))


async def collect(
    fetch: Callable[[], Awaitable[Iterable[T]]],
    count: int,
    timeout: float = DEFAULT_TIMEOUT_S,
    what: str = "items",
) -> list[T]:
    """Call ``fetch`` (e.g. ``lambda: consumer.poll(500, 0.5)``) and gather what it returns,
    in arrival order, until at least ``count`` items arrived; fail after ``timeout`` seconds
    with how many did. Returns everything gathered (possibly more than ``count``)."""
    out: list[T] = []

    async def enough() -> bool:
        out.extend(await fetch())
        return len(out) >= count

    try:
        await eventually(enough, timeout)
    except AssertionError:
        raise AssertionError(
            f"waited {timeout:g} s for {count} {what}, got {len(out)}: {_short(out)}"
        ) from None
    return out


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (another process may still take it before the
    caller binds it; tests that can bind port 0 themselves should)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(
    port: int,
    host: str = "127.0.0.1",
    timeout: float = DEFAULT_TIMEOUT_S,
    *,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Block until ``host:port`` accepts connections (for sync fixtures; from async code call it
    through ``asyncio.to_thread``). With ``proc``, fail at once if that process exits first."""

    def listening() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"process {proc.pid} exited with {proc.returncode} before listening on {host}:{port}"
            )
        return port_open(port, host)

    eventually_sync(listening, timeout, f"something to listen on {host}:{port}")
