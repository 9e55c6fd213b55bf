"""/docs and /redoc in a real browser with no internet: Debian's Chromium driven by Playwright,
every request to a host other than 127.0.0.1 blocked (and recorded), against the REST API served
by uvicorn in this process.

Swagger UI must render every operation of the OpenAPI document, log in ("Authorize", the OAuth2
password flow) and run an operation with the token ("Try it out" → Execute → the answer shown); ReDoc must render every operation too; neither may ask for anything
from another host, violate its Content-Security-Policy or log an error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn

from tests.helpers.api_stack import USERS, api_stack
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.integration]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

if not CHROMIUM.exists():
    pytest.skip(
        "needs Debian's chromium at /usr/bin/chromium (scripts/setup.sh installs it)", allow_module_level=True
    )
pytest.importorskip("playwright.async_api", reason="needs playwright (the [test] extra)")


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the test process owns them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@pytest.fixture
async def base_url(tmp_path: Path) -> AsyncIterator[str]:
    async with api_stack(tmp_path) as stack:
        server = _Server(
            uvicorn.Config(
                stack.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False
            )
        )
        task = asyncio.create_task(server.serve())

        async def started() -> bool:
            if task.done():
                task.result()
            return server.started

        await eventually(started, what="uvicorn started")
        port = int(server.servers[0].sockets[0].getsockname()[1])
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)


def operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m, path) for path, item in spec["paths"].items() for m in item if m in METHODS]


async def test_swagger_ui_and_redoc_render_without_internet(base_url: str) -> None:
    from playwright.async_api import ConsoleMessage, Route, async_playwright, expect

    blocked: list[str] = []
    errors: list[str] = []
    failed: list[str] = []

    async def only_this_machine(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort("internetdisconnected")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            await context.route("**/*", only_this_machine)
            await context.add_init_script(
                "window.__csp = [];"
                "document.addEventListener('securitypolicyviolation', e =>"
                " window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
            )
            page = await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)

            def on_console(msg: ConsoleMessage) -> None:
                if msg.type == "error":
                    errors.append(msg.text)

            page.on("console", on_console)
            page.on("pageerror", lambda err: errors.append(f"page error: {err}"))
            page.on(
                "response",
                lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            spec = await (await page.request.get(base_url + "/openapi.json")).json()
            ops = operations(spec)
            assert len(ops) > 50

            # Swagger UI: one block per operation, and one of them run from the page.
            response = await page.goto(base_url + "/docs")
            assert response is not None and response.status == 200
            await expect(page.locator(".opblock")).to_have_count(len(ops))
            assert "script-src 'self' 'sha256-" in response.headers["content-security-policy"]
            await expect(page.locator(".info .title")).to_contain_text("fieldgate")
            # Authorize (the OAuth2 password flow: a POST to the token URL, this origin) ...
            await page.locator(".auth-wrapper .authorize").click()
            dialog = page.locator(".modal-ux")
            await dialog.locator("#oauth_username").fill("admin")
            await dialog.locator("#oauth_password").fill(USERS["admin"][0])
            await dialog.get_by_role("button", name="Apply given OAuth2 credentials").click()
            await expect(dialog.get_by_role("button", name="Remove authorization")).to_be_visible()
            await dialog.locator(".btn-done").click()
            # ... then run GET /api/v1/auth/me with the token it got.
            me = page.locator("#operations-auth-me_api_v1_auth_me_get")
            await me.locator(".opblock-summary").click()
            await me.get_by_role("button", name="Try it out").click()
            await me.get_by_role("button", name="Execute").click()
            await expect(me.locator(".live-responses-table tbody .response-col_status")).to_have_text("200")
            await expect(me.locator(".live-responses-table .highlight-code")).to_contain_text('"admin"')
            assert await page.evaluate("window.__csp") == []

            # ReDoc: every operation in the middle panel.
            response = await page.goto(base_url + "/redoc")
            assert response is not None and response.status == 200
            operation = page.locator("[data-section-id^='operation/']")
            await expect(operation).to_have_count(len(ops))
            await expect(operation.first).to_contain_text("/api/v1/auth/token")
            # ReDoc 2 shows its maker's logo from its CDN, hard-coded (no option turns it off) and
            # hidden again when it fails to load: the policy refuses it, so nothing is asked.
            await expect(page.get_by_role("link", name="API docs by Redocly")).to_be_visible()
            assert await page.evaluate("window.__csp") == [f"img-src {REDOC_LOGO}"]
            assert await page.get_by_alt_text("redocly logo").count() == 0
        finally:
            await browser.close()

    assert blocked == [], f"asked another host for: {blocked}"
    assert failed == [], failed
    # Chromium logs each refusal of the policy as an error: the logo's is the one expected.
    assert [e for e in errors if REDOC_LOGO not in e] == [], errors
