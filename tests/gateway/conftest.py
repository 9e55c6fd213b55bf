"""Fixtures of the gateway tests: the package and the image, built (or found current) once per
session by scripts/build_deb.sh and scripts/build_image.sh, and a fresh root filesystem per test
(the cached mmdebstrap base of scripts/gateway_base.sh, unpacked)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.machine import can_boot, script, unpack


@pytest.fixture(scope="session")
def gateway_base() -> Path:
    can_boot()
    return Path(script("gateway_base.sh", "--no-install")["base"])


@pytest.fixture(scope="session")
def gateway_deb(gateway_base: Path) -> Path:
    return Path(script("build_deb.sh")["deb"])


@pytest.fixture(scope="session")
def gateway_image(gateway_deb: Path) -> dict[str, Path]:
    built = script("build_image.sh", "--deb", str(gateway_deb))
    return {"tarball": Path(built["tarball"]), "image": Path(built["image"])}


@pytest.fixture
def fresh_root(gateway_base: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh Debian root filesystem (the base, unpacked), removed after the test."""
    root = unpack(gateway_base, tmp_path / "root")
    yield root
    shutil.rmtree(root, ignore_errors=True)  # ~700 MB: not left for pytest's kept temp dirs
