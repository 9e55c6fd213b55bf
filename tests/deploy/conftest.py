"""Session fixtures of the deployment tests: the pinned tools and the rendered manifests
(rendered once per session; each test reads them, tests that break them work on copies)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy import manifests as mf


@pytest.fixture(scope="session")
def helm() -> Path:
    return mf.tool("helm")


@pytest.fixture(scope="session")
def kustomize() -> Path:
    return mf.tool("kustomize")


@pytest.fixture(scope="session")
def chart_default(helm: Path) -> list[mf.Manifest]:
    return mf.helm_template(helm)


@pytest.fixture(scope="session")
def chart_production(helm: Path) -> list[mf.Manifest]:
    return mf.helm_template(helm, mf.HERE / "values-existing-clusters.yaml")


@pytest.fixture(scope="session", params=["base", "overlays/gateway", "overlays/gateway-ble"])
def k3s_build(request: pytest.FixtureRequest, kustomize: Path) -> tuple[str, list[mf.Manifest]]:
    return request.param, mf.kustomize_build(kustomize, mf.K3S / request.param)
