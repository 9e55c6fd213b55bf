// The live feed: GET /api/v1/live (Server-Sent Events) read with fetch (so the bearer token goes
// in the Authorization header, never in the URL), reconnecting with exponential backoff.
// One stream per logged-in tab; pages subscribe to the messages they care about.
import { EventStreamContentType, fetchEventSource } from "@microsoft/fetch-event-source";
import { getToken, setToken } from "./api";
import type { DeviceEvent, Invocation } from "./types";

export type LiveStatus = "connecting" | "live" | "reconnecting" | "unavailable";

export type LiveMessage =
  | { kind: "event"; data: DeviceEvent }
  | { kind: "invocation"; data: Invocation }
  | { kind: "dropped"; data: { dropped: number } }
  | { kind: "hello"; data: { tenant: string; queue: number } };

type Handler = (m: LiveMessage) => void;
type StatusHandler = (s: LiveStatus, detail: string) => void;

class Fatal extends Error {}

const MIN_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 30000;

class LiveFeed {
  private handlers = new Set<Handler>();
  private statusHandlers = new Set<StatusHandler>();
  private abort: AbortController | null = null;
  status: LiveStatus = "connecting";
  detail = "";
  received = 0;

  subscribe(h: Handler): () => void {
    this.handlers.add(h);
    return () => this.handlers.delete(h);
  }

  onStatus(h: StatusHandler): () => void {
    this.statusHandlers.add(h);
    h(this.status, this.detail);
    return () => this.statusHandlers.delete(h);
  }

  private setStatus(s: LiveStatus, detail = ""): void {
    this.status = s;
    this.detail = detail;
    for (const h of this.statusHandlers) h(s, detail);
  }

  start(): void {
    this.stop();
    const token = getToken();
    if (!token) return;
    const ctrl = new AbortController();
    this.abort = ctrl;
    let backoff = MIN_BACKOFF_MS;
    this.setStatus("connecting");
    fetchEventSource("/api/v1/live", {
      headers: { Authorization: "Bearer " + token },
      signal: ctrl.signal,
      openWhenHidden: true,
      onopen: async (r) => {
        if (r.ok && (r.headers.get("content-type") ?? "").startsWith(EventStreamContentType)) {
          backoff = MIN_BACKOFF_MS;
          this.setStatus("live");
          return;
        }
        if (r.status === 401) {
          setToken(null);
          throw new Fatal("session ended");
        }
        if (r.status === 404) throw new Fatal("this server has no live feed (GET /api/v1/live)");
        let detail = `${r.status}`;
        try {
          const body = await r.json();
          if (body && typeof body.detail === "string") detail = `${r.status}: ${body.detail}`;
        } catch {
          /* not JSON */
        }
        throw new Error(detail);
      },
      onmessage: (m) => {
        if (!m.data) return;
        let data: unknown;
        try {
          data = JSON.parse(m.data);
        } catch {
          return;
        }
        const kind = (m.event || "message") as LiveMessage["kind"];
        if (!["event", "invocation", "dropped", "hello"].includes(kind)) return;
        this.received++;
        const msg = { kind, data } as LiveMessage;
        for (const h of this.handlers) {
          try {
            h(msg);
          } catch (err) {
            console.warn("live handler failed", err);
          }
        }
      },
      onclose: () => {
        // The server ended the stream: reconnect (fetchEventSource retries when onclose throws).
        throw new Error("stream closed by the server");
      },
      onerror: (err) => {
        if (err instanceof Fatal) {
          this.setStatus("unavailable", err.message);
          throw err; // stop retrying
        }
        const wait = backoff;
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
        this.setStatus("reconnecting", `${err instanceof Error ? err.message : String(err)}; retrying in ${Math.round(wait / 1000)} s`);
        return wait;
      },
    }).catch(() => {
      /* fatal: status already set */
    });
  }

  stop(): void {
    this.abort?.abort();
    this.abort = null;
  }
}

export const live = new LiveFeed();
