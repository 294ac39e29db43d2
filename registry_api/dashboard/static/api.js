// Calls to the FeedGrid API: every path the dashboard uses, the token, errors as messages.

// Every API path the page calls, in one place (a test checks each against the OpenAPI).
export const PATHS = Object.freeze({
  whoami: "/v1/whoami",
  departments: "/v1/departments",
  points: "/v1/feeds/points",
  feed: "/v1/feeds/{feed_id}",
  usage: "/v1/analytics/usage",
  sharingMatrix: "/v1/analytics/sharing-matrix",
  decisions: "/v1/analytics/decisions",
  dormantFeeds: "/v1/analytics/dormant-feeds",
  alerts: "/v1/analytics/alerts",
  scorecards: "/v1/analytics/scorecards",
  feeds: "/v1/feeds",
  accessRequests: "/v1/access-requests",
  approve: "/v1/access-requests/{request_id}/approve",
  deny: "/v1/access-requests/{request_id}/deny",
  grants: "/v1/grants",
  revoke: "/v1/grants/{grant_id}/revoke",
});

// Endpoints this server may not have yet: a panel built on one hides itself on 404.
export const OPTIONAL_PATHS = Object.freeze({
  catalogTree: "/v1/catalog/tree",
});

// sessionStorage: the token lives as long as the tab, never in a cookie or on disk for good.
const TOKEN_KEY = "feedgrid.dashboard.token";

export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function storeToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A path template with its {placeholders} filled in, each value URL-encoded.
export function pathFor(template, values) {
  return template.replace(/\{(\w+)\}/g, (_, name) => encodeURIComponent(values[name]));
}

// GET a JSON answer. Arrays in params become repeated parameters; null/"" ones are left out.
export async function getJson(path, params = {}, signal = undefined) {
  return call("GET", path, params, undefined, signal);
}

// POST a JSON body; the JSON answer.
export async function postJson(path, body, signal = undefined) {
  return call("POST", path, {}, body, signal);
}

async function call(method, path, params, body, signal) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (Array.isArray(value)) {
      value.forEach((item) => url.searchParams.append(name, item));
    } else if (value !== null && value !== undefined && value !== "") {
      url.searchParams.set(name, String(value));
    }
  }
  const headers = { Authorization: `Bearer ${storedToken() || ""}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", `the API did not answer (${error.message})`);
  }
  if (!response.ok) {
    let answer = {};
    try {
      answer = await response.json();
    } catch {
      // not JSON: the status text says enough
    }
    throw new ApiError(response.status, answer.code || "", answer.message || response.statusText);
  }
  return response.json();
}

// What to tell the user about a failed call.
export function explain(error) {
  if (!(error instanceof ApiError)) return `Something went wrong: ${error.message}`;
  if (error.status === 401) {
    return `The API refused the token (401 ${error.code}): ${error.message}. Sign in again.`;
  }
  if (error.status === 403) {
    return `This token may not read this (403 ${error.code}): ${error.message}.`;
  }
  if (error.status === 0) return `The API did not answer: ${error.message}.`;
  return `The API answered ${error.status} ${error.code}: ${error.message}.`;
}
