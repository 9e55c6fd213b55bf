"""The dashboard in a real browser: Debian's Chromium driven by Playwright for Python (no browser
download: the system /usr/bin/chromium), against the whole suite in this process (embedded
broker, edge agent, a simulated MQTT device).

A person's walk through it: log in through the form, see the fleet's figures (a device-sent
alert counted as raised; a measurement with float noise shown as ``20.9 °C``), follow the
"missing" figure to the device list filtered by ``?presence=missing`` (and the filters kept in the
address on reload and back/forward), see a device's values with their units on its page and in
the chart's tooltip, see the simulated device in the list, open its page and watch its chart grow
from live events (no reload), send ``ping`` from the command form and see it answered (JSON that
wraps between words, never inside one; a long one behind a "more" toggle), look at the alerts and
edges pages, stop the simulated device and see its page say it is offline or missing. Along the
way: no console error or CSP violation, the Content-Security-Policy header on ``/``, the bearer
token in no request URL, and a device whose name is HTML shown as text. Screenshots of each page go to a temporary directory, or to the
directory $FIELDGATE_SCREENSHOTS names: ``FIELDGATE_SCREENSHOTS=docs/images`` refreshes the
committed ones the docs and the README show (docs/dashboard.md)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldgate.suite import Suite, SuiteOptions
from tests.e2e.conftest import login
from tests.e2e.test_end_to_end import publish_once
from tests.helpers.waiting import eventually, not_yet

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

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
PASSWORD = "browser-secret-pw"
SIM = "sim-0001"  # the suite's first simulated device (fieldgate.sims.device.device_tokens)
METER = "meter-1"  # a device that speaks once (then goes missing), with float noise and units
METER_VALUES = {"temperature": 20.900000000000002, "voltage": 231.53497314453125}
METER_UNITS = {"unit.temperature": "°C", "unit.voltage": "V"}
LONG_NOTE = "calibrate the sensor at the start of every shift and write the result into the site log"
XSS_NAME = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
TIMEOUT_MS = 30_000

if not CHROMIUM.exists():
    pytest.skip(
        "needs Debian's chromium at /usr/bin/chromium (scripts/setup.sh installs it)", allow_module_level=True
    )
playwright_api = pytest.importorskip("playwright.async_api", reason="needs playwright (the [test] extra)")


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the screenshots go: the directory $FIELDGATE_SCREENSHOTS names, else this test's
    temporary directory (a test run leaves the work tree as it found it)."""
    named = os.environ.get("FIELDGATE_SCREENSHOTS")
    return Path(named) if named else tmp_path / "screenshots"


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    opts = SuiteOptions(data_dir=tmp_path / "fg", admin_password=PASSWORD, sims=1, sim_rate_hz=2.0)
    async with Suite(opts) as s:
        yield s


async def _prepare(suite: Suite, api: httpx.AsyncClient) -> None:
    """A short presence interval (the stopped sim goes missing in seconds), locations and a
    device-sent alert for the sim, a device whose name is HTML, and a meter with a command
    waiting whose parameters are long JSON."""
    r = await api.post(
        "/api/v1/devices",
        json={
            "token": "html-name-1",
            "device_type": "default",
            "comments": "HTML in its name",
            "metadata": {"name": XSS_NAME},
        },
    )
    assert r.status_code == 201, r.text
    r = await api.post(
        "/api/v1/device-types",
        json={
            "token": "meter",
            "name": "Meter",
            "commands": [{"name": "configure", "params": [{"name": "note", "type": "string"}]}],
        },
    )
    assert r.status_code == 201, r.text
    r = await api.put("/api/v1/presence-intervals", json={"default": 4, "meter": 4})
    assert r.status_code == 200, r.text
    r = await api.post("/api/v1/devices", json={"token": METER, "device_type": "meter"})
    assert r.status_code == 201, r.text
    r = await api.post(
        f"/api/v1/devices/{METER}/commands",
        json={"command": "configure", "params": {"note": LONG_NOTE}, "ttl_s": 3600},
    )
    assert r.status_code == 201, r.text
    topic = f"fieldgate/default/devices/{SIM}/events"
    batch: list[dict[str, Any]] = [
        {"type": "location", "lat": 52.5200 + i * 0.0008, "lon": 13.4050 + i * 0.0011, "ele": 34.0}
        for i in range(6)
    ]
    batch.append(
        {"type": "alert", "alert_type": "door-open", "level": "warning", "message": "cabinet door open"}
    )
    await asyncio.to_thread(publish_once, suite.mqtt_port, topic, batch)


# The words of the text in the elements that `selector` matches that are laid out on more than one
# line: a word split mid-way (word-break: break-all did that to JSON).
SPLIT_WORDS_JS = """(selector) => {
  const split = [];
  for (const el of document.querySelectorAll(selector)) {
    const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
      for (const m of n.data.matchAll(/\\S+/g)) {
        const r = document.createRange();
        r.setStart(n, m.index);
        r.setEnd(n, m.index + m[0].length);
        const tops = new Set([...r.getClientRects()].filter((b) => b.width > 0).map((b) => Math.round(b.top)));
        if (tops.size > 1) split.push(m[0]);
      }
    }
  }
  return split;
}"""


async def _wait_json(api: httpx.AsyncClient, path: str, ok: Any, what: str, timeout: float = 30) -> Any:
    async def probe() -> Any:
        r = await api.get(path)
        if r.status_code == 200 and ok(r.json()):
            return r.json()
        return not_yet(f"{r.status_code} {r.text[:300]}")

    return await eventually(probe, timeout, what)


async def test_dashboard_in_chromium(suite: Suite, shots: Path) -> None:
    from playwright.async_api import ConsoleMessage, Request, async_playwright, expect

    api = await login(suite.rest_url, PASSWORD)
    try:
        await _prepare(suite, api)
        await _wait_json(
            api, f"/api/v1/devices/{SIM}/state", lambda s: s["location"] is not None, "sim state"
        )
    finally:
        await api.aclose()
    base = suite.rest_url
    await asyncio.to_thread(shots.mkdir, parents=True, exist_ok=True)
    console_errors: list[str] = []
    urls: list[str] = []
    failed: list[str] = []

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = await browser.new_context(
            viewport={"width": 1280, "height": 800}, locale="en-GB", timezone_id="UTC"
        )
        # CSP violations are reported to the page; collect them where the test can read them.
        await context.add_init_script(
            "window.__csp = [];"
            "document.addEventListener('securitypolicyviolation', e =>"
            " window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        nav = page.get_by_role("navigation", name="Main")
        expect.set_options(timeout=TIMEOUT_MS)

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                console_errors.append(msg.text)

        def on_request(req: Request) -> None:
            urls.append(req.url)

        page.on("console", on_console)
        page.on("pageerror", lambda err: console_errors.append(f"page error: {err}"))
        page.on("request", on_request)
        page.on(
            "response",
            lambda r: failed.append(f"{r.status} {r.request.method} {r.url}") if r.status >= 400 else None,
        )
        try:
            # The page and its headers.
            response = await page.goto(base + "/")
            assert response is not None and response.status == 200
            csp = response.headers.get("content-security-policy", "")
            assert "script-src 'self'" in csp and "style-src 'self'" in csp, csp
            assert "unsafe-inline" not in csp, csp
            assert response.headers.get("x-content-type-options") == "nosniff"

            # Log in through the form (401 → back here, so a wrong password shows the message).
            await expect(page).to_have_url(re.compile(r"/login"))
            await page.get_by_label("User").fill("admin")
            await page.get_by_label("Password").fill("wrong-password")
            await page.get_by_role("button", name="Log in").click()
            await expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Log in").click()
            await expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
            await expect(page.get_by_test_id("live-status")).to_have_text("live")

            # Fleet overview.
            await expect(page.get_by_test_id("fleet-online").locator(".value")).not_to_have_text("0")
            await expect(page.get_by_test_id("fleet-edges").locator(".value")).to_have_text("1")
            await expect(page.get_by_test_id("recent-events").locator("tbody tr").first).to_be_visible()
            await expect(page.get_by_test_id("fleet-tenants")).to_contain_text("default")
            # The sim's door-open alert was sent by the device itself: it counts as raised.
            await expect(page.get_by_test_id("fleet-alerts").locator(".value")).to_have_text("1")
            # A measurement with float noise and units arrives live: plain numbers, with units.
            meter = {"type": "measurement", "values": METER_VALUES, "metadata": METER_UNITS}
            await asyncio.to_thread(
                publish_once, suite.mqtt_port, f"fieldgate/default/devices/{METER}/events", [meter]
            )
            recent = page.get_by_test_id("recent-events")
            await expect(recent).to_contain_text("temperature = 20.9 °C")
            await expect(recent).to_contain_text("voltage = 231.5 V")
            assert "20.900000000000002" not in await recent.inner_text()
            # The meter says nothing more: missing after the 4 s presence interval.
            await expect(page.get_by_test_id("fleet-missing").locator(".value")).to_have_text("1")
            await page.screenshot(path=shots / "dashboard-fleet.png")

            # The "missing" figure links to /devices?presence=missing, and the list honours it.
            await page.get_by_test_id("fleet-missing").click()
            await expect(page).to_have_url(base + "/devices?presence=missing")
            await expect(page.get_by_label("State")).to_have_value("missing")
            meter_row = page.locator(f"tr[data-device='{METER}']")
            await expect(meter_row).to_be_visible()
            await expect(meter_row.get_by_test_id("state-badge")).to_have_text("missing")
            await expect(page.locator(f"tr[data-device='{SIM}']")).to_have_count(0)
            await expect(page.locator("[data-testid='device-table'] tbody tr")).to_have_count(1)
            # ... also when the address is opened as it is (a bookmark, a link from elsewhere).
            await page.goto(base + "/devices?presence=online")
            await expect(page.get_by_label("State")).to_have_value("online")
            await expect(page.locator(f"tr[data-device='{SIM}']")).to_be_visible()
            await expect(meter_row).to_have_count(0)
            # A filter chosen on the page goes into the address; back and forward follow it.
            await page.get_by_label("State").select_option("missing")
            await expect(page).to_have_url(base + "/devices?presence=missing")
            await expect(meter_row).to_be_visible()
            await page.go_back()
            await expect(page).to_have_url(base + "/devices?presence=online")
            await expect(page.get_by_label("State")).to_have_value("online")
            await expect(meter_row).to_have_count(0)
            await page.go_forward()
            await expect(page.get_by_label("State")).to_have_value("missing")
            await expect(meter_row).to_be_visible()
            # The other filters are read from the address the same way.
            await page.goto(base + "/devices?device_type=meter&search=METER")
            await expect(page.get_by_label("Type")).to_have_value("meter")
            await expect(page.get_by_test_id("device-search")).to_have_value("METER")
            await expect(meter_row).to_be_visible()
            await expect(page.locator("[data-testid='device-table'] tbody tr")).to_have_count(1)

            # The meter's page: values with sensible precision and their units, in the chart too.
            await meter_row.get_by_role("link", name=METER).click()
            await expect(page).to_have_url(f"{base}/devices/{METER}")
            temp = page.locator("[data-measurement='temperature']")
            await expect(temp.get_by_test_id("chart-title")).to_have_text("temperature (°C)")
            await expect(temp.get_by_test_id("last-value")).to_have_text("20.9 °C")
            volt = page.locator("[data-measurement='voltage']")
            await expect(volt.get_by_test_id("last-value")).to_have_text("231.5 V")
            await expect(temp.get_by_test_id("point-count")).to_have_text("1")
            await temp.locator(".u-over").hover()
            await expect(temp.get_by_test_id("chart-tip")).to_contain_text("20.9 °C")
            assert "20.900000000000002" not in await page.locator("main").inner_text()
            # Long JSON: its start, and all of it indented behind a toggle; no word cut in two.
            params = page.locator("tr[data-command='configure']").get_by_test_id("invocation-params")
            await expect(params.locator("summary")).to_contain_text('{"note": "calibrate the sensor')
            await expect(params.locator("summary")).to_contain_text("…")
            await expect(params.locator("pre")).to_be_hidden()
            await params.locator("summary").click()
            await expect(params.locator("pre")).to_have_text('{\n  "note": "' + LONG_NOTE + '"\n}')
            for width in (1280, 390):
                await page.set_viewport_size({"width": width, "height": 800})
                split = await page.evaluate(SPLIT_WORDS_JS, "[data-testid='invocations'] .json")
                assert split == [], f"JSON words cut in two at {width}px: {split}"
            await page.set_viewport_size({"width": 1280, "height": 800})

            # The device list: the simulated device appears; the HTML name is text.
            await nav.get_by_role("link", name="Devices", exact=True).click()
            await expect(page).to_have_url(base + "/devices")
            sim_row = page.locator(f"tr[data-device='{SIM}']")
            await expect(sim_row).to_be_visible()
            await expect(sim_row.get_by_test_id("state-badge")).to_have_text("online")
            html_row = page.locator("tr[data-device='html-name-1']")
            await expect(html_row.locator(".device-name")).to_have_text(XSS_NAME)
            assert await page.locator("table img, table script").count() == 0
            await page.get_by_test_id("device-search").fill("sim-")
            await expect(page).to_have_url(base + "/devices?search=sim-")
            await expect(html_row).to_have_count(0)
            await expect(sim_row).to_be_visible()
            await page.get_by_test_id("device-search").fill("")
            await expect(page).to_have_url(base + "/devices")
            await expect(html_row).to_be_visible()
            await page.get_by_label("State").select_option("online")
            await expect(page).to_have_url(base + "/devices?presence=online")
            await expect(html_row).to_have_count(0)
            await expect(sim_row).to_be_visible()
            await page.get_by_label("State").select_option("")
            await expect(html_row).to_be_visible()
            await page.get_by_role("heading", name="Devices").click()  # no focus ring in the picture
            await page.screenshot(path=shots / "dashboard-devices.png")

            # The device page: the chart grows from live events, without a reload.
            await sim_row.get_by_role("link", name=SIM).click()
            await expect(page).to_have_url(f"{base}/devices/{SIM}")
            await page.evaluate("window.__same_page = true")
            chart = page.locator("[data-measurement='temperature']")
            count = chart.get_by_test_id("point-count")
            await expect(count).not_to_have_text("0")
            first = int(await count.inner_text())
            first_value = await chart.get_by_test_id("last-value").inner_text()
            # The sim sends its units (unit.temperature) and readings rounded to 2 decimals.
            assert re.fullmatch(r"-?\d+(\.\d{1,2})? °C", first_value), first_value
            await expect(chart.get_by_test_id("chart-title")).to_have_text("temperature (°C)")
            await page.wait_for_function(
                "([sel, n]) => Number(document.querySelector(sel)?.textContent) >= n",
                arg=["[data-measurement='temperature'] [data-testid='point-count']", first + 3],
            )
            assert await page.evaluate("window.__same_page") is True, "the page reloaded"
            assert await chart.locator("canvas").count() == 1
            print("chart points", first, "->", await count.inner_text(), "last value", first_value)
            await page.get_by_role("button", name="1 h").click()
            await expect(count).not_to_have_text("0")
            await page.get_by_role("button", name="15 min").click()
            await expect(
                page.get_by_test_id("device-map").locator("path.leaflet-interactive").first
            ).to_be_visible()
            await expect(page.get_by_test_id("qr-label")).to_be_visible()
            assert (await page.get_by_test_id("qr-label").get_attribute("src") or "").startswith("blob:")
            await expect(page.get_by_test_id("device-alerts")).to_contain_text("cabinet door open")

            # Send ping from the form and see it answered in the history (live `invocation`s).
            form = page.get_by_test_id("command-form")
            await form.get_by_label("Command").select_option("ping")
            await form.get_by_role("button", name="Send").click()
            await expect(page.get_by_test_id("command-result")).to_contain_text("Sent ping")
            ping = page.locator("tr[data-command='ping']").first
            await expect(ping.get_by_test_id("invocation-status")).to_have_text("answered")
            await expect(ping.get_by_test_id("invocation-response")).to_have_text('{"pong": true}')
            # A command with a typed parameter, from the form built from the device type.
            await form.get_by_label("Command").select_option("set-interval")
            await form.get_by_label(re.compile(r"^seconds")).fill("1")
            await form.get_by_role("button", name="Send").click()
            await expect(page.get_by_test_id("command-result")).to_contain_text("Sent set-interval")
            interval = page.locator("tr[data-command='set-interval']").first
            await expect(interval.get_by_test_id("invocation-status")).to_have_text("answered")
            await expect(interval.get_by_test_id("invocation-response")).to_have_text('{"interval_s": 1}')
            await expect(interval.get_by_test_id("invocation-params")).to_have_text('{"seconds": 1}')
            await page.evaluate("window.scrollTo(0, 0)")
            await page.screenshot(path=shots / "dashboard-device.png", full_page=True)

            # Phone-sized: the nav collapses behind a menu button, the device list stacks.
            await page.set_viewport_size({"width": 390, "height": 844})
            await expect(page.get_by_role("button", name=re.compile("Menu"))).to_be_visible()
            await expect(nav.get_by_role("link", name="Alerts", exact=True)).to_be_hidden()
            await page.screenshot(path=shots / "dashboard-phone-device.png")
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the phone layout of the device page scrolls sideways ({width}px)"
            await page.get_by_role("button", name=re.compile("Menu")).click()
            await nav.get_by_role("link", name="Devices", exact=True).click()
            await expect(page.locator(f"tr[data-device='{SIM}']")).to_be_visible()
            await page.screenshot(path=shots / "dashboard-phone.png")
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the phone layout scrolls sideways ({width}px)"
            await page.set_viewport_size({"width": 1280, "height": 800})

            # Alerts and edges.
            await nav.get_by_role("link", name="Alerts", exact=True).click()
            alerts = page.get_by_test_id("alerts-table")
            await expect(alerts).to_contain_text("door-open")
            await expect(alerts).to_contain_text(SIM)
            await page.screenshot(path=shots / "dashboard-alerts.png")
            await nav.get_by_role("link", name="Edges", exact=True).click()
            edge = page.locator(f"tr[data-edge='{suite.options.edge_id}']")
            await expect(edge).to_contain_text("connected")
            await page.screenshot(path=shots / "dashboard-edges.png")

            # Stop the simulated device: its page says so, live (no reload).
            await page.goto(f"{base}/devices/{SIM}")
            await expect(page.get_by_test_id("device-health")).to_have_text("online")
            await page.evaluate("window.__same_page = true")
            assert suite.sim is not None
            await suite.sim.stop()
            suite.sim = None
            await expect(page.get_by_test_id("device-health")).to_have_text(re.compile("offline|missing"))
            assert await page.evaluate("window.__same_page") is True

            # Nothing went wrong along the way.
            token = await page.evaluate("sessionStorage.getItem('fieldgate-token')")
            assert token and len(token) > 16
            leaked = [u for u in urls if token in u]
            assert not leaked, f"the token is in request URLs: {leaked[:3]}"
            assert await page.evaluate("window.__xss") is None, "the HTML name ran as HTML"
            violations = await page.evaluate("window.__csp")
            assert violations == [], f"CSP violations: {violations}"
            # The one failure on purpose: the wrong password (Chromium logs the 401 of the login POST).
            assert [f for f in failed if "/api/v1/auth/token" not in f] == [], failed
            unexpected = [e for e in console_errors if "status of 401" not in e]
            assert unexpected == [] and len(console_errors) <= 1, "console errors:\n" + "\n".join(
                console_errors
            )

            # Logging out clears the token and goes back to the form.
            await page.get_by_role("button", name="Log out").click()
            await expect(page.get_by_role("button", name="Log in")).to_be_visible()
            assert await page.evaluate("sessionStorage.getItem('fieldgate-token')") is None
        except BaseException:
            await page.screenshot(path=Path(os.environ.get("TMPDIR", "/tmp")) / "dashboard-failure.png")
            print("console:", json.dumps(console_errors, indent=1))
            print("failed responses:", json.dumps(failed, indent=1))
            raise
        finally:
            await context.close()
            await browser.close()
