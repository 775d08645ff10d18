// Line charts with uPlot (served from the npm package, see services/console/package.json).
import { el, number } from "./console.js";

const COLORS = ["#1f5fbf", "#b3261e", "#1b7a3a", "#8a4baf", "#a15c00", "#00707a"];

// A chart of one or more series over a shared x axis, in a <figure> with a text summary for
// screen readers (the canvas itself is hidden from them).
export class LineChart {
  constructor(parent, { id, title, xLabel = "step", series }) {
    this.series = series;
    this.caption = el("figcaption", { id: `${id}-caption`, text: title });
    this.summary = el("p", { class: "hint", id: `${id}-summary` });
    this.box = el("div", { class: "plot", "aria-hidden": "true" });
    this.figure = el("figure", { class: "chart", id, "data-points": "0", "aria-labelledby": `${id}-caption`,
      "aria-describedby": `${id}-summary` }, this.caption, this.box, this.summary);
    parent.append(this.figure);
    this.plot = null;
    if (!window.uPlot) {
      this.summary.textContent = "Charts need uPlot: run `npm ci` in services/console (scripts/dev.sh does).";
      return;
    }
    this.plot = new window.uPlot({
      width: this.width(), height: 220,
      scales: { x: { time: false } },
      axes: [{ label: xLabel }, {}],
      series: [{ label: xLabel }, ...series.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length],
        width: 2, spanGaps: true, points: { show: true, size: 4 } }))],
    }, [[], ...series.map(() => [])], this.box);
    new ResizeObserver(() => this.plot.setSize({ width: this.width(), height: 220 })).observe(this.figure);
  }

  width() {
    return Math.max(260, (this.figure?.clientWidth || 600) - 8);
  }

  // data: [xs, ys of series 0, ys of series 1, ...]
  set(data) {
    const points = data[0].length;
    this.figure.dataset.points = String(points);
    if (this.plot) this.plot.setData(data);
    const last = data.slice(1).map((ys, i) => `${this.series[i]} ${number(ys[points - 1])}`).join(", ");
    this.summary.textContent = points ? `${points} points; at ${number(data[0][points - 1])}: ${last}` : "No points yet.";
  }
}
