"""The generated protobuf code in fieldgate/v1 and fieldgate/sitewhere must match proto/: a stale checkout fails here.

``scripts/gen_proto.py --check`` regenerates into a temporary directory and compares. The second
test proves the check has teeth: in a copy of the repository it fails once a .proto changes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "gen_proto.py"), "--check"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_generated_code_is_up_to_date() -> None:
    result = _check(ROOT)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\nrun: python scripts/gen_proto.py"


def test_the_check_fails_when_a_proto_changed(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(ROOT / "fieldgate" / "v1", tmp_path / "fieldgate" / "v1")
    shutil.copytree(ROOT / "fieldgate" / "sitewhere", tmp_path / "fieldgate" / "sitewhere")
    assert _check(tmp_path).returncode == 0

    events = tmp_path / "proto" / "fieldgate" / "v1" / "events.proto"
    events.write_text(events.read_text() + "\nmessage AddedByTheTest { string x = 1; }\n")
    result = _check(tmp_path)
    assert result.returncode == 1
    assert "stale generated code" in result.stdout


def test_the_check_covers_the_sitewhere_messages(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(ROOT / "fieldgate" / "v1", tmp_path / "fieldgate" / "v1")
    shutil.copytree(ROOT / "fieldgate" / "sitewhere", tmp_path / "fieldgate" / "sitewhere")
    (tmp_path / "fieldgate" / "sitewhere" / "sitewhere3_pb2.py").write_text("# edited by hand\n")
    result = _check(tmp_path)
    assert result.returncode == 1
    assert "fieldgate/sitewhere" in result.stdout
