"""Re-export of :mod:`fieldgate.devservers._process` (the servers moved into the fieldgate package)."""

from __future__ import annotations

from fieldgate.devservers._process import JavaProcess, free_port, log4j2_config

__all__ = ["JavaProcess", "free_port", "log4j2_config"]
