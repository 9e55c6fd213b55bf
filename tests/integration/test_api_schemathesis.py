"""Schemathesis against the whole REST API, from its own OpenAPI document.

The real app (SQLite stores, the embedded bus, the users of tests/helpers/api_stack.py) is
served by uvicorn on 127.0.0.1 in a thread of its own; schemathesis generates requests for
every operation (valid and invalid ones: bodies, query and path parameters, headers) and checks
every answer: no 5xx, status codes, content types, headers and bodies as documented. Runs as a
tenant admin and, with fewer examples, as the instance admin. Bounded: ``MAX_EXAMPLES`` per
operation keeps the whole run well under 90 s on 2 cores (printed with ``-s``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.helpers.api_stack import USERS, api_stack
from tests.helpers.waiting import eventually_sync

pytestmark = pytest.mark.integration

# "Schema-valid request rejected": a request the schema allows but the data does not (a device
# of a type that does not exist, an assignment of an unknown device) is a 422 naming the field,
# as documented; the schema cannot know what exists.
EXCLUDED = [positive_data_acceptance]
MAX_EXAMPLES = 12
MAX_EXAMPLES_INSTANCE_ADMIN = 5


class _Server:
    """The API stack and uvicorn on their own event loop, in a thread."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server: uvicorn.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        async with api_stack(self._tmp) as stack:
            config = uvicorn.Config(stack.app, log_level="warning", lifespan="off", access_log=False)
            self._server = uvicorn.Server(config)
            self._ready.set()
            await self._server.serve(sockets=[self._sock])

    def __enter__(self) -> _Server:
        self._thread.start()
        assert self._ready.wait(30)
        eventually_sync(lambda: self._server is not None and self._server.started, 30, "uvicorn started")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    started = time.monotonic()
    with _Server(tmp_path_factory.mktemp("schemathesis")) as s:
        yield s
    print(f"\nschemathesis: the fuzz took {time.monotonic() - started:.1f} s")


def _token(server: _Server, user: str) -> dict[str, str]:
    r = httpx.post(f"{server.url}/api/v1/auth/token", data={"username": user, "password": USERS[user][0]})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture(scope="module")
def tokens(server: _Server) -> dict[str, dict[str, str]]:
    # Before the fuzz: it sends failed logins from this address, which the throttle counts.
    return {"tenant-admin": _token(server, "admin"), "instance-admin": _token(server, "root")}


def fuzz(server: _Server, headers: dict[str, str], max_examples: int) -> list[str]:
    """Every operation of the served schema with ``max_examples`` generated cases each; the
    failures found (one per operation: the first)."""
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in api.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=max_examples, **_SETTINGS)
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, timeout=30, excluded_checks=EXCLUDED)

        try:
            run()
        except Exception as err:  # noqa: BLE001 - collected: one report for every operation
            failures.append(f"{operation.label}: {type(err).__name__}: {str(err)[:2000]}")
    assert operations >= 20
    return failures


_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "phases": [Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    "derandomize": True,
    "database": None,
}


def test_as_a_tenant_admin(server: _Server, tokens: dict[str, dict[str, str]]) -> None:
    failures = fuzz(server, tokens["tenant-admin"], MAX_EXAMPLES)
    assert not failures, "\n\n".join(failures)


def test_as_the_instance_admin(server: _Server, tokens: dict[str, dict[str, str]]) -> None:
    failures = fuzz(server, tokens["instance-admin"], MAX_EXAMPLES_INSTANCE_ADMIN)
    assert not failures, "\n\n".join(failures)
