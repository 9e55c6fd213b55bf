"""Fixtures of the container tests: the image (built or found current by
scripts/container_tools.sh, once per session), a podman whose containers, pods, volumes and
secrets are the test's own (removed by name when the test ends), and helm for the chart."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.containers.podman import Podman, prepare
from tests.deploy import manifests as mf

FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture(scope="session")
def podman_image() -> Podman:
    return prepare()


@pytest.fixture
def podman(podman_image: Podman, request: pytest.FixtureRequest) -> Iterator[Podman]:
    with podman_image.owned() as mine:
        try:
            yield mine
        finally:
            if request.node.stash.get(FAILED, False):
                # Shown with the failure: what each container of the test said last.
                print(mine.diagnostics())


@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned helm of scripts/deploy_tools.sh (renders the chart for kube play)."""
    return mf.tool("helm")
