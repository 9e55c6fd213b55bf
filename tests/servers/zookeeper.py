"""Re-export of :mod:`fieldgate.devservers.zookeeper` (the servers moved into the fieldgate package)."""

from __future__ import annotations

from fieldgate.devservers.zookeeper import (
    ZooKeeperServer,
    four_letter_word,
    start_zookeeper,
    zoo_cfg,
    zookeeper_server,
)

__all__ = ["ZooKeeperServer", "four_letter_word", "start_zookeeper", "zoo_cfg", "zookeeper_server"]
