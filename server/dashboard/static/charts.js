// Charts drawn by uPlot (installed from the npm registry by `npm ci`, served from node_modules).
// Each chart's element carries the points it shows in data-points (JSON: {x, series}), so a
// test, or a person in the devtools, can read exactly what is drawn.

import uPlot from "/dashboard/vendor/uPlot.esm.js";
import { h } from "./dom.js";

const WHOLE_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];
const COLOURS = ["#2b6cb0", "#d97706", "#18794e", "#b42318", "#6b46c1"];

function publish(element, x, series) {
  element.dataset.points = JSON.stringify({ x, series });
}

// A line chart of several named series over a shared x axis; returns {element, update(x, series)}.
export function lineChart({ id, title, xLabel, series, width = 560, height = 240 }) {
  const element = h("div", { class: "chart", id, "data-chart": title });
  const names = Object.keys(series);
  const options = {
    title,
    width,
    height,
    scales: { x: { time: false } },
    // Epochs and versions are whole numbers: ticks only at whole steps.
    axes: [{ label: xLabel, incrs: WHOLE_STEPS }, {}],  // the legend names each series
    series: [{ label: xLabel }, ...names.map((name, i) => ({ label: name, stroke: COLOURS[i % COLOURS.length], width: 2, points: { show: true } }))],
  };
  let plot = null;
  const update = (x, values) => {
    const data = [x, ...names.map((name) => values[name] || [])];
    publish(element, x, Object.fromEntries(names.map((name) => [name, values[name] || []])));
    if (plot === null) plot = new uPlot(options, data, element);
    else plot.setData(data);
  };
  update([], Object.fromEntries(names.map((n) => [n, []])));
  element.dataset.points = JSON.stringify({ x: [], series: Object.fromEntries(names.map((n) => [n, []])) });
  return { element, update, destroy: () => plot && plot.destroy() };
}

// A small sparkline of one series with no axes; returns {element, push(x, y)}.
export function sparkline({ label, width = 140, height = 34, keep = 60, max = null }) {
  const element = h("div", { class: "spark", "data-spark": label });
  const xs = [];
  const ys = [];
  const options = {
    width, height,
    cursor: { show: false }, legend: { show: false }, select: { show: false },
    scales: { x: { time: false }, y: max === null ? {} : { range: [0, max] } },
    axes: [{ show: false }, { show: false }],
    series: [{}, { stroke: COLOURS[0], width: 1.5, fill: "rgba(43,108,176,0.12)" }],
  };
  const plot = new uPlot(options, [xs, ys], element);
  const push = (x, y) => {
    xs.push(x);
    ys.push(y);
    if (xs.length > keep) { xs.shift(); ys.shift(); }
    plot.setData([xs, ys]);
    publish(element, xs, { [label]: ys });
  };
  return { element, push, destroy: () => plot.destroy() };
}
