"""Regenerate the Python protobuf/gRPC code in fieldgate/v1 from proto/fieldgate/v1/*.proto,
and SiteWhere's device messages in fieldgate/sitewhere from proto/fieldgate/sitewhere/*.proto.

Run: python scripts/gen_proto.py        (writes fieldgate/v1/ and fieldgate/sitewhere/)
     python scripts/gen_proto.py --check (exit 1 if the checked-in code is stale)
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
# Generated packages and whether they have gRPC services.
OUT_PKGS = {Path("fieldgate") / "v1": True, Path("fieldgate") / "sitewhere": False}


def generate(out_root: Path, out_pkg: Path, grpc: bool) -> None:
    # protoc finds the mypy plugins (from mypy-protobuf) on PATH, beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / out_pkg).glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--mypy_out={out_root}",
        *([f"--grpc_python_out={out_root}", f"--mypy_grpc_out={out_root}"] if grpc else []),
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    what = "protobuf and gRPC code" if grpc else "protobuf code"
    (out_root / out_pkg / "__init__.py").write_text(
        f'"""Generated {what}; regenerate with `python scripts/gen_proto.py`."""\n'
    )
    (out_root / out_pkg / "py.typed").write_text("")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if fieldgate/v1 is stale")
    ns = parser.parse_args()
    stale = False
    for out_pkg, grpc in OUT_PKGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp), out_pkg, grpc)
            fresh = Path(tmp) / out_pkg
            target = ROOT / out_pkg
            if ns.check:
                names = sorted(p.name for p in fresh.iterdir())
                have = sorted(p.name for p in target.iterdir() if p.is_file()) if target.exists() else []
                _, mismatch, errors = filecmp.cmpfiles(fresh, target, names, shallow=False)
                if mismatch or errors or names != have:
                    print(f"stale generated code in {target}: {mismatch + errors or 'file set differs'}")
                    print("run: python scripts/gen_proto.py")
                    stale = True
                continue
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(fresh, target)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
