"""Schemathesis over the whole REST API, from its own OpenAPI document, every phase and check.

The real cloud (``CloudApp``, embedded: SQLite stores, the embedded bus, every REST route the
``fieldgate cloud run`` process serves) runs in a thread of its own; the schemathesis command
line runs against it as an instance administrator, with the repository's configuration
(tests/integration/schemathesis.toml: the phases examples, coverage, fuzzing and stateful —
sequences of calls linked by the identifiers one answer gives the next request — and every
check, positive data acceptance included, see tests/integration/schemathesis_hooks.py). It must
find nothing: no server error, no answer that breaks the document (status, content type,
headers, body), no schema-valid request refused, no invalid one accepted, no 405 whose Allow
header lies. Bounded: ``MAX_EXAMPLES`` per operation and phase, deterministic generation; the
run's time is printed with ``-s`` (about a minute on 2 cores).

The same run by hand, against ``make run``: docs/api.md, "Checking the API with schemathesis".
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fieldgate.cloud.app import CloudApp
from fieldgate.cloud.config import CloudConfig
from fieldgate.cloud.services.access import Role

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 15
TIMEOUT_S = 600


class _Cloud:
    """A CloudApp on its own event loop, in a thread; ``token`` is an instance admin's."""

    def __init__(self, data_dir: Path) -> None:
        self._config = CloudConfig(data_dir=data_dir, rest_port=0, grpc_port=0)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.url = ""
        self.token = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with CloudApp(self._config) as app:
                # The fuzzer's own account: a name it cannot guess (it may change "admin").
                user, password = f"fuzz-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
                await app.parts.users.set_password(user, password, role=Role.INSTANCE_ADMIN)
                self.url = f"http://127.0.0.1:{app.rest_port}"
                async with httpx.AsyncClient(base_url=self.url) as client:
                    r = await client.post("/api/v1/auth/token", data={"username": user, "password": password})
                    r.raise_for_status()
                    self.token = r.json()["access_token"]
                self._ready.set()
                await self._stop.wait()
        except BaseException as err:
            self._error = err
            self._ready.set()
            raise

    def __enter__(self) -> _Cloud:
        self._thread.start()
        assert self._ready.wait(120), "the cloud did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Cloud]:
    with _Cloud(tmp_path_factory.mktemp("schemathesis")) as c:
        yield c


@pytest.mark.timeout(TIMEOUT_S + 60)  # the run's own bound, not pytest's 300 s default
def test_the_api_keeps_its_document(cloud: _Cloud) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{cloud.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {cloud.token}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--no-color",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the hooks module
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    print(f"\nschemathesis: {time.monotonic() - started:.0f} s\n{done.stdout[-1500:]}")
    assert done.returncode == 0, f"{done.stdout[-30000:]}\n{done.stderr[-3000:]}"
    summary = done.stdout
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in summary, f"phase {phase} did not run and pass:\n{summary[-3000:]}"
