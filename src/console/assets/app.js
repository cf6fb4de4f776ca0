// The Portcullis console: one page over the admin API (/v1/), signed in with a session
// cookie. Everything shown is built with text nodes: hosts, paths and names come from
// workloads and operators and are never read as markup.


const state = { me: null, csrf: null };

// ------------------------------------------------------------------ the DOM and the API

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on:")) node.addEventListener(name.slice(3), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// An XML namespace name, not an address: nothing is fetched from it.
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function status(text) {
  document.getElementById("status").textContent = text || "";
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { "accept": "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["x-csrf-token"] = state.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin", cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch (_) { parsed = null; }
  if (response.status === 401 && path !== "/v1/session") {
    showSignIn("Your session has ended: sign in again.");
  }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

// ------------------------------------------------------------------ signing in and out

function showSignIn(message) {
  state.me = null;
  state.csrf = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("page").hidden = true;
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = message || "";
  document.getElementById("token").focus();
}

function signedIn(me) {
  state.me = me;
  state.csrf = me.csrf_token || null;
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("who-name").textContent = `${me.name} (${me.role})`;
  document.getElementById("page").hidden = false;
  route();
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  try {
    const me = await api("POST", "/v1/session", { token: input.value });
    input.value = "";
    signedIn(me);
  } catch (e) {
    input.value = "";
    document.getElementById("sign-in-error").textContent = e.message;
  }
}

async function signOut() {
  try { await api("DELETE", "/v1/session"); } catch (_) { /* gone already */ }
  showSignIn("Signed out.");
}

// ------------------------------------------------------------------ pages

const PAGES = { overview, policies, audit };

function route() {
  if (!state.me) return;
  const [name, rest] = (location.hash.replace(/^#\//, "") || "overview").split("?");
  const page = PAGES[name] ? name : "overview";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === `#/${page}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const root = document.getElementById("page");
  root.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  PAGES[page](root, new URLSearchParams(rest || "")).catch((e) => {
    root.replaceChildren(el("p", { class: "error", role: "alert" }, e.message));
  });
}

const WINDOWS = [["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"]];
const WINDOW_SECONDS = { "1h": 3600, "24h": 86400, "7d": 604800 };

function windowSelect(id, value, onChange) {
  return el("label", { for: id }, "Window",
    el("select", { id, "on:change": (e) => onChange(e.target.value) },
      WINDOWS.map(([w, label]) => el("option", { value: w, selected: w === value }, label))));
}

// Audit events of a window, newest first, up to `cap` of them.
async function auditEvents(params, cap) {
  const events = [];
  let cursor = null;
  while (events.length < cap) {
    const page = await api("GET", `/v1/audit${query({ ...params, limit: 1000, cursor })}`);
    events.push(...page.events);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return events.slice(0, cap);
}

const SAMPLE = 5000;

async function overview(root, params) {
  const win = params.get("window") || "24h";
  const [fires, events] = await Promise.all([
    api("GET", `/v1/fire-counts${query({ window: win })}`),
    auditEvents({ since: win }, SAMPLE),
  ]);
  const totals = { ALLOWED: 0, FLAGGED: 0, DENIED: 0 };
  for (const p of fires.policies) for (const d of Object.keys(totals)) totals[d] += p[d] || 0;
  for (const d of Object.keys(totals)) totals[d] += fires.no_policy[d] || 0;
  const all = totals.ALLOWED + totals.FLAGGED + totals.DENIED;
  const rate = (n) => (all ? `${((100 * n) / all).toFixed(1)}%` : "—");
  const seconds = WINDOW_SECONDS[win];
  const denied = events.filter((e) => e.decision === "DENIED");
  root.replaceChildren(
    el("h1", {}, "Overview"),
    el("div", { class: "controls" },
      windowSelect("overview-window", win, (w) => { location.hash = `#/overview?window=${w}`; })),
    el("div", { class: "cards" },
      card("Decisions", all.toLocaleString()),
      card("Per second", perSecond(all / seconds)),
      card("Denied", rate(totals.DENIED)),
      card("Flagged", rate(totals.FLAGGED))),
    el("div", { class: "charts" },
      el("figure", {}, el("figcaption", {}, "Decisions over time"),
        timeChart(events, seconds),
        events.length >= SAMPLE ? el("p", { class: "muted" }, `The newest ${SAMPLE} decisions.`) : null),
      el("figure", {}, el("figcaption", {}, "Top deciding policies"),
        barChart(fires.policies.filter((p) => p.total > 0).slice(0, 8).map((p) => [p.policy, p.total]))),
      el("figure", {}, el("figcaption", {}, "Top denied hosts"),
        barChart(topCounts(denied, (e) => e.host), "deny")),
      el("figure", {}, el("figcaption", {}, "Top denied identities"),
        barChart(topCounts(denied, identityName), "deny"))),
  );
}

function perSecond(rate) {
  if (rate === 0) return "0";
  return rate >= 10 ? rate.toFixed(0) : rate.toPrecision(2);
}

function card(label, value) {
  return el("div", { class: "card" }, el("div", { class: "muted" }, label), el("div", { class: "value" }, value));
}

// Who sent a request: its identity's name, else its SPIFFE id, else its address (without
// the connection's port, so one workload is one row).
function identityName(e) {
  const id = e.identity || {};
  const address = id.source ? id.source.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1") : null;
  return id.name || id.spiffe_id || address || id.kind || "unknown";
}

function topCounts(events, key) {
  const counts = new Map();
  for (const e of events) { const k = key(e) || "—"; counts.set(k, (counts.get(k) || 0) + 1); }
  return [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8);
}

// Horizontal bars: [[label, count]]; an accessible table of the same data beside it.
function barChart(rows, kind) {
  if (!rows.length) return el("p", { class: "muted" }, "Nothing in this window.");
  const max = Math.max(...rows.map((r) => r[1]));
  const height = rows.length * 22;
  const chart = svg("svg", { viewBox: `0 0 400 ${height}`, width: "100%", role: "img",
    "aria-label": rows.map(([l, n]) => `${l}: ${n}`).join(", ") },
  rows.map(([label, n], i) => [
    svg("rect", { x: 160, y: i * 22 + 3, height: 16, width: Math.max(1, (200 * n) / max),
      class: kind === "deny" ? "bar-deny" : "bar-plain" }),
    svg("text", { x: 0, y: i * 22 + 15 }, label.length > 24 ? `${label.slice(0, 23)}…` : label),
    svg("text", { x: 165 + (200 * n) / max, y: i * 22 + 15 }, n),
  ]));
  return chart;
}

// Stacked bars of allowed / flagged / denied per time bucket.
function timeChart(events, seconds) {
  if (!events.length) return el("p", { class: "muted" }, "Nothing in this window.");
  const buckets = 48;
  const end = Date.now();
  const start = end - seconds * 1000;
  const counts = Array.from({ length: buckets }, () => ({ ALLOWED: 0, FLAGGED: 0, DENIED: 0 }));
  for (const e of events) {
    const t = Date.parse(e.ts);
    if (!(t >= start)) continue;
    const i = Math.min(buckets - 1, Math.floor(((t - start) / (end - start)) * buckets));
    counts[i][e.decision] = (counts[i][e.decision] || 0) + 1;
  }
  const max = Math.max(1, ...counts.map((c) => c.ALLOWED + c.FLAGGED + c.DENIED));
  const w = 400 / buckets;
  const bars = [];
  counts.forEach((c, i) => {
    let y = 120;
    for (const [d, cls] of [["ALLOWED", "bar-allow"], ["FLAGGED", "bar-flag"], ["DENIED", "bar-deny"]]) {
      const h = (110 * c[d]) / max;
      if (!h) continue;
      y -= h;
      bars.push(svg("rect", { x: i * w, y, width: Math.max(1, w - 1), height: h, class: cls }));
    }
  });
  return svg("svg", { viewBox: "0 0 400 135", width: "100%", role: "img",
    "aria-label": `Decisions per ${Math.round(seconds / buckets / 60)} minutes: allowed green, flagged amber, denied red` },
  bars, svg("text", { x: 0, y: 133 }, new Date(start).toLocaleString()),
  svg("text", { x: 400, y: 133, "text-anchor": "end" }, "now"));
}

function sparkline(points) {
  const max = Math.max(1, ...points);
  const step = 80 / Math.max(1, points.length - 1);
  const d = points.map((p, i) => `${i ? "L" : "M"}${(i * step).toFixed(1)},${(18 - (16 * p) / max).toFixed(1)}`).join(" ");
  return svg("svg", { viewBox: "0 0 80 20", width: 80, height: 20, "aria-hidden": "true" },
    svg("path", { d, class: "spark" }));
}

// ------------------------------------------------------------------ policies

const PAGE_SIZE = 100;

async function policies(root, params) {
  const win = params.get("window") || "24h";
  const [listed, events] = await Promise.all([
    api("GET", `/v1/policies${query({ window: win })}`),
    auditEvents({ since: win }, SAMPLE),
  ]);
  const seconds = WINDOW_SECONDS[win];
  const start = Date.now() - seconds * 1000;
  const series = new Map();
  for (const e of events) {
    if (!e.policy) continue;
    const s = series.get(e.policy) || new Array(12).fill(0);
    const i = Math.min(11, Math.max(0, Math.floor(((Date.parse(e.ts) - start) / (seconds * 1000)) * 12)));
    s[i] += 1;
    series.set(e.policy, s);
  }
  const rows = listed.policies.map((item) => ({
    name: item.name, version: item.version, action: item.policy.action,
    priority: item.policy.priority, status: item.policy.status || "active",
    tags: item.policy.match_tags || [], fires: (item.fires && item.fires.total) || 0,
  }));
  const view = { search: params.get("q") || "", action: "", status: "", sort: "priority", desc: false, page: 0 };
  const body = el("tbody");
  const pager = el("div", { class: "pager" });
  const count = el("span", { class: "muted", role: "status" });

  function render() {
    const q = view.search.toLowerCase();
    let shown = rows.filter((r) => (!q || r.name.toLowerCase().includes(q) || r.tags.some((t) => t.toLowerCase().includes(q)))
      && (!view.action || r.action === view.action) && (!view.status || r.status === view.status));
    shown.sort((a, b) => {
      const x = a[view.sort], y = b[view.sort];
      const c = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
      return view.desc ? -c : c;
    });
    const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
    view.page = Math.min(view.page, pages - 1);
    count.textContent = `${shown.length} of ${rows.length} policies`;
    shown = shown.slice(view.page * PAGE_SIZE, (view.page + 1) * PAGE_SIZE);
    body.replaceChildren(...shown.map((r) => el("tr", {},
      el("td", {}, r.name),
      el("td", { class: `action-${r.action}` }, r.action),
      el("td", {}, r.priority),
      el("td", {}, r.tags.map((t) => el("span", { class: "pill" }, t))),
      el("td", {}, r.status),
      el("td", {}, r.fires.toLocaleString(), " ", sparkline(series.get(r.name) || new Array(12).fill(0))),
    )));
    pager.replaceChildren(
      el("button", { type: "button", disabled: view.page === 0, "on:click": () => { view.page -= 1; render(); } }, "Previous"),
      el("span", {}, `Page ${view.page + 1} of ${pages}`),
      el("button", { type: "button", disabled: view.page >= pages - 1, "on:click": () => { view.page += 1; render(); } }, "Next"));
  }

  const header = (label, key) => el("th", { scope: "col", "aria-sort": view.sort === key ? (view.desc ? "descending" : "ascending") : null },
    el("button", { type: "button", "on:click": () => {
      view.desc = view.sort === key ? !view.desc : false;
      view.sort = key;
      render();
      for (const th of root.querySelectorAll("th")) th.removeAttribute("aria-sort");
      th_(key).setAttribute("aria-sort", view.desc ? "descending" : "ascending");
    } }, label));
  const headers = { name: header("Name", "name"), action: header("Action", "action"), priority: header("Priority", "priority"),
    tags: el("th", { scope: "col" }, "Scope tags"), status: header("Status", "status"), fires: header(`Fires (${win})`, "fires") };
  const th_ = (key) => headers[key];

  root.replaceChildren(
    el("h1", {}, "Policies"),
    el("div", { class: "controls" },
      el("label", { for: "policy-search" }, "Search",
        el("input", { id: "policy-search", type: "search", value: view.search,
          "on:input": (e) => { view.search = e.target.value; view.page = 0; render(); } })),
      el("label", { for: "policy-action" }, "Action",
        el("select", { id: "policy-action", "on:change": (e) => { view.action = e.target.value; view.page = 0; render(); } },
          ["", "allow", "flag", "deny", "gated"].map((a) => el("option", { value: a }, a || "any")))),
      el("label", { for: "policy-status" }, "Status",
        el("select", { id: "policy-status", "on:change": (e) => { view.status = e.target.value; view.page = 0; render(); } },
          ["", "active", "disabled", "draft"].map((a) => el("option", { value: a }, a || "any")))),
      windowSelect("policy-window", win, (w) => { location.hash = `#/policies?window=${w}`; }),
      count),
    el("table", {}, el("thead", {}, el("tr", {}, Object.values(headers))), body),
    pager,
  );
  render();
}

// ------------------------------------------------------------------ audit

async function audit(root, params) {
  const filters = {};
  for (const key of ["since", "decision", "policy", "host", "tag"]) filters[key] = params.get(key) || "";
  if (!filters.since) filters.since = "24h";
  const page = await api("GET", `/v1/audit${query({ ...filters, limit: 100, cursor: params.get("cursor") })}`);
  const field = (key, label, input) => el("label", { for: `audit-${key}` }, label, input);
  const text = (key) => el("input", { id: `audit-${key}`, name: key, value: filters[key] });
  const form = el("form", { class: "controls", "on:submit": (e) => {
    e.preventDefault();
    const data = new FormData(e.target);
    const next = {};
    for (const [k, v] of data.entries()) next[k] = String(v).trim();
    location.hash = `#/audit${query(next)}`;
  } },
  field("since", "Since (1h, or a time)", text("since")),
  field("decision", "Decision", el("select", { id: "audit-decision", name: "decision" },
    ["", "allowed", "flagged", "denied"].map((d) => el("option", { value: d, selected: d === filters.decision }, d || "any")))),
  field("policy", "Policy", text("policy")),
  field("host", "Host", text("host")),
  field("tag", "Tags (a,b)", text("tag")),
  el("button", { type: "submit" }, "Search"));
  const rows = page.events.map((e) => el("tr", {},
    el("td", {}, e.ts ? new Date(e.ts).toLocaleString() : ""),
    el("td", { class: e.decision }, e.decision),
    el("td", {}, `${e.method || ""} ${e.scheme || ""}://${e.host || ""}${e.port ? `:${e.port}` : ""}${e.path || ""}`),
    el("td", {}, e.policy ? el("a", { href: `#/policies?q=${encodeURIComponent(e.policy)}` },
      e.policy, e.policy_version ? ` v${e.policy_version}` : "") : el("span", { class: "muted" }, e.reason || "—")),
    el("td", {}, identityName(e)),
    el("td", {}, (e.tags || []).map((t) => el("span", { class: "pill" }, t))),
  ));
  const next = page.next_cursor
    ? el("a", { href: `#/audit${query({ ...filters, cursor: page.next_cursor })}` }, "Older →") : null;
  root.replaceChildren(
    el("h1", {}, "Audit"),
    form,
    rows.length ? el("table", {},
      el("thead", {}, el("tr", {}, ["Time", "Decision", "Request", "Policy", "Identity", "Tags"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)) : el("p", { class: "muted" }, "No audited request matches."),
    el("div", { class: "pager" }, next),
  );
}

// ------------------------------------------------------------------ start

async function start() {
  document.getElementById("sign-in-form").addEventListener("submit", signIn);
  document.getElementById("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  try {
    const me = await api("GET", "/v1/session");
    if (me.session) signedIn(me);
    else showSignIn();
  } catch (_) {
    showSignIn();
  }
  status("");
}

start();
