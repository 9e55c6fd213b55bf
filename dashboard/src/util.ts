import { useEffect, useRef, useState } from "preact/hooks";
import { describeError } from "./api";
import { live, type LiveMessage } from "./live";

export interface Loaded<T> {
  data: T | null;
  error: string | null;
  loading: boolean;
  reload: () => void;
}

/** Load something from the API; `reload()` fetches it again (keeping the old data meanwhile). */
export function useLoad<T>(what: string, load: () => Promise<T>, deps: unknown[]): Loaded<T> {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [n, setN] = useState(0);
  const seq = useRef(0);
  useEffect(() => {
    const mine = ++seq.current;
    setLoading(true);
    load().then(
      (d) => {
        if (mine !== seq.current) return;
        setData(d);
        setError(null);
        setLoading(false);
      },
      (err) => {
        if (mine !== seq.current) return;
        setError(describeError(err, what));
        setLoading(false);
      },
    );
  }, [...deps, n]);
  useEffect(() => setData(null), deps);
  return { data, error, loading, reload: () => setN((x) => x + 1) };
}

/** Call `fn` for each live message while mounted. */
export function useLive(fn: (m: LiveMessage) => void, deps: unknown[]): void {
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => live.subscribe((m) => ref.current(m)), deps);
}

/** A function that runs `fn` at most once per `ms` (the last call wins, trailing edge). */
export function useThrottled(fn: () => void, ms: number): () => void {
  const ref = useRef(fn);
  ref.current = fn;
  const timer = useRef<number | null>(null);
  useEffect(
    () => () => {
      if (timer.current !== null) clearTimeout(timer.current);
    },
    [],
  );
  return () => {
    if (timer.current !== null) return;
    timer.current = window.setTimeout(() => {
      timer.current = null;
      ref.current();
    }, ms);
  };
}

/** Call `fn` every `ms` while mounted. */
export function useInterval(fn: () => void, ms: number): void {
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => {
    const t = window.setInterval(() => ref.current(), ms);
    return () => clearInterval(t);
  }, [ms]);
}

export function fmtTime(iso: string | null | undefined): string {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime()) || d.getTime() <= 0) return "—";
  return d.toLocaleString(undefined, { hour12: false });
}

export function ago(iso: string | null | undefined): string {
  if (!iso) return "";
  const t = new Date(iso).getTime();
  if (!t || Number.isNaN(t)) return "";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export type Health = "online" | "offline" | "missing" | "unknown";

/** The contract's states: missing = presence missing; offline = edge link disconnected. */
export function healthOf(s: { presence: string; link: { status: string } | null } | null | undefined): Health {
  if (!s) return "unknown";
  if (s.presence === "missing") return "missing";
  if (s.link && s.link.status === "disconnected") return "offline";
  return "online";
}
