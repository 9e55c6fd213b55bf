"""Child process running one edge agent, for kill -9 tests: ``python edge_agent_proc.py CONFIG``.

CONFIG is a YAML/JSON EdgeConfig file. Prints ``ready`` once the agent (with its adapters, e.g.
the embedded MQTT broker) has started, then runs until it is killed. The test owns the process.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from fieldgate import config as cfg
from fieldgate.edge.agent import EdgeAgent
from fieldgate.edge.config import EdgeConfig


async def main(path: Path) -> None:
    conf = cfg.load(EdgeConfig, path)
    async with EdgeAgent(conf):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(Path(sys.argv[1])))
