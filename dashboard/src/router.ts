// Client-side routing with the History API: /, /devices, /devices/<token>, /alerts, /edges, /login.
// The address is the whole state of a page that has filters (/devices?presence=missing): pages
// read their query from useLocation() and change it with navigate().
import { useEffect, useState } from "preact/hooks";

const listeners = new Set<() => void>();

export interface NavigateOptions {
  /** Replace the current history entry (typing in a search box) instead of adding one. */
  replace?: boolean;
  /** Scroll to the top (a new page; not when only a filter changed). */
  scroll?: boolean;
}

export function navigate(path: string, { replace = false, scroll = true }: NavigateOptions = {}): void {
  if (path === location.pathname + location.search) return;
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  for (const l of listeners) l();
  if (scroll) window.scrollTo(0, 0);
}

window.addEventListener("popstate", () => {
  for (const l of listeners) l();
});

export interface Where {
  path: string; // location.pathname
  search: string; // location.search, "" or "?…"
}

/** The current path and query, updated on navigate() and on the browser's back/forward. */
export function useLocation(): Where {
  const [where, setWhere] = useState<Where>({ path: location.pathname, search: location.search });
  useEffect(() => {
    const l = () =>
      setWhere((w) => (w.path === location.pathname && w.search === location.search ? w : { path: location.pathname, search: location.search }));
    listeners.add(l);
    l(); // anything that changed before the effect ran
    return () => {
      listeners.delete(l);
    };
  }, []);
  return where;
}

/** Follow a same-origin link without reloading the page (modifier keys keep the browser's way). */
export function onLinkClick(e: MouseEvent): void {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = (e.target as HTMLElement).closest("a");
  if (!a || a.target || a.origin !== location.origin || a.hasAttribute("download")) return;
  if (a.pathname.startsWith("/api/") || a.pathname.startsWith("/docs")) return;
  e.preventDefault();
  navigate(a.pathname + a.search);
}
