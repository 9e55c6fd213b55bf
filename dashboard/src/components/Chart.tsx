import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import { fmtValue } from "../format";

function clock(s: number): string {
  return new Date(s * 1000).toLocaleTimeString(undefined, { hour12: false });
}

/** A tooltip at the point under the cursor: its value (with the unit) and time. Text only;
 *  placed through the CSSOM (the CSP allows that, unlike style attributes). */
function tooltip(unit: string): uPlot.Plugin {
  let tip: HTMLDivElement | null = null;
  return {
    hooks: {
      init: (u) => {
        tip = document.createElement("div");
        tip.className = "chart-tip";
        tip.hidden = true;
        tip.setAttribute("data-testid", "chart-tip");
        u.over.appendChild(tip);
      },
      setCursor: (u) => {
        if (!tip) return;
        const i = u.cursor.idx;
        const y = i === null || i === undefined ? null : u.data[1][i];
        if (i === null || i === undefined || y === null || y === undefined) {
          tip.hidden = true;
          return;
        }
        const x = u.data[0][i];
        tip.textContent = `${fmtValue(y, unit)} · ${clock(x)}`;
        tip.hidden = false;
        const px = u.valToPos(x, "x");
        const py = u.valToPos(y, "y");
        const w = u.over.clientWidth;
        tip.style.left = `${Math.max(0, Math.min(px + 10, w - tip.offsetWidth))}px`;
        tip.style.top = `${Math.max(0, py - tip.offsetHeight - 8)}px`;
      },
    },
  };
}

/** A live line chart of one measurement (uPlot): xs in seconds since the epoch. Every value on
 *  it (axis ticks, tooltip) goes through fmtValue; the unit labels the y axis. */
export function MeasurementChart({ name, unit, xs, ys, rangeS }: { name: string; unit: string; xs: number[]; ys: number[]; rangeS: number }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    const el = box.current!;
    const width = () => Math.max(240, Math.floor(el.clientWidth));
    const opts: uPlot.Options = {
      width: width(),
      height: 200,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      plugins: [tooltip(unit)],
      scales: {
        x: {
          time: true,
          // The chosen range, but starting at the first point when the data is younger than
          // that (a device seen for a minute is not a sliver at the right edge of 24 h).
          range: (u) => {
            const now = Date.now() / 1000;
            const first = u.data[0].length ? (u.data[0][0] as number) : now - rangeS;
            return [Math.max(now - rangeS, Math.min(first, now - 60) - 5), now + 2];
          },
        },
      },
      axes: [
        { stroke: "#4b5563", grid: { stroke: "#eef0f3" } },
        {
          stroke: "#4b5563",
          grid: { stroke: "#eef0f3" },
          // Ticks with the decimals their spacing needs (20.85, 20.90), never float noise.
          values: (_u, splits, _axis, _space, incr) => splits.map((v) => fmtValue(v, null, incr)),
          // Wide enough for the longest tick label.
          size: (_u, values) => Math.max(44, 14 + 7.5 * Math.max(0, ...(values ?? []).map((v) => String(v).length))),
          ...(unit ? { label: unit, labelSize: 20 } : {}),
        },
      ],
      series: [{}, { label: name, stroke: "#2563eb", width: 2, points: { show: true, size: 4 }, spanGaps: false }],
    };
    plot.current = new uPlot(opts, [xs, ys], el);
    const ro = new ResizeObserver(() => plot.current?.setSize({ width: width(), height: 200 }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, [name, unit, rangeS]);

  useEffect(() => {
    plot.current?.setData([xs, ys]);
  }, [xs, ys]);

  return <div class="chart" ref={box} role="img" aria-label={unit ? `chart of ${name} in ${unit}` : `chart of ${name}`} />;
}
