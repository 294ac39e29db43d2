// The dashboard page: sign-in, the caller's identity, the map panel, and the refresh of the
// analytics panels. Every call goes to this API with the pasted bearer token.

import { ApiError, PATHS, explain, forgetToken, getJson, storeToken, storedToken } from "./api.js";
import { element, formatCount, swatch } from "./charts.js";
import { STATUS_NAMES, WorkConsole, renderCatalogTree, renderScorecard, statusCounts } from "./console.js";
import { FeedMap } from "./feedmap.js";
import {
  departmentColor, renderDecisions, renderFeedCard, renderHealth, renderSharing, renderUsage,
  setDepartments,
} from "./panels.js";

const $ = (id) => document.getElementById(id);
const STATUS_COLORS = { online: "#2ca02c", offline: "#d62728", unknown: "#9e9e9e" };
const REFRESH_MS = 60000;
// Minute buckets over more than a week would be hundreds of thousands of rows.
const LONGEST_MINUTE_PERIOD_S = 7 * 86400;

const state = {
  identity: null,
  departmentNames: new Map(),
  points: null,
  allPoints: null, // the last unfiltered load: the scorecard's liveness counts
  colorBy: "owner",
  hidden: { owner: new Set(), status: new Set() },
  analytics: null, // AbortController of the analytics refresh in flight
  pointsLoad: null, // AbortController of the points load in flight
  cardLoad: null,
  timer: 0,
};

function showMessage(id, text, kind = "error") {
  const node = $(id);
  node.textContent = text || "";
  node.className = `message ${kind}`;
  node.hidden = !text;
}

// A failed call: 401 ends the session (with the reason), anything else shows where it happened.
function report(error, messageId) {
  if (error.name === "AbortError") return;
  if (error instanceof ApiError && error.status === 401) {
    signOut(explain(error));
    return;
  }
  showMessage(messageId, explain(error));
}

// ------------------------------------------------------------------------- session

function signOut(reason = "") {
  forgetToken();
  state.analytics?.abort();
  state.pointsLoad?.abort();
  state.cardLoad?.abort();
  clearInterval(state.timer);
  $("auto-refresh").checked = false;
  state.identity = null;
  state.allPoints = null;
  $("dashboard").hidden = true;
  $("identity").hidden = true;
  $("sign-in").hidden = false;
  showMessage("sign-in-message", reason);
  $("token-input").focus();
}

async function signIn() {
  showMessage("global-message", "");
  let identity;
  try {
    identity = await getJson(PATHS.whoami);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      signOut(explain(error));
    } else {
      showMessage("global-message", explain(error));
      $("sign-in").hidden = false;
    }
    return;
  }
  state.identity = identity;
  const where = identity.department ? `department ${identity.department}` : "the city";
  const scope = identity.analytics_scope === "city"
    ? "analytics of the whole city"
    : identity.analytics_scope
      ? `analytics of ${identity.analytics_scope}`
      : "no analytics";
  $("identity-text").textContent =
    `Signed in as ${identity.subject} (${where}; ${identity.roles.join(", ") || "no roles"}; ${scope})`;
  $("identity").hidden = false;
  $("sign-in").hidden = true;
  showMessage("sign-in-message", "");
  $("dashboard").hidden = false;
  work.setIdentity(identity);
  setAreaMode(false);
  await loadDepartments();
  await loadPoints(true);
  refreshAnalytics();
  work.refresh();
}

async function loadDepartments() {
  try {
    const departments = await getJson(PATHS.departments);
    setDepartments(departments.map((department) => department.code));
    state.departmentNames = new Map(departments.map((d) => [d.code, d.name]));
    const select = $("map-department");
    const chosen = select.value;
    select.replaceChildren(
      element("option", { value: "", text: "all" }),
      ...departments.map((d) => element("option", { value: d.code, text: `${d.code} · ${d.name}` })),
    );
    select.value = chosen;
  } catch (error) {
    report(error, "map-message");
  }
}

// ------------------------------------------------------------------------- map

const work = new WorkConsole({ onError: report });

function setAreaMode(on) {
  map.setAreaMode(on);
  $("select-area").setAttribute("aria-pressed", String(on));
  if (!on) {
    map.clearArea();
    work.setArea(null);
  }
}
work.onAreaCleared = () => setAreaMode(false);

const map = new FeedMap($("map"), {
  onArea: (area) => work.setArea(area),
  onSelect: (feedId) => showCard(feedId),
  onHover: ([lon, lat]) => {
    $("map-cursor").textContent = `${lat.toFixed(5)}°, ${lon.toFixed(5)}°`;
  },
});

async function loadPoints(fit) {
  state.pointsLoad?.abort();
  const controller = new AbortController();
  state.pointsLoad = controller;
  const viewOnly = $("map-view-only").checked;
  const params = {
    kind: $("map-kind").value,
    department: $("map-department").value,
    bbox: viewOnly ? map.bbox().map((value) => value.toFixed(6)).join(",") : null,
  };
  showMessage("map-message", "Loading the feeds…", "note");
  try {
    const started = performance.now();
    const points = await getJson(PATHS.points, params, controller.signal);
    state.points = points;
    if (!params.kind && !params.department && !params.bbox) state.allPoints = points;
    showStatusCounts(points);
    map.setPoints(points);
    applyColors();
    if (fit && !viewOnly) map.fit();
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    showMessage("map-message", points.count ? "" : "No feed matches these filters.", "note");
    $("map-total").textContent =
      `${formatCount(points.count)} feeds${viewOnly ? " in the loaded area" : ""} (loaded in ${seconds} s)`;
    $("feed-card").hidden = true;
  } catch (error) {
    report(error, "map-message");
  }
}

// Online / offline / never seen: the liveness of the feeds on the map, always in view.
function showStatusCounts(points) {
  const counts = statusCounts(points);
  $("status-counts").replaceChildren(...Object.entries(STATUS_NAMES).map(([status, name]) => element("li",
    { "data-status": status }, swatch(STATUS_COLORS[status]), `${formatCount(counts[status] || 0)} ${name}`)));
}

function applyColors() {
  const points = state.points;
  if (!points) return;
  const byOwner = state.colorBy === "owner";
  const names = byOwner ? points.owners : points.statuses;
  const categories = byOwner ? points.owner : points.status;
  const colors = names.map((name) => (byOwner ? departmentColor(name) : STATUS_COLORS[name] || "#555"));
  const counts = new Array(names.length).fill(0);
  for (const code of categories) counts[code] += 1;
  const hiddenNames = state.hidden[state.colorBy];
  map.setCategories(categories, colors);
  map.setHidden(names.flatMap((name, code) => (hiddenNames.has(name) ? [code] : [])));
  $("legend-title").textContent = byOwner ? "Owner departments" : "Status";
  $("legend").replaceChildren(...names.map((name, code) => {
    const label = byOwner && state.departmentNames.has(name)
      ? `${name} · ${state.departmentNames.get(name)}`
      : (byOwner ? name : STATUS_NAMES[name] || name);
    const button = element("button", {
      type: "button",
      class: hiddenNames.has(name) ? "legend-entry off" : "legend-entry",
      "aria-pressed": String(!hiddenNames.has(name)),
      title: hiddenNames.has(name) ? "Show these feeds" : "Hide these feeds",
      on: {
        click: () => {
          if (hiddenNames.has(name)) hiddenNames.delete(name);
          else hiddenNames.add(name);
          applyColors();
        },
      },
    }, swatch(colors[code]), element("span", { class: "legend-name", text: label }),
    element("span", { class: "legend-count", text: formatCount(counts[code]) }));
    return element("li", {}, button);
  }));
}

function setColorBy(mode) {
  state.colorBy = mode;
  $("color-owner").setAttribute("aria-pressed", String(mode === "owner"));
  $("color-status").setAttribute("aria-pressed", String(mode === "status"));
  applyColors();
}

async function showCard(feedId) {
  const card = $("feed-card");
  state.cardLoad?.abort();
  if (!feedId) {
    card.hidden = true;
    return;
  }
  const controller = new AbortController();
  state.cardLoad = controller;
  card.replaceChildren(element("p", { class: "muted", text: "Loading the feed…" }));
  card.hidden = false;
  try {
    await renderFeedCard(card, feedId, controller.signal);
  } catch (error) {
    if (error.name === "AbortError") return;
    if (error instanceof ApiError && error.status === 401) {
      signOut(explain(error));
      return;
    }
    card.replaceChildren(element("p", { class: "message error", text: explain(error) }));
  }
}

// ------------------------------------------------------------------------- analytics

function currentPeriod() {
  const seconds = Number($("period").value);
  const to = new Date();
  const from = new Date(to.getTime() - seconds * 1000);
  return { from: from.toISOString(), to: to.toISOString(), seconds };
}

const PANELS = [
  [(period, signal) => renderScorecard(period, signal, state.allPoints), "scorecard-message"],
  [(period, signal) => renderCatalogTree(signal), "catalog-message"],
  [renderUsage, "usage-message"],
  [renderSharing, "sharing-message"],
  [renderDecisions, "decisions-message"],
  [renderHealth, "health-message"],
];

function refreshAnalytics() {
  if (!state.identity) return;
  state.analytics?.abort();
  const controller = new AbortController();
  state.analytics = controller;
  const period = currentPeriod();
  const minute = $("usage-granularity").querySelector("option[value=minute]");
  minute.disabled = period.seconds > LONGEST_MINUTE_PERIOD_S;
  if (minute.disabled && $("usage-granularity").value === "minute") {
    $("usage-granularity").value = "hour";
  }
  const runs = PANELS.map(([render, messageId]) => render(period, controller.signal)
    .then((note) => showMessage(messageId, note, "note"))
    .catch((error) => report(error, messageId)));
  Promise.all(runs).then(() => {
    if (!controller.signal.aborted) {
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    }
  });
}

function runPanel(render, messageId) {
  if (!state.identity) return;
  const period = currentPeriod();
  render(period, state.analytics?.signal)
    .then((note) => showMessage(messageId, note, "note"))
    .catch((error) => report(error, messageId));
}

// ------------------------------------------------------------------------- wiring

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token-input").value.trim().replace(/^Bearer\s+/i, "");
  $("token-input").value = "";
  if (!token) return;
  storeToken(token);
  signIn();
});
$("sign-out").addEventListener("click", () => signOut(""));
$("period").addEventListener("change", refreshAnalytics);
$("refresh").addEventListener("click", refreshAnalytics);
$("auto-refresh").addEventListener("change", (event) => {
  clearInterval(state.timer);
  if (event.target.checked) state.timer = setInterval(refreshAnalytics, REFRESH_MS);
});
$("usage-granularity").addEventListener("change", () => runPanel(renderUsage, "usage-message"));
$("usage-metric").addEventListener("change", () => runPanel(renderUsage, "usage-message"));
$("sharing-metric").addEventListener("change", () => runPanel(renderSharing, "sharing-message"));
$("map-kind").addEventListener("change", () => loadPoints(true));
$("map-department").addEventListener("change", () => loadPoints(true));
$("map-reload").addEventListener("click", () => loadPoints(false));
$("color-owner").addEventListener("click", () => setColorBy("owner"));
$("color-status").addEventListener("click", () => setColorBy("status"));
$("zoom-in").addEventListener("click", () => map.zoomBy(2));
$("zoom-out").addEventListener("click", () => map.zoomBy(0.5));
$("zoom-fit").addEventListener("click", () => map.fit());
$("select-area").addEventListener("click", () => setAreaMode(!map.areaMode));

if (storedToken()) {
  signIn();
} else {
  signOut("");
}
