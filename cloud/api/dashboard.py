"""A one-page dashboard at ``/``: log in, see the tenant's devices and their latest events.

It is a static HTML page with a little inline JavaScript that calls the same REST API as any
other client (token from the login form, kept in sessionStorage), so it needs no build step and
grants nothing the API does not. All text from the API is inserted with ``textContent``, never
as HTML, so a device that names itself ``<script>`` cannot run code in the page.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fieldgate</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
 table{border-collapse:collapse;margin-top:1rem;width:100%}
 td,th{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}
 code{font-size:.85rem} #err{color:#b00} .muted{color:#777}
</style></head>
<body>
<h1>fieldgate</h1>
<form id="login">
 <input name="username" placeholder="user" value="admin" autocomplete="username">
 <input name="password" type="password" placeholder="password" autocomplete="current-password">
 <button>Log in</button> <span class="muted">API docs: <a href="/docs">/docs</a></span>
</form>
<p id="err"></p>
<div id="main" hidden>
 <button id="refresh">Refresh</button> <button id="logout">Log out</button>
 <table><thead><tr><th>device</th><th>type</th><th>latest events</th></tr></thead>
 <tbody id="devices"></tbody></table>
</div>
<script>
const $ = (id) => document.getElementById(id);
const el = (tag, text) => {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  return e;
};
let token = sessionStorage.getItem("fieldgate-token");

async function api(path) {
  const r = await fetch(path, {headers: {Authorization: "Bearer " + token}});
  if (r.status === 401) { logout(); throw new Error("session expired, log in again"); }
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function describe(ev) {
  switch (ev.type) {
    case "measurement": return Object.entries(ev.values).map(([k, v]) => k + "=" + v).join(" ");
    case "location": return ev.lat + ", " + ev.lon + " (" + ev.ele + " m)";
    case "alert": return ev.level + " " + ev.alert_type + ": " + ev.message;
    case "command_invocation": return ev.command + " " + JSON.stringify(ev.params);
    case "command_response": return "response " + JSON.stringify(ev.response);
    case "state_change": return ev.kind + " " + ev.previous + " -> " + ev.current;
    default: return "";
  }
}

async function load() {
  $("err").textContent = "";
  try {
    const devices = await api("/api/v1/devices?page_size=100");
    const body = $("devices");
    body.replaceChildren();
    for (const d of devices.items) {
      const events = await api("/api/v1/devices/" + encodeURIComponent(d.token) + "/events?page_size=5");
      const tr = el("tr");
      tr.append(el("td", d.token), el("td", d.device_type));
      const cell = el("td");
      if (events.items.length === 0) cell.append(el("span", "no events"));
      for (const ev of events.items) {
        const line = el("div");
        line.append(el("code", ev.event_time + " " + ev.type + " "), el("span", describe(ev)));
        cell.append(line);
      }
      tr.append(cell);
      body.append(tr);
    }
    if (devices.total > devices.items.length)
      body.append(el("tr", "... " + devices.total + " devices in all"));
  } catch (e) { $("err").textContent = e.message; }
}

function show() { $("main").hidden = !token; $("login").hidden = !!token; if (token) load(); }
function logout() { token = null; sessionStorage.removeItem("fieldgate-token"); show(); }

$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new URLSearchParams(new FormData(ev.target));
  const r = await fetch("/api/v1/auth/token", {method: "POST", body: form});
  const j = await r.json();
  if (!r.ok) { $("err").textContent = j.detail; return; }
  token = j.access_token; sessionStorage.setItem("fieldgate-token", token); show();
});
$("refresh").addEventListener("click", load);
$("logout").addEventListener("click", logout);
show();
</script>
</body></html>
"""


def dashboard_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(PAGE)

    return router
