import { useEffect, useRef } from "preact/hooks";
import L from "leaflet";
import type { Zone } from "../types";

/** Tooltip content as a text node: Leaflet would parse a string as HTML. */
function text(s: string): HTMLElement {
  const el = document.createElement("span");
  el.textContent = s;
  return el;
}

export interface Point {
  lat: number;
  lon: number;
  time: string;
}

/** The device's recent locations (newest highlighted) and its area's zones, drawn with Leaflet
 *  on a blank background: no tile server is needed or contacted. */
export function DeviceMap({ points, zones }: { points: Point[]; zones: Zone[] }) {
  const box = useRef<HTMLDivElement>(null);
  const map = useRef<L.Map | null>(null);
  const layer = useRef<L.FeatureGroup | null>(null);

  useEffect(() => {
    const m = L.map(box.current!, { attributionControl: false, zoomSnap: 0.25, worldCopyJump: false });
    m.setView([0, 0], 2);
    map.current = m;
    layer.current = L.featureGroup().addTo(m);
    const ro = new ResizeObserver(() => m.invalidateSize());
    ro.observe(box.current!);
    return () => {
      ro.disconnect();
      m.remove();
      map.current = null;
    };
  }, []);

  useEffect(() => {
    const m = map.current;
    const g = layer.current;
    if (!m || !g) return;
    g.clearLayers();
    for (const z of zones) {
      if (z.polygon.length < 3) continue;
      L.polygon(
        z.polygon.map(([lat, lon]) => [lat, lon] as L.LatLngTuple),
        { color: "#7c3aed", weight: 2, fillOpacity: 0.08 },
      )
        .bindTooltip(text(z.name || z.token))
        .addTo(g);
    }
    const latlngs = points.map((p) => [p.lat, p.lon] as L.LatLngTuple);
    if (latlngs.length > 1) L.polyline(latlngs, { color: "#2563eb", weight: 2, opacity: 0.7 }).addTo(g);
    points.forEach((p, i) => {
      const newest = i === points.length - 1;
      L.circleMarker([p.lat, p.lon], {
        radius: newest ? 8 : 4,
        color: newest ? "#b91c1c" : "#2563eb",
        fillColor: newest ? "#ef4444" : "#60a5fa",
        fillOpacity: 0.9,
        weight: newest ? 2 : 1,
      })
        .bindTooltip(text(`${new Date(p.time).toLocaleString(undefined, { hour12: false })}: ${p.lat.toFixed(5)}, ${p.lon.toFixed(5)}`))
        .addTo(g);
    });
    const b = g.getBounds();
    if (b.isValid()) m.fitBounds(b.pad(0.2), { maxZoom: 17, animate: false });
  }, [points, zones]);

  return <div class="map" ref={box} data-testid="device-map" />;
}
