import type { ComponentChildren } from "preact";
import { statusClass } from "../format";
import type { Health } from "../util";

export function StateBadge({ state }: { state: Health | string }) {
  return (
    <span class={`badge state-${state}`} data-testid="state-badge">
      {state}
    </span>
  );
}

export function LevelBadge({ level }: { level: string }) {
  return <span class={`badge level-${level}`}>{level}</span>;
}

/** An invocation's status by name: the known ones coloured, any other (a status this build
 *  does not know yet) shown as it is, in the neutral colour. */
export function StatusBadge({ status }: { status: string }) {
  const s = status.toLowerCase() || "unspecified";
  return (
    <span class={`badge status-${statusClass(s)}`} data-testid="invocation-status">
      {s}
    </span>
  );
}

export function ErrorNote({ error }: { error: string | null }) {
  if (!error) return null;
  return (
    <p class="error" role="alert">
      {error}
    </p>
  );
}

export function Card({ title, children, class: cls, testid }: { title?: string; children: ComponentChildren; class?: string; testid?: string }) {
  return (
    <section class={`card ${cls ?? ""}`} data-testid={testid}>
      {title && <h2>{title}</h2>}
      {children}
    </section>
  );
}

export function TableWrap({ children }: { children: ComponentChildren }) {
  return <div class="table-wrap">{children}</div>;
}

export function Pager({ page, pageSize, total, onPage }: { page: number; pageSize: number; total: number; onPage: (p: number) => void }) {
  const pages = Math.max(1, Math.ceil(total / pageSize));
  return (
    <div class="pager">
      <button type="button" disabled={page <= 1} onClick={() => onPage(page - 1)}>
        ‹ Previous
      </button>
      <span>
        page {page} of {pages} · {total} in all
      </span>
      <button type="button" disabled={page >= pages} onClick={() => onPage(page + 1)}>
        Next ›
      </button>
    </div>
  );
}
