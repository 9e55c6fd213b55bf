// The REST client of the dashboard: every call carries the bearer token in the Authorization
// header (never in a URL). A 401 anywhere ends the session and sends the user back to login.

const TOKEN_KEY = "fieldgate-token";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

type Listener = () => void;
const authListeners = new Set<Listener>();

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string | null): void {
  if (token === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, token);
  for (const l of authListeners) l();
}

export function onAuthChange(l: Listener): () => void {
  authListeners.add(l);
  return () => authListeners.delete(l);
}

function detailOf(body: unknown, fallback: string): string {
  if (body && typeof body === "object" && "detail" in body) {
    const d = (body as { detail: unknown }).detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) {
      return d
        .map((e) => {
          if (e && typeof e === "object") {
            const loc = Array.isArray(e.loc) ? e.loc.filter((x: unknown) => x !== "body").join(".") : "";
            return (loc ? loc + ": " : "") + String(e.msg ?? JSON.stringify(e));
          }
          return String(e);
        })
        .join("; ");
    }
    return JSON.stringify(d);
  }
  return fallback;
}

export async function request(path: string, init: RequestInit = {}): Promise<Response> {
  const token = getToken();
  const headers = new Headers(init.headers);
  if (token) headers.set("Authorization", "Bearer " + token);
  const r = await fetch(path, { ...init, headers });
  if (r.status === 401) {
    setToken(null);
    throw new ApiError(401, "Your session has ended: log in again.");
  }
  if (!r.ok) {
    let body: unknown = null;
    try {
      body = await r.json();
    } catch {
      /* not JSON */
    }
    throw new ApiError(r.status, detailOf(body, `${r.status} ${r.statusText}`));
  }
  return r;
}

export async function get<T>(path: string, params?: Record<string, string | number | undefined | null>): Promise<T> {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params ?? {})) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const qs = q.toString();
  const r = await request(qs ? `${path}?${qs}` : path);
  return (await r.json()) as T;
}

export async function post<T>(path: string, body: unknown): Promise<T> {
  const r = await request(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return (await r.json()) as T;
}

export async function login(username: string, password: string): Promise<void> {
  const form = new URLSearchParams({ username, password });
  const r = await fetch("/api/v1/auth/token", {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: form.toString(),
  });
  if (!r.ok) {
    let body: unknown = null;
    try {
      body = await r.json();
    } catch {
      /* not JSON */
    }
    throw new ApiError(r.status, r.status === 401 ? "Wrong user name or password." : detailOf(body, `login failed: ${r.status}`));
  }
  const tok = (await r.json()) as { access_token: string };
  setToken(tok.access_token);
}

/** A message for a failed call, naming a route the server does not have yet. */
export function describeError(err: unknown, what: string): string {
  if (err instanceof ApiError) {
    if (err.status === 404 && /^Not Found$/i.test(err.message)) return `${what}: this server has no such route yet (404).`;
    return `${what}: ${err.message}`;
  }
  return `${what}: ${err instanceof Error ? err.message : String(err)}`;
}

export const enc = encodeURIComponent;
