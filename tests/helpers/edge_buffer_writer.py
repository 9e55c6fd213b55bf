"""Child process for the buffer's kill -9 test: appends events and reports what was committed.

Run as ``python edge_buffer_writer.py <db path> <FULL|NORMAL>``. Several concurrent
appenders write events with known alternate ids forever (bounded by MAX_EVENTS); after each
``append`` returns, the ids it committed are printed on one line (``ok id1,id2,...``) and
flushed, so the parent knows exactly which events the buffer acknowledged before it was
killed. The parent owns this process and kills it with SIGKILL.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fieldgate.edge.buffer import EventBuffer
from fieldgate.edge.config import BufferConfig
from fieldgate.v1 import events_pb2 as pb

APPENDERS = 8
MAX_EVENTS = 500_000


async def main(path: Path, synchronous: str) -> None:
    config = BufferConfig(synchronous="NORMAL" if synchronous == "NORMAL" else "FULL", max_events=MAX_EVENTS)
    buffer = EventBuffer(config, path)
    await buffer.open()
    print("ready", flush=True)
    counter = 0

    async def appender(worker: int) -> None:
        nonlocal counter
        while counter < MAX_EVENTS:
            size = 1 + counter % 7
            events = []
            for _ in range(size):
                counter += 1
                e = pb.Event(tenant="default", device=f"dev-{worker}", alternate_id=f"w{worker}-{counter}")
                e.measurement.values["n"] = float(counter)
                events.append(e)
            await buffer.append(events)
            sys.stdout.write("ok " + ",".join(e.alternate_id for e in events) + "\n")
            sys.stdout.flush()

    await asyncio.gather(*(appender(w) for w in range(APPENDERS)))
    await buffer.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
