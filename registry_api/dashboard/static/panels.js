// The analytics panels and the feed card: each fetches its endpoint and draws it.

import { PATHS, getJson, pathFor } from "./api.js";
import {
  barChart, categoryColor, element, formatBytes, formatCount, formatDuration, formatPercent,
  formatTime, heatmap, lineChart, swatch,
} from "./charts.js";

const $ = (id) => document.getElementById(id);

// One colour per department everywhere on the page (map, lines, bars).
const departmentOrder = new Map();

export function setDepartments(codes) {
  codes.forEach((code) => {
    if (!departmentOrder.has(code)) departmentOrder.set(code, departmentOrder.size);
  });
}

export function departmentColor(code) {
  if (!departmentOrder.has(code)) departmentOrder.set(code, departmentOrder.size);
  return categoryColor(departmentOrder.get(code));
}

const METRIC_FORMATS = {
  retrievals: formatCount,
  denied: formatCount,
  requesters: formatCount,
  bytes: formatBytes,
  seconds: formatDuration,
};

const STEP_MS = { minute: 60000, hour: 3600000, day: 86400000 };

function table(columns, rows, empty) {
  if (!rows.length) return element("p", { class: "empty", text: empty });
  return element("table", {},
    element("thead", {}, element("tr", {}, columns.map(([label]) => element("th", { text: label })))),
    element("tbody", {}, rows.map((row) => element("tr", {},
      columns.map(([, cell]) => {
        const value = cell(row);
        return element("td", {}, value instanceof Node ? value : String(value ?? ""));
      })))));
}

function tile(label, value, kind = "") {
  return element("div", { class: `tile ${kind}` },
    element("span", { class: "tile-value", text: value }),
    element("span", { class: "tile-label", text: label }));
}

// ------------------------------------------------------------------------- usage

// Every bucket of the period, so that quiet buckets draw as zero instead of being bridged.
// Buckets are anchored on one the API returned (day buckets start at the city's midnight).
function bucketTimes(rows, granularity, period) {
  const step = STEP_MS[granularity];
  const start = new Date(period.from).getTime();
  const end = new Date(period.to).getTime();
  const anchor = rows.length ? new Date(rows[0].bucket).getTime() : Math.floor(start / step) * step;
  const firstBucket = anchor - Math.ceil((anchor - start) / step) * step; // the one holding `from`
  const times = [];
  for (let time = firstBucket; time < end; time += step) times.push(time);
  return { times, firstBucket, step };
}

export async function renderUsage(period, signal) {
  const granularity = $("usage-granularity").value;
  const metric = $("usage-metric").value;
  const answer = await getJson(PATHS.usage, {
    from: period.from, to: period.to, granularity, group_by: "owner_department", limit: 100000,
  }, signal);
  const { times, firstBucket, step } = bucketTimes(answer.rows, granularity, period);
  const byGroup = new Map();
  for (const row of answer.rows) {
    if (!byGroup.has(row.group)) byGroup.set(row.group, new Float64Array(times.length));
    const position = Math.round((new Date(row.bucket).getTime() - firstBucket) / step);
    if (position >= 0 && position < times.length) byGroup.get(row.group)[position] += row[metric];
  }
  const total = (values) => values.reduce((sum, value) => sum + value, 0);
  const series = [...byGroup.entries()]
    .map(([group, values]) => ({ name: group || "(none)", color: departmentColor(group), values }))
    .sort((a, b) => total(b.values) - total(a.values));
  const format = METRIC_FORMATS[metric];
  lineChart($("usage-chart"), {
    times: times.map((time) => new Date(time)),
    series,
    format,
    empty: "No retrievals in this period.",
  });
  $("usage-legend").replaceChildren(...series.map((line) => element("li", {},
    swatch(line.color), ` ${line.name} `, element("span", { class: "muted", text: format(total(line.values)) }))));
  return answer.truncated ? "The answer was cut at 100,000 rows: choose a coarser step." : "";
}

// ------------------------------------------------------------------------- sharing matrix

export async function renderSharing(period, signal) {
  const metric = $("sharing-metric").value;
  const answer = await getJson(PATHS.sharingMatrix, { from: period.from, to: period.to }, signal);
  const owners = [...new Set(answer.rows.map((row) => row.owner_department))].sort();
  const requesters = [...new Set(answer.rows.map((row) => row.requester_department))].sort();
  const cells = new Map(answer.rows.map((row) => [`${row.owner_department}\u0000${row.requester_department}`, row]));
  const cellOf = (r, c) => cells.get(`${owners[r]}\u0000${requesters[c]}`);
  const format = METRIC_FORMATS[metric];
  heatmap($("sharing-chart"), {
    rows: owners,
    columns: requesters,
    value: (r, c) => cellOf(r, c)?.[metric] ?? 0,
    detail: (r, c) => {
      const cell = cellOf(r, c);
      if (!cell) return `${requesters[c]} used nothing of ${owners[r]}`;
      return `${requesters[c]} using ${owners[r]}'s feeds: ${formatCount(cell.retrievals)} retrievals, `
        + `${formatCount(cell.denied)} denied, ${formatBytes(cell.bytes)}, `
        + `${formatDuration(cell.seconds)}, ${formatCount(cell.requesters)} requesters`;
    },
    format,
    empty: "No department used another's feeds in this period.",
  });
  return "";
}

// ------------------------------------------------------------------------- decisions

export async function renderDecisions(period, signal) {
  const answer = await getJson(PATHS.decisions, { from: period.from, to: period.to }, signal);
  const { totals } = answer;
  $("decisions-totals").replaceChildren(
    tile("granted", formatCount(totals.granted), "good"),
    tile("denied", formatCount(totals.denied), "bad"),
    tile("pending", formatCount(totals.pending), "warn"),
  );
  const rows = [...answer.rows].sort((a, b) => a.owner_department.localeCompare(b.owner_department));
  const categories = rows.map((row) => row.owner_department);
  barChart($("decisions-time"), {
    categories,
    bars: [
      { name: "median", color: "#4c78a8", values: rows.map((row) => row.median_seconds_to_decision) },
      { name: "95th percentile", color: "#f58518", values: rows.map((row) => row.p95_seconds_to_decision) },
    ],
    format: formatDuration,
    empty: "No requests in this period.",
  });
  barChart($("decisions-deadline"), {
    categories: rows.map((row) => `${row.owner_department} (${row.answered_within_deadline}/${row.due})`),
    bars: [{ name: "within deadline", color: "#54a24b", values: rows.map((row) => row.share_within_deadline) }],
    format: formatPercent,
    max: 1,
    empty: "No requests in this period.",
  });
  const reasons = answer.deny_reasons;
  $("decisions-reasons").replaceChildren(
    element("h3", { text: "Deny reasons" }),
    table([["reason", (r) => r.reason], ["requests", (r) => formatCount(r.count)]], reasons,
      "No request was denied in this period."),
  );
  return "";
}

// ------------------------------------------------------------------------- dormant feeds, alerts

function severityBadge(severity) {
  return element("span", { class: `badge ${severity}`, text: severity });
}

export async function renderHealth(period, signal) {
  const [dormant, alerts] = await Promise.all([
    getJson(PATHS.dormantFeeds, { from: period.from, to: period.to, limit: 10 }, signal),
    getJson(PATHS.alerts, { from: period.from, to: period.to, limit: 20 }, signal),
  ]);
  const ruleTiles = Object.entries(alerts.counts)
    .sort((a, b) => b[1] - a[1])
    .map(([rule, count]) => tile(rule.replaceAll("_", " "), formatCount(count)));
  $("health-tiles").replaceChildren(
    tile("dormant feeds", formatCount(dormant.total), dormant.total ? "warn" : "good"),
    tile("alerts", formatCount(alerts.total), alerts.total ? "bad" : "good"),
    ...ruleTiles,
  );
  $("dormant-table").replaceChildren(
    table([
      ["feed", (r) => r.name || r.feed_id],
      ["owner", (r) => r.owner_department],
      ["kind", (r) => r.kind],
      ["why", (r) => r.reasons.map((reason) => reason.replaceAll("_", " ")).join(", ")],
    ], dormant.rows, "No dormant feed in this period."),
    dormant.total > dormant.rows.length
      ? element("p", { class: "muted", text: `The first ${dormant.rows.length} of ${formatCount(dormant.total)}.` })
      : "",
  );
  $("alerts-table").replaceChildren(alerts.rows.length < alerts.total
    ? element("p", { class: "muted", text: `The newest ${alerts.rows.length} of ${formatCount(alerts.total)}.` })
    : "", table([
    ["time", (r) => formatTime(new Date(r.time))],
    ["severity", (r) => severityBadge(r.severity)],
    ["rule", (r) => r.rule.replaceAll("_", " ")],
    ["feed", (r) => r.feed_id],
    ["requester", (r) => [r.requester_department, r.requester_user].filter(Boolean).join(" / ")],
    ["what", (r) => r.message],
  ], alerts.rows, "No alert in this period."));
  return "";
}

// ------------------------------------------------------------------------- the feed card

function describeSharing(sharing) {
  if (!sharing) return "";
  const conditions = sharing.conditions;
  const parts = [sharing.class.replaceAll("_", " ")];
  if (conditions?.departments?.length) parts.push(`for ${conditions.departments.join(", ")}`);
  if (sharing.legal_basis) parts.push(`(${sharing.legal_basis})`);
  return parts.join(" ");
}

// The feed's public card. The stream address is never shown, whoever is signed in: this page
// may hang on a wall.
export async function renderFeedCard(container, feedId, signal) {
  const feed = await getJson(pathFor(PATHS.feed, { feed_id: feedId }), {}, signal);
  const [lon, lat] = feed.location ? feed.location.coordinates : [null, null]; // null: unplaced
  const gb = feed.gb28181;
  const facts = [
    ["id", feed.id],
    ["kind", feed.kind],
    ["owner", feed.owner],
    ["status", feed.status + (feed.last_seen ? `, last seen ${formatTime(new Date(feed.last_seen))}` : "")],
    ["sharing", describeSharing(feed.sharing)],
    ["code", feed.code],
    gb ? ["GB/T 28181", `${gb.industry_label} · ${gb.type_label} · ${gb.network_label}`] : null,
    ["position", lon === null ? "not placed yet (no coordinates)" : `${lat.toFixed(6)}, ${lon.toFixed(6)}${feed.altitude !== null ? `, ${feed.altitude} m` : ""}`],
    feed.fov ? ["view", `heading ${feed.fov.heading}°, ${feed.fov.angle}° wide, ${feed.fov.range_m} m`] : null,
    feed.datastreams?.length ? ["measures", feed.datastreams.map((d) => `${d.name} (${d.unit})`).join(", ")] : null,
    feed.tags.length ? ["tags", feed.tags.join(", ")] : null,
    feed.catalog?.resource_name ? ["catalog", feed.catalog.resource_name] : null,
    ["stream", feed.stream.protocol],
    ["registered", formatTime(new Date(feed.created_at))],
  ].filter(Boolean);
  container.replaceChildren(
    element("h3", { text: feed.name }),
    element("dl", {}, facts.flatMap(([term, value]) => [
      element("dt", { text: term }), element("dd", { text: value }),
    ])),
  );
  container.hidden = false;
}
