"""The architecture's boundaries (pyproject's [tool.importlinter] contracts) really are checked.

`lint-imports` runs in scripts/test.sh over the real tree. Here each contract is shown to bite:
a copy of the package (the cloud/, edge/ and firmware-sims/ folders copied in place of the
symlinks) gets one forbidden import added, and `lint-imports` must report that contract
broken, naming the import. The unchanged copy keeps every contract, so the failure is the
added line's doing.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# contract id -> (module file to change, relative to the package; the import it gets; the
# importer and imported names lint-imports must report)
VIOLATIONS: dict[str, tuple[str, str, str, str]] = {
    "protocol-no-io": (
        "protocol/topics.py",
        "import socket",
        "fieldgate.protocol.topics",
        "socket",
    ),
    "edge-cloud-independent": (
        "edge/health.py",
        "import fieldgate.cloud.config",
        "fieldgate.edge.health",
        "fieldgate.cloud.config",
    ),
    "sims-on-protocol": (
        "sims/mqtt.py",
        "import fieldgate.edge.config",
        "fieldgate.sims.mqtt",
        "fieldgate.edge.config",
    ),
    "store-below-api-services": (
        "cloud/store/validators.py",
        "import fieldgate.cloud.services.fleet",
        "fieldgate.cloud.store.validators",
        "fieldgate.cloud.services.fleet",
    ),
    "nothing-imports-api": (
        "cloud/bus/payloads.py",
        "import fieldgate.cloud.api.rest.errors",
        "fieldgate.cloud.bus.payloads",
        "fieldgate.cloud.api.rest.errors",
    ),
    "stages-independent": (
        "cloud/pipeline/persistence.py",
        "import fieldgate.cloud.pipeline.state",
        "fieldgate.cloud.pipeline.persistence",
        "fieldgate.cloud.pipeline.state",
    ),
    "cloud-layers": (
        "cloud/store/validators.py",
        "import fieldgate.cloud.pipeline.stage",
        "fieldgate.cloud.store.validators",
        "fieldgate.cloud.pipeline.stage",
    ),
    "grpc-not-rest": (
        "cloud/api/grpc/__init__.py",
        "import fieldgate.cloud.api.rest.errors",
        "fieldgate.cloud.api.grpc",
        "fieldgate.cloud.api.rest.errors",
    ),
}


def _contract_ids() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return [c["id"] for c in config["contracts"]]


def test_every_contract_has_a_violation_here() -> None:
    assert sorted(_contract_ids()) == sorted(VIOLATIONS)


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's Python files, with the symlinked folders copied as real folders."""
    base = tmp_path_factory.mktemp("boundaries")
    shutil.copytree(
        ROOT / "fieldgate",
        base / "fieldgate",
        symlinks=False,
        ignore=shutil.ignore_patterns("__pycache__", "static", "poms", "*.pyc"),
    )
    shutil.copy(ROOT / "pyproject.toml", base / "pyproject.toml")
    return base


def _lint(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    args = [str(LINT_IMPORTS), "--no-cache", "--no-logo"]
    for contract in contracts:
        args += ["--contract", contract]
    return subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=120, check=False)


def test_the_unchanged_copy_keeps_every_contract(package_copy: Path) -> None:
    result = _lint(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(VIOLATIONS)} kept, 0 broken." in result.stdout


@pytest.mark.parametrize("contract", sorted(VIOLATIONS))
def test_a_forbidden_import_breaks_the_contract(package_copy: Path, tmp_path: Path, contract: str) -> None:
    path, line, importer, imported = VIOLATIONS[contract]
    root = tmp_path / "tree"
    shutil.copytree(package_copy, root)
    module = root / "fieldgate" / path
    assert module.is_file(), f"{path} is gone: pick another module for {contract}"
    module.write_text(module.read_text() + f"\n{line}  # the forbidden import under test\n")

    result = _lint(root, contract)

    out = " ".join(result.stdout.split())  # lint-imports wraps long lines
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Contracts: 0 kept, 1 broken." in out, result.stdout
    assert f"{importer} -> {imported}" in out, result.stdout


# The layout (README.md, "Where things are"): the design's top-level folders form one package
# through the links in fieldgate/, and each is importable under that one name only.
FOLDERS = {"fieldgate.cloud": "cloud", "fieldgate.edge": "edge", "fieldgate.sims": "firmware-sims"}


@pytest.mark.parametrize("package", sorted(FOLDERS))
def test_the_folders_are_the_package_through_the_links(package: str) -> None:
    folder = ROOT / FOLDERS[package]
    link = ROOT / "fieldgate" / package.removeprefix("fieldgate.")
    assert link.is_symlink() and link.resolve() == folder.resolve()
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve() == (folder / "__init__.py").resolve()


@pytest.mark.parametrize("package", sorted(FOLDERS))
def test_a_folder_imported_by_its_own_name_is_refused(package: str) -> None:
    """From the repository's root (pytest puts it on sys.path) ``import cloud`` would load the
    same files a second time as another module; it fails, saying what to import instead."""
    folder = FOLDERS[package]
    code = f"import importlib, sys\nsys.path.insert(0, {str(ROOT)!r})\nimportlib.import_module({folder!r})\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"ImportError: {folder!r} is the repository's {folder}/ folder: import it as {package}"
        f" (fieldgate/{package.removeprefix('fieldgate.')} links to it; README.md, Where things are)"
    )
