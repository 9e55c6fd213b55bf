from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fieldgate.suite import Suite, SuiteOptions

PASSWORD = "e2e-secret-pw"


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    async with Suite(SuiteOptions(data_dir=tmp_path / "fg", admin_password=PASSWORD)) as s:
        yield s


async def login(base_url: str, password: str = PASSWORD) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=base_url, timeout=10)
    r = await client.post("/api/v1/auth/token", data={"username": "admin", "password": password})
    r.raise_for_status()
    client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    return client


@pytest.fixture
async def api(suite: Suite) -> AsyncIterator[httpx.AsyncClient]:
    client = await login(suite.rest_url)
    yield client
    await client.aclose()
