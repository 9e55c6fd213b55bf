"""Fixtures of the container tests: the image (built or found current by
scripts/container_tools.sh, once per session) and a podman whose containers, pods, volumes and
secrets are the test's own, removed by name when the test ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.containers.podman import Podman, prepare


@pytest.fixture(scope="session")
def podman_image() -> Podman:
    return prepare()


@pytest.fixture
def podman(podman_image: Podman) -> Iterator[Podman]:
    with podman_image.owned() as mine:
        try:
            yield mine
        finally:
            # Shown by pytest only when the test failed: what each container said last.
            print(mine.diagnostics())
