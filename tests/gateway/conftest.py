"""Fixtures of the gateway tests: the package and the image, built (or found current) once per
session by scripts/build_deb.sh and scripts/build_image.sh, a fresh root filesystem per test
(the cached mmdebstrap base of scripts/gateway_base.sh, unpacked), all in this session's
:class:`~tests.gateway.machine.RunDir`, swept when the session ends — or, if it was killed, when
the next one starts. SIGTERM ends the session as Ctrl-C does (fixtures and machines torn down)."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.gateway.machine import RunDir, can_boot, script, unpack


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def run_dir() -> Iterator[Path]:
    can_boot()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with RunDir() as path:
            yield path
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def gateway_base(run_dir: Path) -> Path:
    return Path(script("gateway_base.sh", "--no-install")["base"])


@pytest.fixture(scope="session")
def gateway_deb(gateway_base: Path) -> Path:
    return Path(script("build_deb.sh")["deb"])


@pytest.fixture(scope="session")
def gateway_image(gateway_deb: Path) -> dict[str, Path]:
    built = script("build_image.sh", "--deb", str(gateway_deb))
    return {"tarball": Path(built["tarball"]), "image": Path(built["image"])}


@pytest.fixture
def scratch(run_dir: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A directory of this test in the run directory (root filesystems, disks: hundreds of MB),
    removed after it."""
    path = run_dir / request.node.name
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fresh_root(gateway_base: Path, scratch: Path) -> Path:
    """A fresh Debian root filesystem (the base, unpacked)."""
    return unpack(gateway_base, scratch / "root")
