"""kill -9 of a process that is appending: every event it was told is committed survives."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fieldgate.edge.buffer import EventBuffer
from fieldgate.edge.config import BufferConfig
from fieldgate.v1 import events_pb2 as pb

WRITER = Path(__file__).resolve().parents[1] / "helpers" / "edge_buffer_writer.py"


def run_and_kill(db: Path, synchronous: str, kill_after: int) -> set[str]:
    """Start the writer, read its acknowledgements until ``kill_after`` ids, SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(db), synchronous],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acknowledged: set[str] = set()
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        while len(acknowledged) < kill_after:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            if line.startswith("ok ") and line.endswith("\n"):
                acknowledged.update(line[3:].strip().split(","))
        os.kill(proc.pid, signal.SIGKILL)
        # Lines written before the kill are acknowledgements too; a torn last line is not.
        rest = proc.stdout.read()
        for line in rest.splitlines(keepends=True):
            if line.startswith("ok ") and line.endswith("\n"):
                acknowledged.update(line[3:].strip().split(","))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return acknowledged


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
async def test_every_acknowledged_event_survives_sigkill(tmp_path: Path, synchronous: str) -> None:
    db = tmp_path / "buffer.db"
    acknowledged = await asyncio.to_thread(run_and_kill, db, synchronous, 5000)
    assert len(acknowledged) >= 5000
    async with EventBuffer(BufferConfig(), db) as buf:
        present: set[str] = set()
        cursor = 0
        while rows := await buf.read_after(cursor, 5000):
            present.update(pb.Event.FromString(data).alternate_id for _, data in rows)
            cursor = rows[-1][0]
        assert acknowledged <= present
        assert buf.depth == len(present)
        # The reopened buffer keeps working.
        await buf.append([pb.Event(tenant="default", device="d", alternate_id="after-restart")])
        assert buf.depth == len(present) + 1
