import { useEffect, useState } from "preact/hooks";
import { describeError, enc, post } from "../api";
import type { Command, Invocation, Param } from "../types";

type Values = Record<string, string | boolean>;

function convert(p: Param, v: string | boolean | undefined): { ok: true; value: unknown } | { ok: false; error: string } | null {
  if (p.type === "bool") return { ok: true, value: Boolean(v) };
  const s = typeof v === "string" ? v.trim() : "";
  if (s === "") return p.required ? { ok: false, error: `${p.name} is required` } : null;
  if (p.type === "int") {
    if (!/^-?\d+$/.test(s)) return { ok: false, error: `${p.name} must be a whole number` };
    return { ok: true, value: Number.parseInt(s, 10) };
  }
  if (p.type === "float") {
    const n = Number(s);
    if (!Number.isFinite(n)) return { ok: false, error: `${p.name} must be a number` };
    return { ok: true, value: n };
  }
  return { ok: true, value: s };
}

/** A form built from the device type's commands and their typed parameters. */
export function CommandForm({ device, commands, onSent }: { device: string; commands: Command[]; onSent: (inv: Invocation) => void }) {
  const [name, setName] = useState(commands[0]?.name ?? "");
  const [values, setValues] = useState<Values>({});
  const [ttl, setTtl] = useState("60");
  const [busy, setBusy] = useState(false);
  const [msg, setMsg] = useState<{ ok: boolean; text: string } | null>(null);
  // Another command starts with empty parameters. Done in the same update as the choice (not
  // in an effect after it, which would wipe what was typed right after choosing).
  const choose = (next: string) => {
    if (next === name) return;
    setName(next);
    setValues({});
    setMsg(null);
  };
  useEffect(() => {
    if (!commands.some((c) => c.name === name)) choose(commands[0]?.name ?? "");
  }, [commands]);
  const cmd = commands.find((c) => c.name === name);
  if (commands.length === 0) return <p class="muted">This device type declares no commands.</p>;

  const submit = async (e: Event) => {
    e.preventDefault();
    if (!cmd) return;
    const params: Record<string, unknown> = {};
    for (const p of cmd.params) {
      const r = convert(p, values[p.name]);
      if (r === null) continue;
      if (!r.ok) {
        setMsg({ ok: false, text: r.error });
        return;
      }
      params[p.name] = r.value;
    }
    const ttlS = Number.parseInt(ttl, 10);
    setBusy(true);
    setMsg(null);
    try {
      const inv = await post<Invocation>(`/api/v1/devices/${enc(device)}/commands`, {
        command: cmd.name,
        params,
        ...(Number.isFinite(ttlS) && ttlS > 0 ? { ttl_s: ttlS } : {}),
      });
      setMsg({ ok: true, text: `Sent ${cmd.name} (invocation ${inv.id}, ${inv.status.toLowerCase()}): its status follows in the history.` });
      onSent(inv);
    } catch (err) {
      setMsg({ ok: false, text: describeError(err, `Sending ${cmd.name} failed`) });
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="command-form" onSubmit={submit} data-testid="command-form">
      <label>
        Command
        <select name="command" value={name} onChange={(e) => choose(e.currentTarget.value)}>
          {commands.map((c) => (
            <option key={c.name} value={c.name}>
              {c.name}
            </option>
          ))}
        </select>
      </label>
      {cmd?.description && <p class="muted small">{cmd.description}</p>}
      {cmd?.params.map((p) => (
        <label key={p.name} class={p.type === "bool" ? "check" : ""}>
          <span>
            {p.name} <span class="muted small">({p.type}{p.required ? ", required" : ""})</span>
          </span>
          {p.type === "bool" ? (
            <input type="checkbox" name={p.name} checked={Boolean(values[p.name])} onChange={(e) => {
                const v = e.currentTarget.checked;
                setValues((vs) => ({ ...vs, [p.name]: v }));
              }} />
          ) : p.type === "int" || p.type === "float" ? (
            <input
              name={p.name}
              type="number"
              step={p.type === "int" ? "1" : "any"}
              required={p.required}
              value={(values[p.name] as string) ?? ""}
              onInput={(e) => {
                const v = e.currentTarget.value;
                setValues((vs) => ({ ...vs, [p.name]: v }));
              }}
            />
          ) : (
            <input
              name={p.name}
              type="text"
              required={p.required}
              value={(values[p.name] as string) ?? ""}
              onInput={(e) => {
                const v = e.currentTarget.value;
                setValues((vs) => ({ ...vs, [p.name]: v }));
              }}
            />
          )}
        </label>
      ))}
      <label>
        Expires after (s)
        <input name="ttl_s" type="number" min="1" step="1" value={ttl} onInput={(e) => setTtl(e.currentTarget.value)} />
      </label>
      <button type="submit" class="primary" disabled={busy}>
        {busy ? "Sending…" : "Send"}
      </button>
      {msg && (
        <p class={msg.ok ? "ok" : "error"} role="status" data-testid="command-result">
          {msg.text}
        </p>
      )}
    </form>
  );
}
