import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "uplot/dist/uPlot.min.css";
import "leaflet/dist/leaflet.css";
import "./style.css";
import { get, getToken, onAuthChange, setToken } from "./api";
import { live, type LiveStatus } from "./live";
import { navigate, onLinkClick, useLocation } from "./router";
import { Login } from "./pages/Login";
import { FleetPage } from "./pages/Fleet";
import { DevicesPage } from "./pages/Devices";
import { DevicePage } from "./pages/Device";
import { AlertsPage } from "./pages/Alerts";
import { EdgesPage } from "./pages/Edges";

interface Me {
  user: string;
  tenant: string;
  role: string;
  instance_admin: boolean;
}

function LiveIndicator() {
  const [s, setS] = useState<{ status: LiveStatus; detail: string }>({ status: live.status, detail: live.detail });
  useEffect(() => live.onStatus((status, detail) => setS({ status, detail })), []);
  const label = { connecting: "connecting…", live: "live", reconnecting: "reconnecting", unavailable: "no live feed" }[s.status];
  return (
    <span class={`live live-${s.status}`} title={s.detail || label} data-testid="live-status">
      <span class="dot" aria-hidden="true" />
      {label}
    </span>
  );
}

const NAV: [string, string][] = [
  ["/", "Fleet"],
  ["/devices", "Devices"],
  ["/alerts", "Alerts"],
  ["/edges", "Edges"],
];

function Nav({ path, me }: { path: string; me: Me | null }) {
  const [open, setOpen] = useState(false);
  useEffect(() => setOpen(false), [path]);
  const active = (href: string) => (href === "/" ? path === "/" : path === href || path.startsWith(href + "/"));
  return (
    <header class="topbar">
      <a class="brand" href="/">
        fieldgate
      </a>
      <button type="button" class="menu-toggle" aria-expanded={open} aria-controls="nav-links" onClick={() => setOpen(!open)}>
        ☰ Menu
      </button>
      <nav id="nav-links" class={open ? "open" : ""} aria-label="Main">
        {NAV.map(([href, label]) => (
          <a key={href} href={href} class={active(href) ? "active" : ""} aria-current={active(href) ? "page" : undefined}>
            {label}
          </a>
        ))}
        <span class="spacer" />
        <LiveIndicator />
        {me && (
          <span class="who" title={`role ${me.role}`}>
            {me.user} @ {me.tenant}
          </span>
        )}
        <button type="button" class="logout" onClick={() => setToken(null)}>
          Log out
        </button>
      </nav>
    </header>
  );
}

function Route({ path, search, me }: { path: string; search: string; me: Me | null }) {
  if (path === "/" || path === "") return <FleetPage admin={me?.instance_admin ?? false} />;
  if (path === "/devices") return <DevicesPage query={search} />;
  const m = /^\/devices\/([^/]+)$/.exec(path);
  if (m) return <DevicePage token={decodeURIComponent(m[1])} />;
  if (path === "/alerts") return <AlertsPage />;
  if (path === "/edges") return <EdgesPage />;
  return (
    <main class="page">
      <h1>Not found</h1>
      <p>
        There is no page at <code>{path}</code>. <a href="/">Back to the fleet overview</a>
      </p>
    </main>
  );
}

function App() {
  const { path, search } = useLocation();
  const [token, setTok] = useState(getToken());
  const [me, setMe] = useState<Me | null>(null);
  useEffect(() => onAuthChange(() => setTok(getToken())), []);
  useEffect(() => {
    if (!token) {
      live.stop();
      setMe(null);
      // The whole address comes back after login, filters included (/devices?presence=missing).
      if (path !== "/login") navigate("/login?next=" + encodeURIComponent(path + search), { replace: true });
      return;
    }
    live.start();
    get<Me>("/api/v1/auth/me").then(setMe, () => setMe(null));
    return () => live.stop();
  }, [token]);
  useEffect(() => {
    if (token && path === "/login") {
      const next = new URLSearchParams(location.search).get("next");
      navigate(next && next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/login") ? next : "/", { replace: true });
    }
  }, [token, path]);
  if (!token || path === "/login") return <Login />;
  return (
    <div class="shell" onClick={onLinkClick}>
      <Nav path={path} me={me} />
      <Route path={path} search={search} me={me} />
    </div>
  );
}

render(<App />, document.getElementById("app")!);
