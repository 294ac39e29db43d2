// Small inline-SVG charts: lines over time, grouped bars, a heatmap. No library: the city
// network is offline and the page loads nothing from elsewhere. Styling is by class (the CSP
// forbids inline style attributes); colours go in SVG presentation attributes.

const SVG_NS = "http://www.w3.org/2000/svg";

// Twelve colours told apart on screen and in print, then golden-angle hues for more.
const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a",
];

export function categoryColor(index) {
  if (index < PALETTE.length) return PALETTE[index];
  const hue = (index * 137.508) % 360;
  return `hsl(${hue.toFixed(1)}, 65%, 45%)`;
}

export function element(tag, attributes = {}, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG_NS, tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "on") Object.entries(value).forEach(([type, fn]) => node.addEventListener(type, fn));
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const svg = (tag, attributes, ...children) => element(`svg:${tag}`, attributes, ...children);

export function swatch(color) {
  return svg("svg", { class: "swatch", viewBox: "0 0 10 10", "aria-hidden": "true" },
    svg("rect", { width: 10, height: 10, rx: 2, fill: color }));
}

// ------------------------------------------------------------------------- number formats

export function formatCount(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const absolute = Math.abs(value);
  if (absolute >= 1e9) return `${(value / 1e9).toFixed(absolute >= 1e10 ? 0 : 1)} G`;
  if (absolute >= 1e6) return `${(value / 1e6).toFixed(absolute >= 1e7 ? 0 : 1)} M`;
  if (absolute >= 1e4) return `${(value / 1e3).toFixed(0)} k`;
  if (Number.isInteger(value)) return value.toLocaleString("en");
  return value.toFixed(absolute < 10 ? 2 : 1);
}

export function formatBytes(value) {
  const units = ["B", "KB", "MB", "GB", "TB", "PB"];
  let scaled = value;
  let unit = 0;
  while (Math.abs(scaled) >= 1000 && unit < units.length - 1) {
    scaled /= 1000;
    unit += 1;
  }
  return `${scaled.toFixed(unit === 0 || scaled >= 100 ? 0 : 1)} ${units[unit]}`;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

export function formatPercent(share) {
  return share === null || share === undefined ? "–" : `${(share * 100).toFixed(1)} %`;
}

export function formatTime(date, withDate = true) {
  const pad = (n) => String(n).padStart(2, "0");
  const time = `${pad(date.getHours())}:${pad(date.getMinutes())}`;
  if (!withDate) return time;
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${time}`;
}

// "Nice" round ticks between min and max (1, 2, 2.5, 5 times a power of ten).
export function niceTicks(min, max, count = 5) {
  if (!(max > min)) return [min];
  const rough = (max - min) / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * power).find((s) => s >= rough) || rough;
  const ticks = [];
  for (let tick = Math.ceil(min / step) * step; tick <= max + step * 1e-9; tick += step) {
    ticks.push(Math.round(tick / step) * step);
  }
  return ticks;
}

function emptyNote(container, message) {
  container.replaceChildren(element("p", { class: "empty", text: message }));
}

// ------------------------------------------------------------------------- line chart

// series: [{name, color, values: Float64Array aligned with times}], times: [Date]
export function lineChart(container, { times, series, format = formatCount, empty }) {
  if (!times.length || !series.length) return emptyNote(container, empty);
  const width = 760;
  const height = 300;
  const margin = { top: 12, right: 16, bottom: 30, left: 64 };
  const innerWidth = width - margin.left - margin.right;
  const innerHeight = height - margin.top - margin.bottom;
  const firstTime = times[0].getTime();
  const lastTime = times[times.length - 1].getTime();
  const span = Math.max(lastTime - firstTime, 1);
  let highest = 0;
  for (const line of series) for (const value of line.values) highest = Math.max(highest, value);
  const yTicks = niceTicks(0, highest || 1, 5);
  const top = Math.max(yTicks[yTicks.length - 1], highest || 1);
  const x = (time) => margin.left + ((time - firstTime) / span) * innerWidth;
  const y = (value) => margin.top + innerHeight - (value / top) * innerHeight;

  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "line chart",
  });
  for (const tick of yTicks) {
    chart.append(
      svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y(tick), y2: y(tick) }),
      svg("text", { class: "axis", x: margin.left - 6, y: y(tick) + 4, "text-anchor": "end" }, format(tick)),
    );
  }
  const sameDay = lastTime - firstTime < 86400000;
  const labelEvery = Math.max(1, Math.ceil(times.length / 6));
  times.forEach((time, position) => {
    if (position % labelEvery !== 0) return;
    chart.append(svg("text", {
      class: "axis", x: x(time.getTime()), y: height - 8, "text-anchor": "middle",
    }, formatTime(time, !sameDay)));
  });
  for (const line of series) {
    const points = times.map((time, i) => `${x(time.getTime()).toFixed(1)},${y(line.values[i]).toFixed(1)}`);
    const path = svg("polyline", {
      class: "series", points: points.join(" "), stroke: line.color, fill: "none",
    }, svg("title", {}, line.name));
    chart.append(path);
    if (times.length <= 60) {
      times.forEach((time, i) => chart.append(svg("circle", {
        cx: x(time.getTime()), cy: y(line.values[i]), r: 2.5, fill: line.color,
      }, svg("title", {}, `${line.name} ${formatTime(time)}: ${format(line.values[i])}`))));
    }
  }
  container.replaceChildren(chart);
}

// ------------------------------------------------------------------------- horizontal bars

// categories: [label], bars: [{name, color, values: [number|null]}], max optional
export function barChart(container, { categories, bars, format = formatCount, max, empty }) {
  if (!categories.length) return emptyNote(container, empty);
  const rowHeight = 8 + bars.length * 14;
  const margin = { top: 8, right: 80, bottom: 24, left: 120 };
  const width = 760;
  const innerWidth = width - margin.left - margin.right;
  const height = margin.top + margin.bottom + categories.length * rowHeight;
  const values = bars.flatMap((bar) => bar.values.filter((v) => v !== null && v !== undefined));
  const highest = max ?? Math.max(1, ...values);
  const ticks = niceTicks(0, highest, 4);
  const top = max ?? Math.max(ticks[ticks.length - 1], highest);
  const x = (value) => margin.left + (Math.max(0, value) / top) * innerWidth;

  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "bar chart",
  });
  for (const tick of ticks) {
    chart.append(
      svg("line", { class: "grid", x1: x(tick), x2: x(tick), y1: margin.top, y2: height - margin.bottom }),
      svg("text", { class: "axis", x: x(tick), y: height - 8, "text-anchor": "middle" }, format(tick)),
    );
  }
  categories.forEach((category, row) => {
    const rowTop = margin.top + row * rowHeight + 4;
    chart.append(svg("text", {
      class: "label", x: margin.left - 8, y: rowTop + (bars.length * 14) / 2 + 4, "text-anchor": "end",
    }, category));
    bars.forEach((bar, position) => {
      const value = bar.values[row];
      const barTop = rowTop + position * 14;
      const known = value !== null && value !== undefined;
      chart.append(
        svg("rect", {
          x: margin.left, y: barTop, height: 11, width: known ? Math.max(1, x(value) - margin.left) : 0,
          fill: bar.color, rx: 2,
        }, svg("title", {}, `${category} · ${bar.name}: ${known ? format(value) : "none yet"}`)),
        svg("text", { class: "value", x: (known ? x(value) : margin.left) + 4, y: barTop + 9 },
          known ? format(value) : "–"),
      );
    });
  });
  container.replaceChildren(chart);
}

// ------------------------------------------------------------------------- heatmap

// A sequential colour: white (0) to deep blue (1); square-root scaled by the caller.
export function heatColor(fraction) {
  const f = Math.min(1, Math.max(0, fraction));
  const from = [239, 246, 255];
  const to = [8, 48, 107];
  const mix = from.map((start, i) => Math.round(start + (to[i] - start) * f));
  return `rgb(${mix[0]}, ${mix[1]}, ${mix[2]})`;
}

// rows, columns: [label]; value(r, c) -> number; detail(r, c) -> tooltip text
export function heatmap(container, { rows, columns, value, detail, format = formatCount, empty }) {
  if (!rows.length || !columns.length) return emptyNote(container, empty);
  const cell = Math.max(26, Math.min(56, Math.floor(620 / columns.length)));
  const margin = { top: 110, left: 120, right: 12, bottom: 12 };
  const width = margin.left + columns.length * cell + margin.right;
  const height = margin.top + rows.length * cell + margin.bottom;
  let highest = 0;
  rows.forEach((_, r) => columns.forEach((__, c) => { highest = Math.max(highest, value(r, c)); }));
  const chart = svg("svg", {
    class: "chart heatmap", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "heatmap",
  });
  columns.forEach((label, c) => {
    const cx = margin.left + c * cell + cell / 2;
    chart.append(svg("text", {
      class: "label", x: cx, y: margin.top - 8, transform: `rotate(-50 ${cx} ${margin.top - 8})`,
    }, label));
  });
  rows.forEach((label, r) => {
    const top = margin.top + r * cell;
    chart.append(svg("text", {
      class: "label", x: margin.left - 8, y: top + cell / 2 + 4, "text-anchor": "end",
    }, label));
    columns.forEach((_, c) => {
      const amount = value(r, c);
      const fraction = highest ? Math.sqrt(amount / highest) : 0;
      chart.append(svg("rect", {
        x: margin.left + c * cell, y: top, width: cell - 2, height: cell - 2, rx: 3,
        fill: amount ? heatColor(0.08 + 0.92 * fraction) : "none", class: amount ? "cell" : "cell none",
      }, svg("title", {}, detail(r, c))));
      if (amount && cell >= 30) {
        chart.append(svg("text", {
          class: fraction > 0.55 ? "cell-value light" : "cell-value",
          x: margin.left + c * cell + (cell - 2) / 2, y: top + (cell - 2) / 2 + 4, "text-anchor": "middle",
        }, format(amount)));
      }
    });
  });
  container.replaceChildren(chart);
}
