"""/docs (Swagger UI) and /redoc (ReDoc) are served from the package: every script, stylesheet
and icon the pages name is a path of this app, answered with the vendored file and the right
content type, and their Content-Security-Policy allows no other origin. (In a browser with the
internet blocked: tests/browser/test_api_docs.py.)"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from fieldgate.cloud.api.rest.api_docs import DOCS_STATIC_DIR
from tests.helpers.api_stack import api_stack

PAGES = ("/docs", "/redoc", "/docs/oauth2-redirect")
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class _References(HTMLParser):
    """The URLs a page makes the browser load (src and href of script, link, img), and the
    text of its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_inline = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for attr in ("src", "href", "spec-url"):
            if values.get(attr):
                self.urls.append(str(values[attr]))
        self._in_inline = tag == "script" and "src" not in values
        if self._in_inline:
            self.inline.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_inline = False

    def handle_data(self, data: str) -> None:
        if self._in_inline:
            self.inline[-1] += data


def references(html: str) -> _References:
    parser = _References()
    parser.feed(html)
    return parser


def directives(csp: str) -> dict[str, list[str]]:
    out = {}
    for part in csp.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with api_stack(tmp_path) as stack, stack.client() as c:
        yield c


async def test_every_file_the_pages_name_is_served_by_the_app(client: httpx.AsyncClient) -> None:
    served = set()
    for page in PAGES:
        r = await client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
        # No CDN, no fonts service: nothing but paths of this app.
        assert not re.search(r"(?:https?:)?//[\w.-]+\.\w", r.text), page
        for url in references(r.text).urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page} names {url}"
            served.add(url)
    assert "/openapi.json" in served
    assets = sorted(u for u in served if u.startswith("/docs/static/"))
    assert {Path(u).name for u in assets} == {
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "favicon-32x32.png",
        "redoc.standalone.js",
    }
    for url in assets:
        r = await client.get(url)
        assert r.status_code == 200, url
        assert r.headers["content-type"].split(";")[0] == CONTENT_TYPES[Path(url).suffix], url
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.content == (DOCS_STATIC_DIR / url.removeprefix("/docs/static/")).read_bytes()
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "fieldgate"


async def test_the_pages_policy_allows_only_this_origin_and_their_own_inline_scripts(
    client: httpx.AsyncClient,
) -> None:
    for page in PAGES:
        r = await client.get(page)
        csp = directives(r.headers["content-security-policy"])
        assert csp["default-src"] == ["'none'"], page
        for name, values in csp.items():
            for value in values:
                assert value.startswith("'") or value in ("data:", "blob:"), f"{page}: {name} {value}"
        assert "'unsafe-inline'" not in csp["script-src"] and "'unsafe-eval'" not in csp["script-src"]
        # Exactly the page's own inline scripts may run (by hash); everything else from here.
        hashes = {
            f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
            for s in references(r.text).inline
        }
        assert set(csp["script-src"]) == {"'self'", *hashes}, page
        assert csp["connect-src"] == ["'self'"] and csp["frame-ancestors"] == ["'none'"]
    assert len(references((await client.get("/docs")).text).inline) == 1  # Swagger UI's set-up


async def test_swagger_ui_sends_the_document_to_no_validator(client: httpx.AsyncClient) -> None:
    assert '"validatorUrl": null' in (await client.get("/docs")).text


async def test_only_the_vendored_files_are_served(client: httpx.AsyncClient) -> None:
    for path in (
        "/docs/static/",
        "/docs/static/nope.js",
        "/docs/static/%2e%2e/api_docs.py",
        "/docs/static/..%2f..%2fapp.py",
        "/docs/static/swagger-ui/%2e%2e/%2e%2e/dashboard/index.html",
    ):
        r = await client.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/json"), path
    spec = (await client.get("/openapi.json")).json()
    assert not [p for p in spec["paths"] if p.startswith(("/docs", "/redoc"))]


async def test_under_a_path_prefix_every_url_keeps_it(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as stack:
        transport = httpx.ASGITransport(app=stack.app, root_path="/fieldgate")
        async with httpx.AsyncClient(transport=transport, base_url="http://fieldgate.test") as c:
            for page in ("/docs", "/redoc"):
                r = await c.get(page)
                assert r.status_code == 200, page
                urls = references(r.text).urls
                assert urls and all(u.startswith("/fieldgate/") for u in urls), urls


def test_the_vendored_files_are_those_the_readme_names() -> None:
    """static/docs/README.md records where each file comes from; its hashes must be the files'."""
    readme = (DOCS_STATIC_DIR / "README.md").read_text()
    listed = dict(
        (name, digest) for digest, name in re.findall(r"^ {4}([0-9a-f]{64})  (\S+)$", readme, re.MULTILINE)
    )
    assert set(listed) == {
        "swagger-ui/swagger-ui-bundle.js",
        "swagger-ui/swagger-ui.css",
        "swagger-ui/favicon-32x32.png",
        "redoc/redoc.standalone.js",
    }
    for name, digest in listed.items():
        assert hashlib.sha256((DOCS_STATIC_DIR / name).read_bytes()).hexdigest() == digest, name
    # The licences travel with the files (Apache-2.0 asks for its NOTICE too).
    for name in ("swagger-ui/LICENSE", "swagger-ui/NOTICE", "redoc/LICENSE"):
        assert (DOCS_STATIC_DIR / name).stat().st_size > 0, name
