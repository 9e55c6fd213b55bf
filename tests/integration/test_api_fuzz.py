"""Bad input never gets a 500: every endpoint answers malformed bodies, wrong types, absurd page
sizes, bad times and odd path tokens with a 4xx and a readable ``detail``."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.api_stack import THERMOSTAT, ApiStack, api_stack, login

pytestmark = pytest.mark.integration

BODY_ENDPOINTS = [
    ("POST", "/api/v1/device-types"),
    ("POST", "/api/v1/devices"),
    ("POST", "/api/v1/assignments"),
    ("POST", "/api/v1/devices/t-1/commands"),
    ("POST", "/api/v1/assignments/{a}/release"),
]
QUERY_ENDPOINTS = [
    "/api/v1/device-types",
    "/api/v1/devices",
    "/api/v1/assignments",
    "/api/v1/devices/t-1/events",
    "/api/v1/devices/t-1/assignments",
    "/api/v1/assignments/nope/events",
]
PATH_TEMPLATES = [
    "/api/v1/devices/{x}",
    "/api/v1/devices/{x}/events",
    "/api/v1/devices/{x}/assignments",
    "/api/v1/devices/{x}/commands",
    "/api/v1/invocations/{x}",
    "/api/v1/device-types/{x}",
    "/api/v1/assignments/{x}/release",
    "/api/v1/assignments/{x}/events",
    "/api/v1/invocations/{x}/events",
]

RAW_BODIES: list[bytes] = [
    b"",
    b"{",
    b"not json",
    b"null",
    b"[]",
    b"[1, 2, 3]",
    b'"string"',
    b"42",
    b"\xff\xfe\x00garbage",
    b'{"token": NaN}',
    b'{"command": "ping", "params": {"x": Infinity}}',
    b'{"a":' * 500 + b"1" + b"}" * 500,
    json.dumps({"token": "x" * 100_000, "device_type": "y" * 100_000}).encode(),
]

WEIRD: list[Any] = [
    None,
    True,
    0,
    -1,
    2**64,
    1.5,
    float("1e308"),
    "",
    "x" * 5000,
    "\u0000",
    "💥",
    [],
    [None],
    {},
    {"nested": {"deeper": [1, {"x": None}]}},
]

GOOD_BODIES: dict[str, dict[str, Any]] = {
    "/api/v1/device-types": {"token": "fz", "name": "n", "commands": [{"name": "c", "params": []}]},
    "/api/v1/devices": {"token": "fz-1", "device_type": "thermostat", "comments": "", "metadata": {}},
    "/api/v1/assignments": {"device": "t-1", "customer": "", "area": "", "asset": "", "metadata": {}},
    "/api/v1/devices/t-1/commands": {"command": "configure", "params": {"seconds": 1}, "ttl_s": 60},
}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(tmp_path) as s:
        yield s


def _check(r: httpx.Response, what: str) -> None:
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail, what


async def test_malformed_bodies_and_wrong_types_never_500(stack: ApiStack) -> None:
    rnd = random.Random(20240501)
    async with stack.client() as client:
        auth = await login(client, "admin")
        assert (await client.post("/api/v1/device-types", json=THERMOSTAT, headers=auth)).status_code == 201
        r = await client.post(
            "/api/v1/devices", json={"token": "t-1", "device_type": "thermostat"}, headers=auth
        )
        assert r.status_code == 201
        a = (await client.post("/api/v1/assignments", json={"device": "t-1"}, headers=auth)).json()["token"]

        for method, template in BODY_ENDPOINTS:
            path = template.format(a="nope")
            for raw in RAW_BODIES:
                for ctype in ("application/json", "text/plain", None):
                    headers = dict(auth)
                    if ctype:
                        headers["content-type"] = ctype
                    r = await client.request(method, path, content=raw, headers=headers)
                    _check(r, f"{method} {path} {raw[:30]!r} {ctype}")

        # every field of every good body replaced by every weird value, and unknown fields added
        for path, good in GOOD_BODIES.items():
            for field in [*good, "unknown_field"]:
                for value in WEIRD:
                    body = dict(good) | {field: value}
                    r = await client.post(path, json=body, headers=auth)
                    _check(r, f"POST {path} {field}={str(value)[:40]}")

        # random command params against the typed command definition
        for _ in range(300):
            params = {
                rnd.choice(["seconds", "target", "label", "enabled", "other"]): rnd.choice(WEIRD)
                for _ in range(rnd.randint(0, 4))
            }
            body = {"command": rnd.choice(["configure", "ping", "", "nope"]), "params": params}
            r = await client.post("/api/v1/devices/t-1/commands", json=body, headers=auth)
            _check(r, f"command {body}")
            assert r.status_code in (201, 404, 422), r.text

        # an oversized body is refused before it is read into memory
        big = b'{"token": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        r = await client.post(
            "/api/v1/devices", content=big, headers=auth | {"content-type": "application/json"}
        )
        assert r.status_code == 413

        # releasing twice is a client error, not a crash
        for _ in range(2):
            _check(await client.post(f"/api/v1/assignments/{a}/release", headers=auth), "release")


async def test_bad_queries_and_path_tokens_never_500(stack: ApiStack) -> None:
    async with stack.client() as client:
        auth = await login(client, "admin")
        await client.post("/api/v1/device-types", json=THERMOSTAT, headers=auth)
        await client.post("/api/v1/devices", json={"token": "t-1", "device_type": "thermostat"}, headers=auth)

        queries: list[dict[str, str]] = [
            {"page": v} for v in ("0", "-1", "abc", "1.5", str(10**30), "", "1e3")
        ] + [{"page_size": v} for v in ("0", "1001", "100000", str(2**64), "x", "")]
        queries += [{"type": v} for v in ("bogus", "", "MEASUREMENT", "measurement,alert", "\u0000")]
        queries += [
            {key: v}
            for key in ("since", "until")
            for v in ("garbage", "-1", "1e30", str(10**40), "2024-02-30", "9999-12-31T23:59:59Z", "0", "")
        ]
        queries += [{"device": "x" * 10_000}, {"page": "2", "page_size": "1000"}]
        for path in QUERY_ENDPOINTS:
            for q in queries:
                r = await client.get(path, params=q, headers=auth)
                _check(r, f"GET {path} {q}")

        tokens = ["%00", "%2F", "..", "x" * 5000, "%F0%9F%92%A5", "a%20b", "'; DROP TABLE devices; --", "%ff"]
        for template in PATH_TEMPLATES:
            for token in tokens:
                path = template.format(x=token)
                method = "POST" if template.endswith(("commands", "release")) else "GET"
                r = await client.request(method, path, json={"command": "ping"}, headers=auth)
                _check(r, f"{method} {path[:80]}")
        for method in ("PUT", "DELETE", "PATCH"):
            _check(await client.request(method, "/api/v1/devices", headers=auth), method)
        _check(await client.get("/api/v1/nothing-here", headers=auth), "unknown route")
