// A stacked bar chart in SVG, drawn by hand: one bar per day, one segment per series. Values as text only.

import { svg } from "./dom.js";

export const PALETTE = ["#cc785c", "#4f6bed", "#2f9e77", "#d4a72c", "#8a5cd1", "#d1495b", "#3b9dbf", "#7a8b4a", "#8c8c8c"];

const WIDTH = 960;
const HEIGHT = 280;
const PAD = { top: 12, right: 12, bottom: 28, left: 64 };

/**
 * days: ["YYYY-MM-DD", ...]; series: [{ name, color, values: [number per day] }]; format: a value as a label.
 */
export function stackedBars({ days, series, format, label }) {
  const totals = days.map((_, i) => series.reduce((sum, s) => sum + s.values[i], 0));
  const top = niceMax(Math.max(0, ...totals));
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const step = plotW / Math.max(days.length, 1);
  const barW = Math.max(1, Math.min(40, step * 0.7));
  const y = (value) => PAD.top + plotH - (top ? (value / top) * plotH : 0);

  const grid = [0, 0.25, 0.5, 0.75, 1].map((share) => {
    const value = top * share;
    return svg("g", { class: "tick" },
      svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(value), y2: y(value) }),
      svg("text", { x: PAD.left - 8, y: y(value) + 4, "text-anchor": "end" }, format(value)));
  });
  const every = Math.ceil(days.length / 12);  // at most about 12 date labels
  const bars = days.map((day, i) => {
    const x = PAD.left + i * step + (step - barW) / 2;
    let base = 0;
    const segments = series.filter((s) => s.values[i] > 0).map((s) => {
      const rect = svg("rect", {
        x, width: barW, y: y(base + s.values[i]), height: Math.max(0.5, y(base) - y(base + s.values[i])),
        fill: s.color, "data-series": s.name, "data-day": day,
      }, svg("title", {}, `${day} · ${s.name}: ${format(s.values[i])}`));
      base += s.values[i];
      return rect;
    });
    const tick = i % every === 0
      ? svg("text", { class: "day", x: x + barW / 2, y: HEIGHT - 8, "text-anchor": "middle" }, day.slice(5))
      : null;
    return svg("g", { class: "day-bar" }, segments, tick);
  });
  return svg("svg", {
    class: "chart", viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label, preserveAspectRatio: "xMidYMid meet",
  }, svg("title", {}, label), grid, bars,
  svg("line", { class: "axis", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(0), y2: y(0) }));
}

// 1, 2, 2.5 or 5 times a power of ten, at or above the largest stack: round gridline labels.
function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((m) => m >= value);
}
