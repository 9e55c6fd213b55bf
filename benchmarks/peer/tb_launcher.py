"""Start thingsboard-gateway with one configuration file; run with the peer's own venv Python.

    <peer venv>/bin/python tb_launcher.py <run dir>/tb_gateway.json

The launcher the figures in PERFORMANCE.md were measured with, plus one change: the gateway's
update check (a background HTTPS request to updates.thingsboard.io at start and hourly) is
switched off, so a benchmark run contacts nothing outside this machine. Nothing on the data
path is changed. SIGINT stops the gateway cleanly (its own handler); bench_peer.py sends it.
"""

import sys

from thingsboard_gateway.tb_utility import tb_updater


def _no_update_check(self: object) -> None:
    """Replaces TBUpdater.check_for_new_version: no request leaves the machine."""


tb_updater.TBUpdater.check_for_new_version = _no_update_check

from thingsboard_gateway.gateway.tb_gateway_service import TBGatewayService  # noqa: E402

if len(sys.argv) != 2:
    sys.exit("usage: tb_launcher.py <path to tb_gateway.json>")
TBGatewayService(sys.argv[1])
