"""benchmarks/bench_peer.py keeps working: its fieldgate half, quick, as a user runs it.

The script is run as a subprocess exactly as documented (``--quick --skip-peer``: no
thingsboard-gateway, nothing installed), on the two measurement loops it has: a plain one
(flat out) and the upstream outage (the cloud stopped and started again while the devices keep
publishing). What must hold whatever the machine's speed: the script finishes, every message the
devices' broker acknowledged was accepted by the cloud and stored exactly once, and every figure
was measured (rates, latencies, memory and CPU of the edge process, the outage's backlog and drain).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_peer.py"
MOSQUITTO = "/usr/sbin/mosquitto"


def test_bench_peer_quick_fieldgate_side(tmp_path: Path) -> None:
    if not shutil.which(MOSQUITTO):
        pytest.skip(f"{MOSQUITTO} not installed (apt-get install mosquitto)")
    out = tmp_path / "figures.json"
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--skip-peer",
            "--scenario",
            "flat",
            "outage",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,  # a bound for a wedged run; it takes 15-30 s
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "installing" not in run.stdout, "--skip-peer must not install anything"

    doc = json.loads(out.read_text())
    assert doc["peer"] is None and doc["load_average_at_start"].startswith("load average")
    assert set(doc["scenarios"]) == {"flat", "outage"}
    for key, sides in doc["scenarios"].items():
        assert sides["peer"] is None
        fg = sides["fieldgate"]
        assert fg["publisher_error"] is None, key
        assert fg["acked"] == fg["planned"] > 0, key
        assert fg["delivered"] == fg["acked"] and fg["lost"] == 0, key
        assert fg["stored"] == fg["acked"] and fg["stored_duplicates"] == 0, key
        for figure in ("events_per_s", "p50_ms", "p99_ms", "rss_idle_mb", "rss_peak_mb", "cpu_ms_per_msg"):
            assert fg[figure] is not None and fg[figure] > 0, (key, figure)
        assert fg["p50_ms"] <= fg["p99_ms"] and fg["rss_idle_mb"] <= fg["rss_peak_mb"], key
    outage = doc["scenarios"]["outage"]["fieldgate"]
    assert outage["backlog"] > 0, "messages published while the cloud was down"
    assert outage["drain_s"] is not None and math.isfinite(outage["drain_s"]) and outage["drain_s"] >= 0
    flat = doc["scenarios"]["flat"]["fieldgate"]
    assert flat["backlog"] == 0
    # Without an outage nothing is sent twice; a duplicate at [decoded] here would mean the load
    # started before the warm-up had registered the devices (registration re-publishes events).
    assert flat["duplicates"] == 0
    # The printed report: the table and the goals read against PERFORMANCE.md.
    assert "fieldgate ÷ peer" not in run.stdout  # no peer, no ratio rows
    assert (
        "Goals (PERFORMANCE.md)" in run.stdout
        and "every acknowledged message stored exactly once" in run.stdout
    )
