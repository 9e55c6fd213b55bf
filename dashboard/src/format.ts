// Numbers and JSON as people read them. Pure functions (no DOM, no Preact): the unit tests in
// test/format.test.ts run them under Node.

/** Significant digits of a measurement value that is not a whole number. */
export const SIGNIFICANT = 4;

/** Trailing fractional zeros off ("20.900" → "20.9", "3.000" → "3"), and no "-0". */
function trimmed(s: string): string {
  const out = s.includes(".") && !s.includes("e") ? s.replace(/\.?0+$/, "") : s;
  return out === "-0" ? "0" : out;
}

/** The decimals needed to write `step` (an axis's tick spacing) without its float noise:
 *  0.05 → 2, 0.25 → 2, 0.1 + noise → 1, 5 → 0, 2000 → 0. */
export function decimalsOf(step: number): number {
  if (!Number.isFinite(step) || step <= 0) return 0;
  const [mantissa, exponent] = Number(step.toPrecision(6)).toExponential().split("e");
  const fraction = mantissa.split(".")[1]?.length ?? 0;
  return Math.min(20, Math.max(0, fraction - Number(exponent)));
}

/**
 * A measurement value for the page: the one formatter of every value shown (current values,
 * chart axes and tooltips, event descriptions).
 *
 * - whole numbers as they are: `42`, `101325`, `-3`;
 * - others with {@link SIGNIFICANT} significant digits, never fewer than the digits before the
 *   point, trailing zeros dropped, so float noise is gone: `20.900000000000002` → `20.9`,
 *   `231.53497314453125` → `231.5`, `0.012345` → `0.01235`, `12345.67` → `12346`;
 * - very small or very large ones in exponent form: `1.5e-7`, `2.998e+20`;
 * - with `step` (a chart axis's tick spacing): as many decimals as the step needs, so ticks
 *   line up (`20.85`, `20.9` → `20.85`, `20.90`);
 * - with `unit`: the unit after a space (`21.5 °C`); nothing (null, NaN) is `—`.
 */
export function fmtValue(v: number | null | undefined, unit?: string | null, step?: number): string {
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  let text: string;
  const a = Math.abs(v);
  if (!Number.isFinite(v)) text = v > 0 ? "∞" : "−∞";
  else if (step !== undefined && Number.isFinite(step) && step > 0) text = trimmedTick(v.toFixed(decimalsOf(step)));
  else if (Number.isInteger(v) && a < 1e21) text = String(v);
  else if (a < 1e-4 || a >= 1e15) text = v.toExponential(SIGNIFICANT - 1).replace(/\.?0+e/, "e");
  else text = trimmed(v.toFixed(Math.max(0, SIGNIFICANT - 1 - Math.floor(Math.log10(a)))));
  return unit ? `${text} ${unit}` : text;
}

/** Ticks keep their decimals (the axis reads evenly), only "-0" goes. */
function trimmedTick(s: string): string {
  return /^-0(\.0*)?$/.test(s) ? s.slice(1) : s;
}

/** The unit of measurement `name` in an event's metadata (`unit.<name>`), or "". */
export function unitOf(metadata: Record<string, string> | null | undefined, name: string): string {
  const u = metadata?.[`unit.${name}`];
  return typeof u === "string" ? u.trim() : "";
}

/** JSON on one line with a space after `,` and `:` (where a line may wrap), `—` for nothing. */
export function jsonLine(v: unknown): string {
  if (v === null || v === undefined) return "—";
  if (typeof v === "string") return v;
  const s = JSON.stringify(v, null, 1);
  if (s === undefined) return String(v);
  // The indentation is whitespace outside strings (JSON.stringify escapes newlines in strings).
  return s
    .replace(/([[{])\n\s*/g, "$1")
    .replace(/\n\s*([\]}])/g, "$1")
    .replace(/\n\s*/g, " ");
}

/** JSON indented for reading, `—` for nothing. */
export function jsonPretty(v: unknown): string {
  if (v === null || v === undefined) return "—";
  if (typeof v === "string") return v;
  return JSON.stringify(v, null, 2) ?? String(v);
}

/** `text` cut to at most `max` characters at a space (never inside a word unless it has no
 *  space at all), with `…` when something was cut. */
export function preview(text: string, max: number): string {
  if (text.length <= max) return text;
  const cut = text.lastIndexOf(" ", max - 1);
  return (cut > max / 3 ? text.slice(0, cut) : text.slice(0, max - 1)) + " …";
}

/** A CSS class suffix for any status name: lower case, letters, digits and `-` only. */
export function statusClass(status: string): string {
  return status.toLowerCase().replace(/[^a-z0-9-]+/g, "-");
}
