// Unit tests of src/format.ts: `npm test` compiles them (tsc -p tsconfig.test.json) and runs them
// with Node (build time only, like the rest of the dashboard's toolchain). A failed check throws,
// so the run exits non-zero.
import { SIGNIFICANT, decimalsOf, fmtValue, jsonLine, jsonPretty, preview, statusClass, unitOf } from "../src/format.js";

const failures: string[] = [];
let checks = 0;

function eq(actual: unknown, expected: unknown, what: string): void {
  checks++;
  if (actual !== expected) failures.push(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

// Float noise is gone; the magnitude decides the decimals.
eq(SIGNIFICANT, 4, "significant digits");
eq(fmtValue(20.900000000000002), "20.9", "float noise of 20.9");
eq(fmtValue(0.1 + 0.2), "0.3", "0.1 + 0.2");
eq(fmtValue(231.53497314453125), "231.5", "a float32 reading");
eq(fmtValue(21.53), "21.53", "two decimals a sensor sent");
eq(fmtValue(45.5), "45.5", "one decimal");
eq(fmtValue(1013.25), "1013", "four digits before the point");
eq(fmtValue(12345.67), "12346", "never fewer digits than before the point");
eq(fmtValue(0.012345), "0.01235", "small values keep four significant digits");
eq(fmtValue(-3.14159), "-3.142", "negative");
eq(fmtValue(-0.00001), "-1e-5", "tiny in exponent form");
eq(fmtValue(1.5e-7), "1.5e-7", "tiny, trailing zeros dropped");
eq(fmtValue(1.23456e15 + 0.5), "1.235e+15", "huge, not whole");
eq(fmtValue(9.99996), "10", "rounding up past a power of ten");
eq(fmtValue(1 / 3), "0.3333", "a third");

// Whole numbers as whole numbers.
eq(fmtValue(42), "42", "integer");
eq(fmtValue(101325), "101325", "large integer, every digit");
eq(fmtValue(-7), "-7", "negative integer");
eq(fmtValue(0), "0", "zero");
eq(fmtValue(-0), "0", "negative zero");
eq(fmtValue(2 ** 53), "9007199254740992", "2^53");
eq(fmtValue(1e21), "1e+21", "beyond plain digits");

// Nothing, and the unit.
eq(fmtValue(null), "—", "null");
eq(fmtValue(undefined), "—", "undefined");
eq(fmtValue(NaN), "—", "NaN");
eq(fmtValue(Infinity), "∞", "infinity");
eq(fmtValue(20.900000000000002, "°C"), "20.9 °C", "with its unit");
eq(fmtValue(45, "%"), "45 %", "integer with its unit");
eq(fmtValue(null, "°C"), "—", "no value, no unit");
eq(fmtValue(3, ""), "3", "an empty unit adds nothing");

// Axis ticks: as many decimals as the tick spacing.
eq(decimalsOf(0.05), 2, "step 0.05");
eq(decimalsOf(0.25), 2, "step 0.25");
eq(decimalsOf(0.1 + 0.2 - 0.2), 1, "step 0.1 with noise");
eq(decimalsOf(5), 0, "step 5");
eq(decimalsOf(2000), 0, "step 2000");
eq(decimalsOf(0), 0, "no step");
eq(fmtValue(20.950000000000003, undefined, 0.05), "20.95", "tick with noise");
eq(fmtValue(20.9, undefined, 0.05), "20.90", "ticks keep their decimals");
eq(fmtValue(5000000, undefined, 1000000), "5000000", "big tick");
eq(fmtValue(-0.0000000001, undefined, 0.5), "0.0", "no -0 tick");

// Units from event metadata.
eq(unitOf({ "unit.temperature": "°C" }, "temperature"), "°C", "unit found");
eq(unitOf({ "unit.temperature": " °C " }, "temperature"), "°C", "unit trimmed");
eq(unitOf({ "unit.temperature": "°C" }, "humidity"), "", "other name");
eq(unitOf(undefined, "humidity"), "", "no metadata");

// JSON that wraps between tokens, never inside one.
eq(jsonLine({ pong: true }), '{"pong": true}', "one line, spaced");
eq(jsonLine({ a: [1, 2], b: { c: "x, y: z" } }), '{"a": [1, 2], "b": {"c": "x, y: z"}}', "nested; strings untouched");
eq(jsonLine({ s: "line\nbreak" }), '{"s": "line\\nbreak"}', "newlines in strings stay escaped");
eq(jsonLine({}), "{}", "empty object");
eq(jsonLine([]), "[]", "empty array");
eq(jsonLine(null), "—", "nothing");
eq(jsonLine("text"), "text", "a string as it is");
eq(jsonPretty({ a: 1 }), '{\n  "a": 1\n}', "pretty");
eq(preview("alpha beta gamma delta", 12), "alpha beta …", "cut at a space");
eq(preview("short", 12), "short", "not cut");
eq(preview("x".repeat(20), 12), "x".repeat(11) + " …", "one long word is cut");

// Any invocation status gets a class, unknown ones (such as "late") included.
eq(statusClass("ANSWERED"), "answered", "lower case");
eq(statusClass("late"), "late", "late");
eq(statusClass("weird status!"), "weird-status-", "anything else made safe");

if (failures.length) throw new Error(`${failures.length} of ${checks} checks failed:\n  ${failures.join("\n  ")}`);
console.log(`format.test: ${checks} checks passed`);
