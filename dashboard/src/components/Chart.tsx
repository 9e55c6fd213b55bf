import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";

/** A live line chart of one measurement (uPlot): xs in seconds since the epoch. */
export function MeasurementChart({ name, xs, ys, rangeS }: { name: string; xs: number[]; ys: number[]; rangeS: number }) {
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
        { stroke: "#4b5563", grid: { stroke: "#eef0f3" }, size: 60 },
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
  }, [name, rangeS]);

  useEffect(() => {
    plot.current?.setData([xs, ys]);
  }, [xs, ys]);

  return <div class="chart" ref={box} role="img" aria-label={`chart of ${name}`} />;
}
