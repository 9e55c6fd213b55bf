"""Shared plumbing of the cloud's SQLite backends (event store, registry, invocations, bus).

SQLite calls block, so each backend owns one :class:`SqliteWorker`: a single worker thread
that owns every connection of that backend and runs every statement. One thread means no
locking between our own connections, transactions that never interleave, and an event loop
that never waits on disk. Connections are opened in WAL mode with ``synchronous=FULL`` by
default: a transaction that returned is on disk (the pipeline acknowledges edges and commits
bus offsets on that promise); batching many rows per transaction pays for the fsync.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

from fieldgate.cloud.errors import CloudError

P = ParamSpec("P")
T = TypeVar("T")

Synchronous = Literal["FULL", "NORMAL"]


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error): take the write lock up front so
    that a reader-turned-writer never fails with SQLITE_BUSY halfway."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteWorker:
    """One thread and the connections it owns; ``run`` executes a function there.

    Errors of sqlite3 become ``error`` (the backend's CloudError subclass) with the original
    chained; CloudErrors raised by the function itself (NotFound, Conflict, ...) pass through.
    """

    def __init__(
        self,
        name: str,
        *,
        error: type[CloudError],
        synchronous: Synchronous = "FULL",
    ) -> None:
        self._name = name
        self._error = error
        self._synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None
        # Touched only in the worker thread.
        self._conns: dict[Path, sqlite3.Connection] = {}

    @property
    def running(self) -> bool:
        return self._executor is not None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)

    async def stop(self) -> None:
        """Close every connection (in the worker thread) and end the thread."""
        executor = self._executor
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_all)
        finally:
            self._executor = None
            executor.shutdown(wait=True)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            self.start()
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        except sqlite3.Error as err:
            raise self._error(f"{self._name}: {type(err).__name__}: {err}") from err

    def close_soon(self, path: Path) -> None:
        """Close the connection to ``path`` before the next :meth:`run` (the worker is one
        thread, first in first out), e.g. after another instance deleted the file."""
        if self._executor is not None:
            self._executor.submit(self._close, path)

    # ----------------------------------------------------------- worker-thread side

    def _close(self, path: Path) -> None:
        conn = self._conns.pop(path, None)
        if conn is not None:
            conn.close()

    def connect(
        self,
        path: Path,
        schema: str,
        *,
        create: bool = True,
        cache_kib: int | None = None,
        wal_autocheckpoint: int | None = None,
    ) -> sqlite3.Connection | None:
        """The connection to ``path`` (opened and given ``schema`` on first use).

        With ``create=False`` a missing file gives None instead of a new empty database, so
        that reads for a tenant that never stored anything leave no files behind.
        """
        conn = self._conns.get(path)
        if conn is not None:
            return conn
        if not create and not path.exists():
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")
        # Bound the WAL file after checkpoints (it otherwise keeps its high-water size).
        conn.execute("PRAGMA journal_size_limit=67108864")
        if cache_kib is not None:
            conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        if wal_autocheckpoint is not None:
            conn.execute(f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint)}")
        conn.executescript(schema)
        self._conns[path] = conn
        return conn

    def remove(self, path: Path) -> bool:
        """Close the connection to ``path`` and delete the database with its WAL and shared
        memory files (worker-thread side). True if the database file existed."""
        conn = self._conns.pop(path, None)
        if conn is not None:
            conn.close()
        existed = path.exists()
        for suffix in ("", "-wal", "-shm", "-journal"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        return existed

    def _close_all(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
