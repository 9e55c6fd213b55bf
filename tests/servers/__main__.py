"""``python -m tests.servers fetch|run <server>``: kept for CI and the README; the command line
now lives in :mod:`fieldgate.devservers.__main__` (also ``python -m fieldgate.devservers``)."""

from __future__ import annotations

import sys

from fieldgate.devservers.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
