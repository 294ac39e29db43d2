// The work people do on the page: a requester asks for the feeds of an area and follows the
// answers; an owner answers its inbox and revokes grants; both read their scorecard.
// Stream addresses and retrieval tokens are never fetched here: a grant's retrieval is for the
// department's players, not for a page that may hang on a wall.

import { OPTIONAL_PATHS, PATHS, ApiError, getJson, pathFor, postJson } from "./api.js";
import { element, formatCount, formatPercent, formatTime } from "./charts.js";

const $ = (id) => document.getElementById(id);
const AREA_FEEDS_SHOWN = 200;
const REQUEST_LIMIT = 100; // feeds one area request asks for at most
const STATUS_NAMES = { online: "online", offline: "offline", unknown: "never seen" };

function table(columns, rows, empty, attributes = {}) {
  if (!rows.length) return element("p", { class: "empty", text: empty });
  return element("table", attributes,
    element("thead", {}, element("tr", {}, columns.map(([label]) => element("th", { text: label })))),
    element("tbody", {}, rows.map((row) => element("tr", {},
      columns.map(([, cell]) => {
        const value = cell(row);
        return element("td", {}, value instanceof Node ? value : String(value ?? ""));
      })))));
}

function badge(text, kind) {
  return element("span", { class: `badge ${kind}`, text });
}

const OUTCOME_KIND = { granted: "good", denied: "critical", pending: "warning" };

function outcomeBadge(outcome) {
  return badge(outcome, OUTCOME_KIND[outcome] || "info");
}

function sharingClass(feed) {
  return (feed.sharing?.class || "").replaceAll("_", " ");
}

function say(id, text, kind = "note") {
  const node = $(id);
  node.textContent = text || "";
  node.className = `message ${kind}`;
  node.hidden = !text;
}

function describeArea(area) {
  if (!area) return "";
  if (area.near) {
    const [lon, lat, metres] = area.near;
    return `within ${metres} m of ${lat.toFixed(5)}°, ${lon.toFixed(5)}°`;
  }
  const [west, south, east, north] = area.bbox;
  return `the rectangle ${south.toFixed(4)}°…${north.toFixed(4)}° N, ${west.toFixed(4)}°…${east.toFixed(4)}° E`;
}

function selectionOf(area, kind) {
  const selection = area.near
    ? { near: area.near.map((value, i) => (i < 2 ? Number(value.toFixed(6)) : value)).join(",") }
    : { bbox: area.bbox.map((value) => value.toFixed(6)).join(",") };
  if (kind) selection.kind = kind;
  selection.limit = REQUEST_LIMIT;
  return selection;
}

export class WorkConsole {
  constructor({ onError }) {
    this.onError = onError;
    this.identity = null;
    this.area = null;
    this.areaFeeds = [];
    this.feedNames = new Map(); // feed id -> "name (code)", for the owner's inbox
    this.wire();
  }

  wire() {
    $("request-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.ask();
    });
    $("area-clear").addEventListener("click", () => this.onAreaCleared?.());
    $("requests-refresh").addEventListener("click", () => this.refreshRequester());
    $("inbox-refresh").addEventListener("click", () => this.refreshOwner());
  }

  // Which panels this identity works in.
  setIdentity(identity) {
    this.identity = identity;
    const roles = new Set(identity?.roles || []);
    const department = identity?.department;
    this.canRequest = Boolean(department) && roles.has("requester");
    this.canAnswer = Boolean(department) && roles.has("dept_admin");
    $("panel-request").hidden = !this.canRequest;
    $("panel-my-requests").hidden = !this.canRequest;
    $("panel-inbox").hidden = !this.canAnswer;
    $("panel-owner-grants").hidden = !this.canAnswer;
    $("work").hidden = !(this.canRequest || this.canAnswer);
    this.setArea(null);
    $("request-outcome").replaceChildren();
  }

  refresh() {
    if (this.canRequest) this.refreshRequester();
    if (this.canAnswer) this.refreshOwner();
  }

  // ----------------------------------------------------------------------- the area

  async setArea(area) {
    this.area = area;
    this.areaFeeds = [];
    $("area-summary").textContent = area
      ? `Area: ${describeArea(area)}.`
      : "Turn on “Select an area” above the map, then drag a rectangle or click a spot.";
    $("area-clear").hidden = !area;
    $("request-submit").disabled = !area;
    $("area-feeds").replaceChildren();
    if (!area) return;
    const params = { limit: AREA_FEEDS_SHOWN, kind: $("request-kind").value };
    if (area.near) params.near = area.near.join(",");
    else params.bbox = area.bbox.map((value) => value.toFixed(6)).join(",");
    try {
      const page = await getJson(PATHS.feeds, params);
      this.areaFeeds = page.items;
      const counts = {};
      for (const feed of page.items) counts[feed.sharing?.class || "?"] = (counts[feed.sharing?.class || "?"] || 0) + 1;
      const more = page.next_cursor ? ` (the first ${page.items.length}; the request asks for up to ${REQUEST_LIMIT})` : "";
      $("area-feeds").replaceChildren(
        element("p", { class: "muted", text: `${formatCount(page.items.length)} feeds in the area${more}: `
          + Object.entries(counts).map(([name, count]) => `${count} ${name.replaceAll("_", " ")}`).join(", ") }),
        table([
          ["feed", (f) => f.name],
          ["owner", (f) => f.owner],
          ["kind", (f) => f.kind],
          ["sharing", (f) => sharingClass(f)],
          ["status", (f) => STATUS_NAMES[f.status] || f.status],
        ], page.items.slice(0, 50), "No feed in this area.", { class: "area-feed-table" }),
      );
      $("request-submit").disabled = page.items.length === 0;
    } catch (error) {
      this.onError(error, "request-message");
    }
  }

  async ask() {
    if (!this.area) return;
    const actions = [...document.querySelectorAll("input[name=request-action]:checked")].map((box) => box.value);
    if (!actions.length) {
      say("request-message", "Choose at least one action.", "error");
      return;
    }
    const body = {
      selection: selectionOf(this.area, $("request-kind").value),
      purpose: $("request-purpose").value.trim(),
      actions,
      duration_minutes: Number($("request-duration").value),
    };
    say("request-message", "Asking…");
    $("request-submit").disabled = true;
    try {
      const answer = await postJson(PATHS.accessRequests, body);
      say("request-message", `Request ${answer.id.slice(0, 8)}: ${answer.status}. `
        + Object.entries(answer.counts).map(([name, count]) => `${count} ${name}`).join(", ") + ".");
      this.showOutcome(answer);
      this.refreshRequester();
    } catch (error) {
      this.onError(error, "request-message");
    } finally {
      $("request-submit").disabled = false;
    }
  }

  showOutcome(request) {
    const names = new Map(this.areaFeeds.map((feed) => [feed.id, feed.name]));
    $("request-outcome").replaceChildren(table([
      ["feed", (f) => names.get(f.feed_id) || f.feed_id],
      ["owner", (f) => f.owner_department || ""],
      ["outcome", (f) => outcomeBadge(f.outcome)],
      ["why", (f) => f.message || f.reason],
      ["answer due", (f) => (f.due_at ? formatTime(new Date(f.due_at)) : "")],
    ], request.feeds, "The request named no feed.", { class: "outcome-table" }));
  }

  // ----------------------------------------------------------------------- requester

  async refreshRequester() {
    try {
      const [requests, grants] = await Promise.all([
        getJson(PATHS.accessRequests, { scope: "requester", limit: 20 }),
        getJson(PATHS.grants, { scope: "requester", limit: 50 }),
      ]);
      $("my-requests").replaceChildren(table([
        ["asked", (r) => formatTime(new Date(r.created_at))],
        ["purpose", (r) => r.purpose],
        ["actions", (r) => r.actions.join(", ")],
        ["status", (r) => outcomeBadge(r.status)],
        ["feeds", (r) => Object.entries(r.counts).map(([name, count]) => `${count} ${name}`).join(", ")],
      ], requests, "Your department has asked for nothing yet.", { class: "my-requests-table" }));
      $("my-grants").replaceChildren(table([
        ["owner", (g) => g.owner_department],
        ["feeds", (g) => formatCount(g.feed_ids.length)],
        ["actions", (g) => g.actions.join(", ")],
        ["valid until", (g) => formatTime(new Date(g.valid_until))],
        ["request", (g) => g.request_id.slice(0, 8)],
      ], grants, "No grant in force for your department.", { class: "my-grants-table" }));
    } catch (error) {
      this.onError(error, "my-requests-message");
    }
  }

  // ----------------------------------------------------------------------- owner

  async refreshOwner() {
    try {
      const [inbox, grants] = await Promise.all([
        getJson(PATHS.accessRequests, { scope: "owner", status: "pending", limit: 50 }),
        getJson(PATHS.grants, { scope: "owner", limit: 50 }),
      ]);
      this.renderInbox(inbox);
      this.renderOwnerGrants(grants);
    } catch (error) {
      this.onError(error, "inbox-message");
    }
  }

  renderInbox(requests) {
    const own = this.identity?.department;
    const items = requests.map((request) => {
      const waiting = request.feeds.filter((f) => f.outcome === "pending" && f.owner_department === own);
      if (!waiting.length) return null;
      const comment = element("input", {
        type: "text", maxlength: "1000", placeholder: "comment to the requester", class: "inbox-comment",
      });
      const decide = async (verb, feedIds) => {
        try {
          await postJson(pathFor(verb === "approve" ? PATHS.approve : PATHS.deny, { request_id: request.id }), {
            feed_ids: feedIds, comment: comment.value.trim() || null,
          });
          say("inbox-message", `${verb === "approve" ? "Approved" : "Denied"} ${feedIds.length} feed(s) of ${request.requester_department}'s request.`);
          this.refreshOwner();
        } catch (error) {
          this.onError(error, "inbox-message");
        }
      };
      const due = waiting.map((f) => f.due_at).filter(Boolean).sort()[0];
      return element("li", { class: "inbox-item", "data-request": request.id },
        element("div", { class: "inbox-head" },
          element("strong", { text: request.requester_department }),
          ` asks for ${request.actions.join(", ")} for “${request.purpose}”, `
            + `${formatTime(new Date(request.valid_from))} to ${formatTime(new Date(request.valid_until))}`,
          due ? element("span", { class: "due", text: ` · answer due ${formatTime(new Date(due))}` }) : ""),
        table([
          ["feed", (f) => element("span", { class: "feed-name", "data-feed": f.feed_id, title: f.feed_id, text: this.feedNames.get(f.feed_id) || f.feed_id })],
          ["why it waits", (f) => f.message || f.reason],
          ["due", (f) => (f.due_at ? formatTime(new Date(f.due_at)) : "")],
          ["", (f) => element("span", { class: "row-buttons" },
            element("button", { type: "button", class: "approve-one", text: "approve", on: { click: () => decide("approve", [f.feed_id]) } }),
            element("button", { type: "button", class: "deny-one", text: "deny", on: { click: () => decide("deny", [f.feed_id]) } }))],
        ], waiting, ""),
        element("div", { class: "inbox-actions" }, comment,
          element("button", { type: "button", class: "approve-all", text: `approve all ${waiting.length}`, on: { click: () => decide("approve", waiting.map((f) => f.feed_id)) } }),
          element("button", { type: "button", class: "deny-all", text: "deny all", on: { click: () => decide("deny", waiting.map((f) => f.feed_id)) } })),
      );
    }).filter(Boolean);
    $("inbox").replaceChildren(items.length
      ? element("ul", { class: "inbox-list" }, items)
      : element("p", { class: "empty", text: "Nothing waits for your answer." }));
    this.nameFeeds();
  }

  // The inbox names its feeds as the owner knows them (name and code), read from the
  // owner's own feed documents, a few at a time; an id stays where a feed cannot be read.
  async nameFeeds() {
    const spans = [...document.querySelectorAll("#inbox .feed-name")];
    const missing = [...new Set(spans.map((span) => span.dataset.feed))].filter((id) => !this.feedNames.has(id));
    const queue = missing.slice(0, 200);
    const worker = async () => {
      while (queue.length) {
        const id = queue.shift();
        try {
          const feed = await getJson(pathFor(PATHS.feed, { feed_id: id }));
          this.feedNames.set(id, feed.code ? `${feed.name} (${feed.code})` : feed.name);
        } catch {
          this.feedNames.set(id, id);
        }
      }
    };
    await Promise.all([1, 2, 3, 4].map(worker));
    for (const span of document.querySelectorAll("#inbox .feed-name")) {
      const name = this.feedNames.get(span.dataset.feed);
      if (name) span.textContent = name;
    }
  }

  renderOwnerGrants(grants) {
    const revoke = async (grant, reasonInput) => {
      const reason = reasonInput.value.trim();
      if (!reason) {
        say("owner-grants-message", "Say why the grant is revoked (the requester sees it).", "error");
        reasonInput.focus();
        return;
      }
      try {
        await postJson(pathFor(PATHS.revoke, { grant_id: grant.id }), { reason });
        say("owner-grants-message", `Revoked ${grant.requester_department}'s grant on ${grant.feed_ids.length} feed(s).`);
        this.refreshOwner();
      } catch (error) {
        this.onError(error, "owner-grants-message");
      }
    };
    $("owner-grants").replaceChildren(table([
      ["to", (g) => g.requester_department],
      ["feeds", (g) => formatCount(g.feed_ids.length)],
      ["actions", (g) => g.actions.join(", ")],
      ["until", (g) => formatTime(new Date(g.valid_until))],
      ["", (g) => {
        const reason = element("input", { type: "text", maxlength: "500", placeholder: "reason", class: "revoke-reason" });
        return element("span", { class: "row-buttons" }, reason,
          element("button", { type: "button", class: "revoke", text: "revoke", on: { click: () => revoke(g, reason) } }));
      }],
    ], grants, "No grant in force on your department's feeds.", { class: "owner-grants-table" }));
  }
}

// ------------------------------------------------------------------------- scorecard

// Per department: feeds registered and their liveness (from the registry's index, the map's
// own columns), requests answered within the deadline and the shared share (analytics).
export async function renderScorecard(period, signal, points) {
  const answer = await getJson(PATHS.scorecards, { from: period.from, to: period.to }, signal);
  const liveness = new Map();
  if (points) {
    for (let i = 0; i < points.count; i += 1) {
      const owner = points.owners[points.owner[i]];
      const status = points.statuses[points.status[i]];
      if (!liveness.has(owner)) liveness.set(owner, { online: 0, offline: 0, unknown: 0 });
      liveness.get(owner)[status] += 1;
    }
  }
  const rows = answer.rows.filter((row) => row.feeds > 0 || row.requests_received > 0 || row.retrievals_of_others > 0);
  const shared = (row) => (row.feeds ? (row.feeds_unconditional + row.feeds_conditional) / row.feeds : null);
  const live = (row, status) => formatCount(liveness.get(row.department)?.[status] ?? 0);
  $("scorecard").replaceChildren(table([
    ["department", (r) => r.department],
    ["feeds", (r) => formatCount(r.feeds)],
    ["online", (r) => live(r, "online")],
    ["offline", (r) => live(r, "offline")],
    ["never seen", (r) => live(r, "unknown")],
    ["shared", (r) => formatPercent(shared(r))],
    ["requests answered in time", (r) => `${formatCount(r.requests_answered_in_time)} / ${formatCount(r.requests_due)}`
      + (r.share_answered_in_time === null ? "" : ` (${formatPercent(r.share_answered_in_time)})`)],
    ["used by others", (r) => formatCount(r.retrievals_by_others)],
    ["uses others'", (r) => formatCount(r.retrievals_of_others)],
  ], rows, "No department has feeds or requests yet.", { class: "scorecard-table" }));
  return "";
}

// ------------------------------------------------------------------------- catalog tree

// The GB/T 28181 catalog tree, when this server has the endpoint: the panel stays hidden when
// the API does not describe it or answers 404, and shows the first levels of the tree otherwise.
let documentedPaths = null; // the server's OpenAPI paths, read once per page

async function serverHas(path) {
  if (!documentedPaths) {
    documentedPaths = fetch("/openapi.json", { cache: "no-store", credentials: "omit" })
      .then((response) => (response.ok ? response.json() : { paths: {} }))
      .then((schema) => new Set(Object.keys(schema.paths || {})))
      .catch(() => new Set());
  }
  return (await documentedPaths).has(path);
}

export async function renderCatalogTree(signal) {
  const panel = $("panel-catalog");
  // Asked of the API's own description first, so an older server costs no 404.
  if (!(await serverHas(OPTIONAL_PATHS.catalogTree))) {
    panel.hidden = true;
    return "";
  }
  let tree;
  try {
    tree = await getJson(OPTIONAL_PATHS.catalogTree, {}, signal);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
      panel.hidden = true;
      return "";
    }
    panel.hidden = false;
    throw error;
  }
  panel.hidden = false;
  // GET /v1/catalog/tree: {roots: [node], nodes}; a node counts the live channels directly
  // beneath it, the label the ones anywhere beneath.
  const roots = Array.isArray(tree.roots) ? tree.roots : [];
  const beneath = (node) => (node.channels || 0) + (node.children || []).reduce((sum, child) => sum + beneath(child), 0);
  const KINDS = { platform: "platform", business_group: "business group", virtual_organisation: "organisation", device: "device", channel: "channel" };
  const label = (node) => {
    const channels = beneath(node);
    return [node.name || node.id, `${KINDS[node.kind] || node.kind} of ${node.department}`,
      node.kind === "channel" ? "" : `${formatCount(channels)} channel${channels === 1 ? "" : "s"}`]
      .filter(Boolean).join(" · ");
  };
  const branch = (nodes, depth) => element("ul", { class: "tree" }, [
    ...nodes.slice(0, 100).map((node) => {
      const children = Array.isArray(node.children) ? node.children : [];
      if (!children.length || depth >= 4) return element("li", { text: label(node), "data-node": node.id });
      return element("li", { "data-node": node.id }, element("details", { open: depth === 0 ? "" : undefined },
        element("summary", { text: label(node) }), branch(children, depth + 1)));
    }),
    ...(nodes.length > 100 ? [element("li", { class: "muted", text: `and ${formatCount(nodes.length - 100)} more` })] : []),
  ]);
  $("catalog-tree").replaceChildren(roots.length ? branch(roots, 0) : element("p", { class: "empty", text: "The catalog is empty." }));
  return "";
}

export function statusCounts(points) {
  const counts = { online: 0, offline: 0, unknown: 0 };
  if (!points) return counts;
  for (const code of points.status) counts[points.statuses[code]] = (counts[points.statuses[code]] || 0) + 1;
  return counts;
}

export { STATUS_NAMES };
