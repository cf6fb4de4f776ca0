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

// Replaces a node's children; null, undefined and false stand for nothing.
function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

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
  showSingleSignOn();
}

// The single sign-on button, when the server has an issuer (admin.oidc).
async function showSingleSignOn() {
  try {
    const { oidc } = await api("GET", "/v1/session/providers");
    if (!oidc) return;
    const link = document.getElementById("sso-link");
    link.textContent = `Sign in with ${oidc.label}`;
    link.setAttribute("href", oidc.start);
    document.getElementById("sso").hidden = false;
  } catch (_) { /* token sign-in remains */ }
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

const PAGES = { overview, policies, policy, builder, playground, audit, secrets, "secret-wizard": secretWizard, approvals, limits, tokens };
// Pages reached from another one, highlighted under it in the navigation.
const PARENT = { policy: "policies", builder: "policies", "secret-wizard": "secrets" };

function route() {
  if (!state.me) return;
  status("");
  const [name, rest] = (location.hash.replace(/^#\//, "") || "overview").split("?");
  const page = PAGES[name] ? name : "overview";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === `#/${PARENT[page] || page}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const root = document.getElementById("page");
  fill(root, el("p", { class: "muted" }, "Loading…"));
  PAGES[page](root, new URLSearchParams(rest || "")).catch((e) => {
    fill(root, el("p", { class: "error", role: "alert" }, e.message));
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
  fill(root, 
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
  const byName = new Map(rows.map((r) => [r.name, r]));
  // The decision order as listed (by priority; the sort is stable), and the new one while
  // a reorder is pending.
  const listedOrder = () => [...rows].sort((a, b) => a.priority - b.priority).map((r) => r.name);
  let order = null;
  const reorderBar = el("div", { id: "reorder-bar", class: "card", hidden: true });
  const reorderable = () => canEdit() && view.sort === "priority" && !view.desc && !view.search && !view.action && !view.status;

  // Moves a row; `keep` is the label of the arrow button to keep the focus on (the rows
  // are drawn again), for keyboard use.
  function move(name, to, keep) {
    if (!order) order = listedOrder();
    const from = order.indexOf(name);
    if (from < 0 || to < 0 || to >= order.length || to === from) return;
    order.splice(from, 1);
    order.splice(to, 0, name);
    render();
    if (keep) {
      const buttons = [...body.querySelectorAll("button.icon")].filter((b) => b.getAttribute("aria-label").startsWith(`Move ${name} `));
      const target = buttons.find((b) => b.getAttribute("aria-label") === keep && !b.disabled) || buttons.find((b) => !b.disabled);
      if (target) target.focus();
    }
    const moved = placements();
    status(`${name} moved to position ${to + 1}.`);
    drawReorderBar(moved);
  }

  // New priorities that make the pending order the decision order: the moved span takes
  // the span's old priorities in its new order, each strictly after the one before it
  // (bumping the rows after it only as far as needed).
  function placements() {
    if (!order) return [];
    const before = listedOrder();
    const first = order.findIndex((n, i) => n !== before[i]);
    if (first < 0) return [];
    let last = order.length - 1;
    while (last > first && order[last] === before[last]) last -= 1;
    const old = before.slice(first, last + 1).map((n) => byName.get(n).priority).sort((a, b) => a - b);
    const next = [];
    let prev = first > 0 ? byName.get(order[first - 1]).priority : -Infinity;
    for (let i = first; i < order.length; i += 1) {
      const r = byName.get(order[i]);
      let p = i <= last ? old[i - first] : r.priority;
      if (p <= prev) p = prev + 1;
      else if (i > last) break;
      if (p !== r.priority) next.push({ name: r.name, version: r.version, priority: p });
      prev = p;
    }
    return next;
  }

  function drawReorderBar(moved) {
    reorderBar.hidden = moved.length === 0 && !order;
    const reason = el("input", { id: "reorder-reason", placeholder: "why (recorded with each version)" });
    fill(reorderBar,
      el("p", {}, moved.length
        ? `New order: ${moved.length} ${moved.length === 1 ? "policy gets" : "policies get"} a new priority (${moved.map((m) => `${m.name} → ${m.priority}`).join(", ")}), saved as one change.`
        : "The order is unchanged."),
      el("div", { class: "controls" },
        el("label", { for: "reorder-reason" }, "Reason", reason),
        el("button", { type: "button", id: "reorder-save", disabled: moved.length === 0, "on:click": async () => {
          try {
            await api("POST", "/v1/policy-order", { order: moved, reason: reason.value || null });
            status("The new order is saved.");
            route();
          } catch (e) {
            fill(reorderBar, el("p", { class: "error", role: "alert" }, e.message));
          }
        } }, "Save order"),
        el("button", { type: "button", id: "reorder-discard", "on:click": () => { order = null; reorderBar.hidden = true; render(); } }, "Discard")));
  }

  function render() {
    const q = view.search.toLowerCase();
    let shown;
    if (order && reorderable()) {
      shown = order.map((n) => byName.get(n));
    } else {
      shown = rows.filter((r) => (!q || r.name.toLowerCase().includes(q) || r.tags.some((t) => t.toLowerCase().includes(q)))
        && (!view.action || r.action === view.action) && (!view.status || r.status === view.status));
      shown.sort((a, b) => {
        const x = a[view.sort], y = b[view.sort];
        const c = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
        return view.desc ? -c : c;
      });
    }
    const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
    view.page = Math.min(view.page, pages - 1);
    count.textContent = `${shown.length} of ${rows.length} policies`;
    const offset = view.page * PAGE_SIZE;
    shown = shown.slice(offset, offset + PAGE_SIZE);
    const canMove = reorderable();
    moveHeader.hidden = !canEdit();
    fill(body, ...shown.map((r, i) => el("tr", canMove ? { draggable: "true", "data-name": r.name,
      "on:dragstart": (e) => { e.dataTransfer.setData("text/plain", r.name); e.dataTransfer.effectAllowed = "move"; },
      "on:dragover": (e) => { e.preventDefault(); e.dataTransfer.dropEffect = "move"; },
      "on:drop": (e) => { e.preventDefault(); move(e.dataTransfer.getData("text/plain"), (order || listedOrder()).indexOf(r.name)); },
    } : { "data-name": r.name },
      canEdit() ? el("td", { class: "move" }, canMove ? [
        el("span", { class: "grip", "aria-hidden": "true", title: "Drag to reorder" }, "⠿"),
        el("button", { type: "button", class: "icon", "aria-label": `Move ${r.name} up`, disabled: offset + i === 0,
          "on:click": () => move(r.name, offset + i - 1, `Move ${r.name} up`) }, "↑"),
        el("button", { type: "button", class: "icon", "aria-label": `Move ${r.name} down`, disabled: offset + i === rows.length - 1,
          "on:click": () => move(r.name, offset + i + 1, `Move ${r.name} down`) }, "↓")] : null) : null,
      el("td", {}, el("a", { href: `#/policy?name=${encodeURIComponent(r.name)}` }, r.name)),
      el("td", { class: `action-${r.action}` }, r.action),
      el("td", {}, r.priority),
      el("td", {}, r.tags.map((t) => el("span", { class: "pill" }, t))),
      el("td", {}, r.status),
      el("td", {}, r.fires.toLocaleString(), " ", sparkline(series.get(r.name) || new Array(12).fill(0))),
    )));
    fill(pager, 
      el("button", { type: "button", disabled: view.page === 0, "on:click": () => { view.page -= 1; render(); } }, "Previous"),
      el("span", {}, `Page ${view.page + 1} of ${pages}`),
      el("button", { type: "button", disabled: view.page >= pages - 1, "on:click": () => { view.page += 1; render(); } }, "Next"));
  }

  const moveHeader = el("th", { scope: "col" }, el("span", { class: "visually-hidden" }, "Order"));
  const header = (label, key) => el("th", { scope: "col", "aria-sort": view.sort === key ? (view.desc ? "descending" : "ascending") : null },
    el("button", { type: "button", "on:click": () => {
      view.desc = view.sort === key ? !view.desc : false;
      view.sort = key;
      render();
      for (const th of root.querySelectorAll("th")) th.removeAttribute("aria-sort");
      th_(key).setAttribute("aria-sort", view.desc ? "descending" : "ascending");
    } }, label));
  const headers = { move: moveHeader, name: header("Name", "name"), action: header("Action", "action"), priority: header("Priority", "priority"),
    tags: el("th", { scope: "col" }, "Scope tags"), status: header("Status", "status"), fires: header(`Fires (${win})`, "fires") };
  const th_ = (key) => headers[key];

  fill(root, 
    el("h1", {}, "Policies"),
    canEdit() ? el("p", {}, el("a", { href: "#/builder", id: "new-policy" }, "New policy")) : null,
    el("div", { class: "controls" },
      el("label", { for: "policy-search" }, "Search",
        el("input", { id: "policy-search", type: "search", value: view.search,
          "on:input": (e) => { view.search = e.target.value; view.page = 0; render(); } })),
      el("label", { for: "policy-action" }, "Action",
        el("select", { id: "policy-action", "on:change": (e) => { view.action = e.target.value; view.page = 0; render(); } },
          ["", "allow", "flag", "deny", "gated", "approve"].map((a) => el("option", { value: a }, a || "any")))),
      el("label", { for: "policy-status" }, "Status",
        el("select", { id: "policy-status", "on:change": (e) => { view.status = e.target.value; view.page = 0; render(); } },
          ["", "active", "disabled", "draft"].map((a) => el("option", { value: a }, a || "any")))),
      windowSelect("policy-window", win, (w) => { location.hash = `#/policies?window=${w}`; }),
      count),
    canEdit() ? el("p", { class: "muted small" }, "Sorted by priority without a filter, drag a row (or use its arrows) to change the decision order.") : null,
    reorderBar,
    el("table", { id: "policies-table" }, el("thead", {}, el("tr", {}, Object.values(headers))), body),
    pager,
  );
  render();
}

// ------------------------------------------------------------------ one policy

const canEdit = () => Boolean(state.me && state.me.can && state.me.can.edit_policies);

async function policy(root, params) {
  const name = params.get("name") || "";
  const path = `/v1/policies/${encodeURIComponent(name)}`;
  const [current, history] = await Promise.all([api("GET", path), api("GET", `${path}/history`)]);
  const definition = current.policy;
  const message = el("p", { class: "status-line", role: "status" });
  const reason = el("input", { id: "change-reason", placeholder: "why (recorded with the version)" });

  async function change(action, body) {
    try {
      await api("POST", `${path}/${action}`, { version: current.version, reason: reason.value || null, ...body });
      route();
    } catch (e) {
      message.textContent = e.message;
    }
  }

  const controls = canEdit() ? el("div", { class: "controls" },
    el("a", { href: `#/builder?name=${encodeURIComponent(name)}` }, "Edit"),
    el("label", { for: "change-reason" }, "Reason", reason),
    (definition.status || "active") === "active"
      ? el("button", { type: "button", "on:click": () => change("disable") }, "Disable")
      : el("button", { type: "button", "on:click": () => change("enable") }, "Enable"),
  ) : null;

  const versions = history.versions.slice().reverse();
  // Reached from an audit record: the version that decided it.
  const decided = versions.find((v) => String(v.version) === params.get("version"));
  const from = el("select", { id: "diff-from" }, versions.map((v) => el("option", { value: v.version, selected: v.version === Math.max(1, current.version - 1) }, `v${v.version}`)));
  const to = el("select", { id: "diff-to" }, versions.map((v) => el("option", { value: v.version, selected: v.version === current.version }, `v${v.version}`)));
  const diffOut = el("div");
  async function showDiff() {
    try {
      const d = await api("GET", `${path}/diff${query({ from: from.value, to: to.value })}`);
      fill(diffOut, d.changes.length ? el("table", {},
        el("thead", {}, el("tr", {}, ["Field", `v${d.from}`, `v${d.to}`].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, d.changes.map((c) => el("tr", {},
          el("td", {}, el("code", {}, c.path)),
          el("td", { class: "before" }, el("code", {}, c.before === undefined ? "—" : JSON.stringify(c.before))),
          el("td", { class: "after" }, el("code", {}, c.after === undefined ? "—" : JSON.stringify(c.after)))))))
        : el("p", { class: "muted" }, "The two versions are the same."));
    } catch (e) {
      fill(diffOut, el("p", { class: "error", role: "alert" }, e.message));
    }
  }

  fill(root, 
    el("h1", {}, `Policy ${name}`),
    el("p", {}, `Version ${current.version}, ${definition.action}, priority ${definition.priority}, ${definition.status || "active"}`,
      current.updated_at ? ` — updated ${new Date(current.updated_at).toLocaleString()}` : ""),
    controls,
    message,
    decided && decided.version !== current.version && decided.policy ? [
      el("h2", { id: "decided-version" }, `Version ${decided.version}, which decided the audited request`),
      el("pre", { class: "definition", tabindex: "0", "aria-label": `The definition at version ${decided.version}` },
        JSON.stringify(decided.policy, null, 2)),
    ] : null,
    el("h2", {}, decided && decided.version === current.version ? "Definition (the version that decided the audited request)" : "Definition"),
    el("pre", { class: "definition", tabindex: "0", "aria-label": "The policy's definition" }, JSON.stringify(definition, null, 2)),
    el("h2", {}, "History"),
    el("table", {},
      el("thead", {}, el("tr", {}, ["Version", "Change", "Operator", "Reason", "When", "Actions"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, versions.map((v) => el("tr", { class: decided === v ? "decided" : null, "aria-current": decided === v ? "true" : null },
        el("td", {}, `v${v.version}`),
        el("td", {}, v.operation),
        el("td", {}, v.operator || ""),
        el("td", {}, v.reason || ""),
        el("td", {}, v.at ? new Date(v.at).toLocaleString() : ""),
        el("td", {}, canEdit() && v.version !== current.version && v.policy
          ? el("button", { type: "button", "aria-label": `Roll back to v${v.version}`,
            "on:click": () => change("rollback", { to_version: v.version }) }, "Roll back")
          : null))))),
    el("h2", {}, "Compare versions"),
    el("div", { class: "controls" },
      el("label", { for: "diff-from" }, "From", from),
      el("label", { for: "diff-to" }, "To", to),
      el("button", { type: "button", "on:click": showDiff }, "Compare")),
    diffOut,
  );
}

// ------------------------------------------------------------------ the builder

// YAML for a JSON value, as `portcullis apply -f` reads it: plain scalars where YAML reads
// them back as the same string, JSON-quoted otherwise.
function yaml(value, indent = "") {
  const scalar = (v) => {
    if (typeof v !== "string") return JSON.stringify(v);
    const plain = /^[A-Za-z_/*][A-Za-z0-9_./*:@+-]*$/.test(v)
      && !/^(true|false|null|yes|no|on|off|y|n|~)$/i.test(v);
    return plain ? v : JSON.stringify(v);
  };
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return value.map((item) => {
      if (item && typeof item === "object" && !Array.isArray(item) && Object.keys(item).length) {
        const body = yaml(item, `${indent}  `);
        return `\n${indent}- ${body.trimStart()}`;
      }
      return `\n${indent}- ${yaml(item, `${indent}  `).trimStart()}`;
    }).join("");
  }
  if (value && typeof value === "object") {
    const keys = Object.keys(value);
    if (!keys.length) return "{}";
    return keys.map((k) => {
      const v = value[k];
      const nested = v && typeof v === "object" && (Array.isArray(v) ? v.length : Object.keys(v).length);
      return `\n${indent}${k}:${nested ? yaml(v, Array.isArray(v) ? indent : `${indent}  `) : ` ${yaml(v)}`}`;
    }).join("");
  }
  return scalar(value);
}

// A text input whose Enter (or comma) turns what was typed into a pill; each pill has a
// button to remove it.
function pills(id, label, values, onChange) {
  const list = el("span", { class: "pills" });
  const input = el("input", { id, size: 18, "aria-describedby": `${id}-help` });
  function draw() {
    fill(list, ...values.map((v, i) => el("span", { class: "pill" }, v,
      el("button", { type: "button", class: "pill-remove", "aria-label": `Remove ${v} from ${label}`,
        "on:click": () => { values.splice(i, 1); draw(); onChange(); } }, "×"))));
  }
  input.addEventListener("keydown", (e) => {
    if ((e.key === "Enter" || e.key === ",") && input.value.trim()) {
      e.preventDefault();
      values.push(input.value.trim());
      input.value = "";
      draw();
      onChange();
    }
  });
  draw();
  return el("div", { class: "field", "data-path": id },
    el("label", { for: id }, label), list, input,
    el("span", { id: `${id}-help`, class: "muted small" }, "Enter adds"));
}

// A CEL error's position (`at 2:3-2:20`, or the parser's `<input>:1:18:`), marked under
// the expression's line and selected in its editor.
function markPosition(field, area, message) {
  const found = /\bat (\d+):(\d+)-(\d+):(\d+)\b/.exec(message) || /<input>:(\d+):(\d+):/.exec(message);
  if (!found) return;
  const [line, column] = [Number(found[1]), Number(found[2])];
  const width = found[4] && Number(found[3]) === line ? Number(found[4]) - column + 1 : 1;
  const lines = area.value.split("\n");
  const text = lines[line - 1];
  if (text === undefined) return;
  const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0) + column - 1;
  area.setSelectionRange(start, start + width);
  area.setAttribute("aria-invalid", "true");
  field.append(el("pre", { class: "error field-error cel-position", "aria-label": `Line ${line}, column ${column}` },
    `${text}\n${" ".repeat(column - 1)}${"^".repeat(Math.max(1, width))}`));
}

const METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT"];
const ACTION_TYPES = ["chat_completion", "embedding", "tool_call", "mcp_request", "http_request"];

function emptyRule() {
  return { host: "", paths: [], methods: [], action_types: [], tools: [], dlp: [], cel: "",
    headers: [], body_contains: [], body_regex: [], prompt_contains: [], prompt_regex: [] };
}

// A header condition's kinds, as the API spells them (`present: false` is "absent").
const HEADER_MATCHES = [["exact", "is"], ["prefix", "starts with"], ["suffix", "ends with"],
  ["contains", "contains"], ["regex", "matches"], ["present", "is present"], ["absent", "is absent"]];

function headerCondition(h) {
  const out = { name: h.name.trim() };
  if (h.match === "present") out.present = true;
  else if (h.match === "absent") out.present = false;
  else out[h.match] = h.value;
  if (h.invert) out.invert = true;
  return out;
}

function headerDraft(h) {
  const match = h.present === true ? "present" : h.present === false ? "absent"
    : ["exact", "prefix", "suffix", "contains", "regex"].find((k) => h[k] !== undefined) || "exact";
  return { name: h.name || "", match, value: ["present", "absent"].includes(match) ? "" : h[match], invert: Boolean(h.invert) };
}

function textCondition(contains, regex) {
  if (!contains.length && !regex.length) return null;
  const out = {};
  if (contains.length) out.contains = contains.slice();
  if (regex.length) out.regex = regex.slice();
  return out;
}

// The draft as the API takes it: empty fields left out.
function draftPolicy(d) {
  // What the builder does not edit is kept as it was: a gated policy's condition, a
  // grant's identity and expiry (dropped, a grant would allow every workload for ever).
  const policy = { ...(d.kept || {}), name: d.name.trim(), action: d.action, priority: Number(d.priority), status: d.status };
  if (d.match_tags.length) policy.match_tags = d.match_tags.slice();
  if (d.description.trim()) policy.description = d.description.trim();
  policy.rules = d.rules.map((r) => {
    const rule = { host: r.host.trim() };
    for (const key of ["paths", "methods", "action_types", "tools", "dlp"]) if (r[key].length) rule[key] = r[key].slice();
    if (r.headers.length) rule.headers = r.headers.map(headerCondition);
    const body = textCondition(r.body_contains, r.body_regex);
    if (body) rule.body = body;
    const prompt = textCondition(r.prompt_contains, r.prompt_regex);
    if (prompt) rule.prompt = prompt;
    if (r.cel.trim()) rule.cel = r.cel.trim();
    return rule;
  });
  return policy;
}

function sentence(d) {
  const who = d.match_tags.length ? `workloads tagged ${d.match_tags.join(" and ")}` : "every workload";
  const rules = d.rules.map((r) => {
    const what = [r.methods.length ? r.methods.join("/") : "any method",
      `to ${r.host || "…"}`, r.paths.length ? `on ${r.paths.join(", ")}` : "",
      r.action_types.length ? `as ${r.action_types.join(" or ")}` : "",
      r.tools.length ? `calling ${r.tools.join(", ")}` : "",
      r.dlp.length ? `carrying ${r.dlp.join(", ")}` : "",
      ...r.headers.map((h) => `with header ${h.name || "…"} ${h.invert ? "not " : ""}${(HEADER_MATCHES.find(([k]) => k === h.match) || [])[1]}${["present", "absent"].includes(h.match) ? "" : ` ${JSON.stringify(h.value)}`}`),
      r.body_contains.length || r.body_regex.length ? `whose body ${[...r.body_contains.map((t) => `contains ${JSON.stringify(t)}`), ...r.body_regex.map((t) => `matches /${t}/`)].join(" or ")}` : "",
      r.prompt_contains.length || r.prompt_regex.length ? `whose prompt ${[...r.prompt_contains.map((t) => `contains ${JSON.stringify(t)}`), ...r.prompt_regex.map((t) => `matches /${t}/`)].join(" or ")}` : "",
      r.cel.trim() ? "when the CEL condition holds" : ""].filter(Boolean);
    return what.join(" ");
  });
  const verb = { allow: "Allow", deny: "Deny", flag: "Flag", gated: "Gate", approve: "Ask a person before" }[d.action];
  return `${verb} · ${who} · ${rules.join("; or ") || "no rule yet"}`;
}

async function builder(root, params) {
  const editing = params.get("name");
  let version = null;
  const d = { name: "", action: "allow", priority: 100, status: "draft", match_tags: [], description: "", rules: [emptyRule()] };
  if (editing) {
    const current = await api("GET", `/v1/policies/${encodeURIComponent(editing)}`);
    version = current.version;
    const p = current.policy;
    Object.assign(d, { name: p.name, action: p.action, priority: p.priority, status: p.status || "active",
      match_tags: p.match_tags || [], description: p.description || "" });
    d.kept = {};
    for (const key of ["condition", "when_condition_fails", "grant", "message", "warn"]) if (p[key] !== undefined && p[key] !== null) d.kept[key] = p[key];
    d.rules = p.rules.map((r) => ({ ...emptyRule(), host: r.host, cel: r.cel || "",
      paths: r.paths || [], methods: r.methods || [], action_types: r.action_types || [], tools: r.tools || [], dlp: r.dlp || [],
      headers: (r.headers || []).map(headerDraft),
      body_contains: (r.body && r.body.contains) || [], body_regex: (r.body && r.body.regex) || [],
      prompt_contains: (r.prompt && r.prompt.contains) || [], prompt_regex: (r.prompt && r.prompt.regex) || [] }));
  }
  const preview = el("pre", { id: "yaml-preview", class: "definition", tabindex: "0", "aria-label": "What will be saved, as YAML" });
  const said = el("p", { id: "rule-sentence", class: "sentence" });
  const errors = el("div", { role: "alert" });
  const impact = el("section", { id: "impact", "aria-live": "polite" });
  const rulesBox = el("div");
  const reason = el("input", { id: "b-reason", placeholder: "why (recorded with the version)" });

  function update() {
    preview.textContent = yaml(draftPolicy(d)).trimStart();
    said.textContent = sentence(d);
  }
  const bind = (input, key, target = d) => {
    input.addEventListener("input", () => { target[key] = input.value; update(); });
    return input;
  };

  function drawRules() {
    fill(rulesBox, ...d.rules.map((r, i) => el("fieldset", { class: "rule", "data-path": `rules[${i}]` },
      el("legend", {}, `Rule ${i + 1}`),
      el("div", { class: "field", "data-path": `rules[${i}].host` },
        el("label", { for: `r${i}-host` }, "Host"),
        bind(el("input", { id: `r${i}-host`, value: r.host, placeholder: "api.github.com, *.example.com, 10.0.0.0/8" }), "host", r)),
      pills(`rules[${i}].paths`, "Paths", r.paths, update),
      el("fieldset", { class: "checks", "data-path": `rules[${i}].methods` }, el("legend", {}, "Methods (none: any)"),
        METHODS.map((m) => el("label", {}, el("input", { type: "checkbox", checked: r.methods.includes(m),
          "on:change": (e) => { if (e.target.checked) r.methods.push(m); else r.methods.splice(r.methods.indexOf(m), 1); update(); } }), m))),
      el("fieldset", { class: "checks", "data-path": `rules[${i}].action_types` }, el("legend", {}, "Action types (none: any)"),
        ACTION_TYPES.map((t) => el("label", {}, el("input", { type: "checkbox", checked: r.action_types.includes(t),
          "on:change": (e) => { if (e.target.checked) r.action_types.push(t); else r.action_types.splice(r.action_types.indexOf(t), 1); update(); } }), t))),
      pills(`rules[${i}].tools`, "MCP tools", r.tools, update),
      pills(`rules[${i}].dlp`, "DLP detectors", r.dlp, update),
      headerRows(i, r),
      el("fieldset", { class: "group", "data-path": `rules[${i}].body` }, el("legend", {}, "Body (any of these)"),
        pills(`rules[${i}].body.contains`, "Contains (case-insensitive)", r.body_contains, update),
        pills(`rules[${i}].body.regex`, "Matches (regular expression)", r.body_regex, update)),
      el("fieldset", { class: "group", "data-path": `rules[${i}].prompt` }, el("legend", {}, "Prompt of a chat request (any of these)"),
        pills(`rules[${i}].prompt.contains`, "Contains (case-insensitive)", r.prompt_contains, update),
        pills(`rules[${i}].prompt.regex`, "Matches (regular expression)", r.prompt_regex, update)),
      el("div", { class: "field", "data-path": `rules[${i}].cel` },
        el("label", { for: `r${i}-cel` }, "CEL condition"),
        bind(el("textarea", { id: `r${i}-cel`, rows: 2, cols: 60, placeholder: "request.method == 'GET'" }, r.cel), "cel", r)),
      d.rules.length > 1 ? el("button", { type: "button", "on:click": () => { d.rules.splice(i, 1); drawRules(); update(); } }, `Remove rule ${i + 1}`) : null)));
  }

  // A rule's header conditions: name, how it matches, the value, inverted or not.
  function headerRows(i, r) {
    const box = el("fieldset", { class: "group", "data-path": `rules[${i}].headers` }, el("legend", {}, "Headers (every one must hold)"));
    const draw = () => {
      fill(box, el("legend", {}, "Headers (every one must hold)"),
        r.headers.map((h, j) => {
          const path = `rules[${i}].headers[${j}]`;
          const id = `r${i}-h${j}`;
          const valueInput = el("input", { id: `${id}-value`, value: h.value, size: 20, hidden: ["present", "absent"].includes(h.match),
            "aria-label": `Header ${j + 1} value`, "on:input": (e) => { h.value = e.target.value; update(); } });
          return el("div", { class: "controls header-row", "data-path": path },
            el("label", { for: `${id}-name` }, "Name", el("input", { id: `${id}-name`, value: h.name, size: 16, placeholder: "x-tenant",
              "on:input": (e) => { h.name = e.target.value; update(); } })),
            el("label", { for: `${id}-match` }, "Match", el("select", { id: `${id}-match`, "on:change": (e) => {
              h.match = e.target.value;
              valueInput.hidden = ["present", "absent"].includes(h.match);
              update();
            } }, HEADER_MATCHES.map(([k, label]) => el("option", { value: k, selected: k === h.match }, label)))),
            valueInput,
            el("label", { class: "inline" }, el("input", { type: "checkbox", checked: h.invert,
              "on:change": (e) => { h.invert = e.target.checked; update(); } }), " inverted"),
            el("button", { type: "button", "on:click": () => { r.headers.splice(j, 1); draw(); update(); } }, `Remove header condition ${j + 1}`));
        }),
        el("button", { type: "button", id: `r${i}-add-header`, "on:click": () => {
          r.headers.push({ name: "", match: "exact", value: "", invert: false });
          draw();
          update();
          box.querySelector(`#r${i}-h${r.headers.length - 1}-name`).focus();
        } }, "Add a header condition"));
    };
    draw();
    return box;
  }

  // Every error next to its field (by its path under `policy`), and all of them above.
  function showErrors(e) {
    for (const old of root.querySelectorAll(".field-error")) old.remove();
    for (const marked of root.querySelectorAll("[aria-invalid]")) marked.removeAttribute("aria-invalid");
    const list = (e.body && e.body.error && e.body.error.errors) || [];
    fill(errors, el("p", { class: "error" }, e.message),
      el("ul", {}, list.map((x) => el("li", {}, `${x.path}: ${x.message}`))));
    for (const x of list) {
      const node = fieldFor(x.path.replace(/^policy\.?/, ""));
      (node || errors).append(el("p", { class: "error field-error" }, x.message));
      const area = node && node.querySelector("textarea");
      if (area) markPosition(node, area, x.message);
    }
  }

  // The field an error's path names, or the nearest one that holds it.
  function fieldFor(path) {
    for (let p = path; p;) {
      const node = [...root.querySelectorAll("[data-path]")].find((n) => n.getAttribute("data-path") === p);
      if (node) return node;
      const shorter = p.replace(/(\.[^.[\]]+|\[\d+\])$/, "");
      if (shorter === p) return null;
      p = shorter;
    }
    return null;
  }

  async function previewImpact() {
    fill(errors, );
    for (const old of root.querySelectorAll(".field-error")) old.remove();
    try {
      const r = await api("POST", "/v1/impact", { policy: draftPolicy(d), since: "24h" });
      fill(impact, el("h2", {}, "Impact over the last 24 hours"),
        el("p", { id: "impact-summary" }, `${r.changed} of ${r.replayed} recent requests would be decided differently.`),
        r.requests.length ? el("table", {},
          el("thead", {}, el("tr", {}, ["Request", "Now", "With this draft"].map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, r.requests.map((q) => el("tr", {},
            el("td", {}, `${q.method} ${q.host}${q.path}`),
            el("td", { class: q.before.decision }, `${q.before.decision} ${q.before.policy || ""}`),
            el("td", { class: q.after.decision }, `${q.after.decision} ${q.after.policy || ""}`))))) : null);
    } catch (e) {
      showErrors(e);
    }
  }

  async function save() {
    fill(errors, );
    try {
      const body = { policy: draftPolicy(d), reason: reason.value || null };
      if (editing) await api("PUT", `/v1/policies/${encodeURIComponent(editing)}`, { ...body, version });
      else await api("POST", "/v1/policies", body);
      location.hash = `#/policy?name=${encodeURIComponent(d.name.trim())}`;
    } catch (e) {
      showErrors(e);
    }
  }

  const tagsField = pills("match_tags", "Scope tags (none: every workload)", d.match_tags, update);
  fill(root, 
    el("h1", {}, editing ? `Edit ${editing}` : "New policy"),
    said,
    el("div", { class: "builder" },
      el("div", { class: "builder-form" },
        el("div", { class: "controls" },
          el("div", { class: "field", "data-path": "name" }, el("label", { for: "b-name" }, "Name"),
            bind(el("input", { id: "b-name", value: d.name, readonly: Boolean(editing) }), "name")),
          el("div", { class: "field", "data-path": "action" }, el("label", { for: "b-action" }, "Effect"),
            bind(el("select", { id: "b-action" }, ["allow", "deny", "flag", "gated", "approve"].map((a) => el("option", { value: a, selected: a === d.action }, a))), "action")),
          el("div", { class: "field", "data-path": "priority" }, el("label", { for: "b-priority" }, "Priority"),
            bind(el("input", { id: "b-priority", type: "number", value: d.priority, size: 6 }), "priority")),
          el("div", { class: "field", "data-path": "status" }, el("label", { for: "b-status" }, "Status"),
            bind(el("select", { id: "b-status" }, ["draft", "active", "disabled"].map((a) => el("option", { value: a, selected: a === d.status }, a))), "status"))),
        tagsField,
        el("div", { class: "field", "data-path": "description" }, el("label", { for: "b-description" }, "Description"),
          bind(el("input", { id: "b-description", value: d.description, size: 60 }), "description")),
        rulesBox,
        el("button", { type: "button", "on:click": () => { d.rules.push(emptyRule()); drawRules(); update(); } }, "Add a rule"),
        el("div", { class: "controls" },
          el("label", { for: "b-reason" }, "Reason", reason),
          el("button", { type: "button", id: "b-impact", "on:click": previewImpact }, "Preview impact"),
          el("button", { type: "button", id: "b-save", "on:click": save }, editing ? "Save a new version" : "Create")),
        errors,
        impact),
      el("div", { class: "builder-preview" }, el("h2", {}, "What will be saved"), preview)),
  );
  drawRules();
  update();
}

// ------------------------------------------------------------------ playground

function auditedUrl(e) {
  const port = e.port && !((e.scheme === "https" && e.port === 443) || (e.scheme === "http" && e.port === 80)) ? `:${e.port}` : "";
  return `${e.scheme || "https"}://${e.host}${port}${e.path || ""}`;
}

// A request pasted as HTTP text (`POST /v1/x HTTP/1.1`, headers, a blank line, the body),
// its target absolute or a path with a Host header: the playground's fields.
function parsePasted(text) {
  const [head, ...rest] = text.replace(/\r\n/g, "\n").split("\n\n");
  const [line, ...headerLines] = head.trim().split("\n");
  const [method, target] = line.trim().split(/\s+/);
  if (!method || !target) throw new Error("the first line is not `METHOD URL [HTTP/1.1]`");
  const headers = parseHeaders(headerLines.join("\n"));
  let url = target;
  if (target.startsWith("/")) {
    const hostKey = Object.keys(headers).find((k) => k.toLowerCase() === "host");
    if (!hostKey) throw new Error("a path needs a Host header to say where it goes");
    url = `https://${headers[hostKey]}${target}`;
    delete headers[hostKey];
  }
  return { method: method.toUpperCase(), url, headers, body: rest.join("\n\n") };
}

function parseHeaders(text) {
  const headers = {};
  for (const line of text.split("\n")) {
    const at = line.indexOf(":");
    if (at > 0) headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return headers;
}

async function playground(root, params) {
  const method = el("input", { id: "pg-method", value: params.get("method") || "GET", size: 8, required: true });
  const url = el("input", { id: "pg-url", value: params.get("url") || "", size: 60, required: true, placeholder: "https://api.github.com/repos/o/r" });
  const tags = el("input", { id: "pg-tags", value: params.get("tags") || "", placeholder: "team:ml, env:prod" });
  const token = el("input", { id: "pg-token", type: "password", autocomplete: "off", placeholder: "ptk_… (optional)" });
  const headers = el("textarea", { id: "pg-headers", rows: 3, cols: 60, placeholder: "Name: value, one per line" });
  const body = el("textarea", { id: "pg-body", rows: 4, cols: 60 });
  const out = el("section", { id: "pg-result", "aria-live": "polite" });
  const pasted = el("textarea", { id: "pg-paste", rows: 5, cols: 60,
    placeholder: "POST /v1/chat/completions HTTP/1.1\nHost: api.openai.com\nContent-Type: application/json\n\n{\"model\": \"gpt-4o\"}" });
  const pasteError = el("p", { class: "error", role: "alert" });

  function usePasted() {
    try {
      const r = parsePasted(pasted.value);
      method.value = r.method;
      url.value = r.url;
      headers.value = Object.entries(r.headers).map(([k, v]) => `${k}: ${v}`).join("\n");
      body.value = r.body;
      pasteError.textContent = "";
      run();
    } catch (e) {
      pasteError.textContent = e.message;
    }
  }

  async function run(event) {
    if (event) event.preventDefault();
    const request = {
      method: method.value.trim().toUpperCase(), url: url.value.trim(),
      headers: parseHeaders(headers.value), body: body.value || null,
      tags: tags.value.split(",").map((t) => t.trim()).filter(Boolean),
      token: token.value || null,
    };
    try {
      showDecision(out, await api("POST", "/v1/playground", request));
    } catch (e) {
      const errors = (e.body && e.body.error && e.body.error.errors) || [];
      fill(out, el("p", { class: "error", role: "alert" }, e.message),
        el("ul", {}, errors.map((x) => el("li", {}, `${x.path}: ${x.message}`))));
    }
  }

  fill(root, 
    el("h1", {}, "Playground"),
    el("p", { class: "muted" }, "Decides a request as the gateway would, on the live policies, without sending it. Credentials show as markers; no secret is read."),
    el("details", { id: "pg-paste-box" }, el("summary", {}, "Paste a request"),
      el("label", { for: "pg-paste" }, "The request as HTTP text: request line, headers, a blank line, the body"),
      pasted,
      el("button", { type: "button", id: "pg-use-paste", "on:click": usePasted }, "Decide the pasted request"),
      pasteError),
    el("form", { class: "playground", "on:submit": run },
      el("div", { class: "controls" },
        el("label", { for: "pg-method" }, "Method", method),
        el("label", { for: "pg-url" }, "URL", url),
        el("label", { for: "pg-tags" }, "Tags", tags),
        el("label", { for: "pg-token" }, "Proxy token", token)),
      el("div", { class: "controls" },
        el("label", { for: "pg-headers" }, "Headers", headers),
        el("label", { for: "pg-body" }, "Body", body)),
      el("button", { type: "submit" }, "Decide")),
    out,
  );
  if (url.value) await run();
}

function showDecision(out, r) {
  const d = r.deciding || {};
  const up = r.upstream || {};
  fill(out, 
    el("h2", {}, "Decision: ", el("span", { class: r.decision, id: "pg-decision" }, r.decision)),
    el("p", { id: "pg-deciding" }, d.policy ? `Decided by ${d.policy} v${d.version} (priority ${d.priority}, rule ${d.rule})`
      : d.default_action ? `Decided by the default action (${d.action})` : "Refused before the policies"),
    el("h2", {}, "Candidate policies, in decision order"),
    r.matching_policies.length ? el("ol", { id: "pg-candidates" }, r.matching_policies.map((m) => el("li", {},
      `${m.policy} v${m.version} — ${m.action}, priority ${m.priority}, rule ${m.rule}`,
      m.dry_run ? " (dry run)" : "", m.decides ? " — decides" : ""))) : el("p", { class: "muted" }, "No policy matches."),
    el("h2", {}, "Request"),
    el("p", {}, `Action type ${r.body.action_type}; body ${r.body.bytes} bytes${r.body.buffered ? ", buffered" : ""}.`,
      r.body.dlp.length ? ` DLP: ${r.body.dlp.map((x) => `${x.detector} ×${x.count}`).join(", ")}.` : " No DLP detector fires."),
    el("h2", {}, "What the upstream would receive"),
    up.forwarded
      ? el("div", {},
        el("p", {}, up.path ? `Path rewritten to ${up.path}.` : "The path as sent."),
        up.set_headers.length ? el("ul", {}, up.set_headers.map(([n, v]) => el("li", {}, el("code", {}, `${n}: ${v}`)))) : el("p", { class: "muted" }, "No header set."),
        up.removed_headers.length ? el("p", {}, `Removed: ${up.removed_headers.join(", ")}`) : null)
      : el("p", {}, `Nothing: the workload gets ${up.status} ${up.type} (${up.reason}): ${up.message}`),
  );
}

// ------------------------------------------------------------------ secrets

const canEditSecrets = () => Boolean(state.me && state.me.can && state.me.can.edit_secrets);

function sourceSummary(source) {
  const where = source.var || source.path || source.secret_id || source.parameter || source.address || "";
  return `${source.type}${where ? ` ${where}` : ""}${source.json_key ? ` [${source.json_key}]` : ""}`;
}

async function secrets(root) {
  const listed = await api("GET", "/v1/secrets");
  fill(root,
    el("h1", {}, "Secrets"),
    el("p", { class: "muted" }, "Credentials the gateway puts on requests as they leave. Values are read on the gateway host and never shown here."),
    canEditSecrets() ? el("p", {}, el("a", { class: "button", href: "#/secret-wizard", id: "new-secret" }, "New secret")) : null,
    listed.secrets.length ? el("table", { id: "secrets-table" },
      el("thead", {}, el("tr", {}, ["Name", "Workloads", "Requests", "Injected as", "Source", "Version"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, listed.secrets.map((x) => el("tr", {},
        el("td", {}, x.name),
        el("td", {}, (x.secret.match_tags || []).length ? x.secret.match_tags.map((t) => el("span", { class: "pill" }, t)) : "every workload"),
        el("td", {}, x.secret.rules.map((r) => `${(r.methods || []).join("/") || "any"} ${r.host}${(r.paths || []).join(", ")}`).join("; ")),
        el("td", {}, x.secret.inject.style),
        el("td", {}, sourceSummary(x.secret.source)),
        el("td", {}, String(x.version))))))
      : el("p", { class: "muted" }, "No stored secrets."));
}

const SOURCE_FIELDS = {
  env: [["var", "Environment variable", "PORTCULLIS_SECRET_GITHUB"]],
  file: [["path", "File", "/run/portcullis/secrets/github"]],
  aws_secrets_manager: [["secret_id", "Secret ID or ARN", "prod/github"], ["region", "Region", "eu-west-1"]],
  aws_ssm: [["parameter", "Parameter", "/prod/github/token"], ["region", "Region", "eu-west-1"]],
  vault: [["address", "Vault address", "https://vault.internal:8200"], ["mount", "Mount", "secret"], ["path", "Path", "app/github"]],
};

const WIZARD_STEPS = ["Which workloads", "Which requests", "How it is injected", "Where the value comes from"];

// A secret in four steps; every step's fields stay in one draft, and the last step tests
// the source (readable or not, never the value) before the secret is created.
async function secretWizard(root) {
  if (!canEditSecrets()) {
    fill(root, el("p", { class: "error", role: "alert" }, "Only an admin may create secrets."));
    return;
  }
  const d = { name: "", match_tags: [], rule: { host: "", paths: [], methods: [] },
    style: "bearer", username: "", header: "x-api-key", format: "{{ value }}", allow_plaintext: false,
    source: { type: "env" }, json_key: "" };
  let step = 0;
  const body = el("div", { id: "wizard-step" });
  const steps = el("ol", { class: "steps", "aria-label": "Steps" });
  const errors = el("div", { role: "alert" });
  const preview = el("pre", { id: "secret-yaml", class: "definition", tabindex: "0", "aria-label": "What will be saved, as YAML" });

  function draft() {
    const rule = { host: d.rule.host.trim() };
    if (d.rule.paths.length) rule.paths = d.rule.paths.slice();
    if (d.rule.methods.length) rule.methods = d.rule.methods.slice();
    const inject = { style: d.style };
    if (d.style === "basic") inject.username = d.username;
    if (d.style === "custom") { inject.header = d.header.trim(); inject.format = d.format; }
    const source = {};
    for (const [k, v] of Object.entries(d.source)) if (String(v).trim()) source[k] = String(v).trim();
    if (d.json_key.trim()) source.json_key = d.json_key.trim();
    const secret = { name: d.name.trim() };
    if (d.match_tags.length) secret.match_tags = d.match_tags.slice();
    secret.rules = [rule];
    secret.source = source;
    secret.inject = inject;
    if (d.allow_plaintext) secret.allow_plaintext = true;
    return secret;
  }

  // What the upstream receives, the credential as a marker (the value is never here).
  function upstreamPreview() {
    const marker = `<secret:${d.name.trim() || "name"}>`;
    const method = d.rule.methods[0] || "GET";
    const path = (d.rule.paths[0] || "/").replace(/\*.*$/, "");
    const line = `${method} ${path} HTTP/1.1\nHost: ${d.rule.host || "…"}`;
    if (d.style === "bearer") return `${line}\nAuthorization: Bearer ${marker}`;
    if (d.style === "basic") return `${line}\nAuthorization: Basic base64(${d.username || "username"}:${marker})`;
    return `${line}\n${d.header || "x-api-key"}: ${d.format.replace(/\{\{\s*(\.Value|value)\s*\}\}/g, marker).replace(/\{\{\s*base64 value\s*\}\}/g, `base64(${marker})`)}`;
  }

  const text = (id, label, target, key, attrs = {}) => el("div", { class: "field", "data-path": attrs.path || key },
    el("label", { for: id }, label),
    el("input", { id, value: target[key], ...attrs, path: null,
      "on:input": (e) => { target[key] = e.target.value; redraw(false); } }));

  function drawStep() {
    fill(steps, WIZARD_STEPS.map((title, i) => el("li", { "aria-current": i === step ? "step" : null, class: i < step ? "done" : null }, title)));
    const views = [
      () => [el("p", { class: "muted" }, "Only workloads carrying every tag get this credential; none: every workload."),
        text("w-name", "Secret name", d, "name", { path: "name", placeholder: "github" }),
        pills("match_tags", "Workload tags", d.match_tags, () => redraw(false))],
      () => [el("p", { class: "muted" }, "Only requests matching this rule carry the credential: scope it narrowly."),
        text("w-host", "Host", d.rule, "host", { path: "rules[0].host", placeholder: "api.github.com" }),
        pills("rules[0].paths", "Paths (none: any)", d.rule.paths, () => redraw(false)),
        el("fieldset", { class: "checks", "data-path": "rules[0].methods" }, el("legend", {}, "Methods (none: any)"),
          METHODS.filter((m) => m !== "CONNECT").map((m) => el("label", {}, el("input", { type: "checkbox", checked: d.rule.methods.includes(m),
            "on:change": (e) => { if (e.target.checked) d.rule.methods.push(m); else d.rule.methods.splice(d.rule.methods.indexOf(m), 1); redraw(false); } }), m)))],
      () => [el("div", { class: "field", "data-path": "inject.style" }, el("label", { for: "w-style" }, "Injected as"),
          el("select", { id: "w-style", "on:change": (e) => { d.style = e.target.value; redraw(true); } },
            [["bearer", "Authorization: Bearer"], ["basic", "Authorization: Basic (username and value)"], ["custom", "A header of your choosing"]]
              .map(([v, label]) => el("option", { value: v, selected: v === d.style }, label)))),
        d.style === "basic" ? text("w-username", "Username", d, "username", { path: "inject.username" }) : null,
        d.style === "custom" ? [text("w-header", "Header", d, "header", { path: "inject.header" }),
          text("w-format", "Format", d, "format", { path: "inject.format", size: 40 })] : null,
        el("label", { class: "inline" }, el("input", { type: "checkbox", id: "w-plaintext", checked: d.allow_plaintext,
          "on:change": (e) => { d.allow_plaintext = e.target.checked; redraw(false); } }),
          " Also on plaintext HTTP requests (the credential then crosses the network in clear)"),
        el("h2", {}, "What the upstream sees"),
        el("pre", { id: "upstream-preview", class: "definition" }, upstreamPreview())],
      () => [el("div", { class: "field", "data-path": "source.type" }, el("label", { for: "w-source" }, "Source"),
          el("select", { id: "w-source", "on:change": (e) => { d.source = { type: e.target.value }; redraw(true); } },
            Object.keys(SOURCE_FIELDS).map((t) => el("option", { value: t, selected: t === d.source.type }, t)))),
        SOURCE_FIELDS[d.source.type].map(([key, label, placeholder]) => {
          if (d.source[key] === undefined) d.source[key] = "";
          return text(`w-source-${key}`, label, d.source, key, { path: `source.${key}`, placeholder });
        }),
        text("w-json-key", "JSON field (when the value is a JSON object)", d, "json_key", { path: "source.json_key" }),
        el("div", { class: "controls" },
          el("button", { type: "button", id: "w-test", "on:click": testSource }, "Test the source"),
          el("p", { id: "w-test-result", role: "status" }))],
    ];
    fill(body, el("h2", {}, `Step ${step + 1} of 4: ${WIZARD_STEPS[step]}`), views[step]());
  }

  function redraw(structure) {
    preview.textContent = yaml(draft()).trimStart();
    const upstream = root.querySelector("#upstream-preview");
    if (upstream) upstream.textContent = upstreamPreview();
    if (structure) drawStep();
  }

  async function testSource() {
    const out = root.querySelector("#w-test-result");
    out.textContent = "Reading…";
    out.className = "";
    try {
      const r = await api("POST", "/v1/secret-sources/test", { source: draft().source });
      out.textContent = r.readable ? `Readable: ${r.source} answered in ${r.elapsed_ms} ms.` : `Not readable: ${r.error}`;
      out.className = r.readable ? "action-allow" : "error";
    } catch (e) {
      out.textContent = e.message;
      out.className = "error";
    }
  }

  function showErrors(e) {
    for (const old of root.querySelectorAll(".field-error")) old.remove();
    const list = (e.body && e.body.error && e.body.error.errors) || [];
    fill(errors, el("p", { class: "error" }, e.message),
      el("ul", {}, list.map((x) => el("li", {}, `${x.path}: ${x.message}`))));
    for (const x of list) {
      const path = x.path.replace(/^secret\.?/, "");
      const node = [...root.querySelectorAll("[data-path]")].find((n) => path.startsWith(n.getAttribute("data-path")));
      if (node) node.append(el("p", { class: "error field-error" }, x.message));
    }
  }

  async function create() {
    fill(errors);
    try {
      await api("POST", "/v1/secrets", { secret: draft(), reason: reason.value || null });
      location.hash = "#/secrets";
    } catch (e) {
      showErrors(e);
    }
  }

  const reason = el("input", { id: "w-reason", placeholder: "why (recorded with the version)" });
  const back = el("button", { type: "button", id: "w-back", "on:click": () => { step -= 1; nav(); } }, "Back");
  const next = el("button", { type: "button", id: "w-next", "on:click": () => { step += 1; nav(); } }, "Next");
  const finish = el("div", { class: "controls", id: "w-finish" },
    el("label", { for: "w-reason" }, "Reason", reason),
    el("button", { type: "button", id: "w-create", "on:click": create }, "Create secret"));
  function nav() {
    back.hidden = step === 0;
    next.hidden = step === 3;
    finish.hidden = step !== 3;
    drawStep();
    redraw(false);
    const first = body.querySelector("input, select");
    if (first) first.focus();
  }
  fill(root,
    el("h1", {}, "New secret"),
    steps,
    el("div", { class: "builder" },
      el("div", { class: "builder-form" }, body, el("div", { class: "controls" }, back, next), finish, errors),
      el("div", { class: "builder-preview" }, el("h2", {}, "What will be saved"), preview,
        el("p", { class: "muted" }, "The value is read on the gateway host; it is never sent to this page."))));
  nav();
}

// ------------------------------------------------------------------ approvals

// What an approval asks for, in one line: the tool call or the HTTP request.
function askedLine(a) {
  const r = a.request;
  const port = (r.scheme === "https" && r.port === 443) || (r.scheme === "http" && r.port === 80) ? "" : `:${r.port}`;
  return r.tool ? `tool ${r.tool} at ${r.host}${port}${r.path}` : `${r.method} ${r.scheme}://${r.host}${port}${r.path}`;
}

// The queue (pending approvals, each decided here), then grants and past decisions. An
// approval id in the address (#/approvals?id=…, the link a refusal and the webhook carry)
// is shown first.
async function approvals(root, params) {
  const wanted = params.get("id");
  const message = el("div", { role: "status", id: "approval-message" });
  const queue = el("section", { id: "approval-queue" });
  const grants = el("section", { id: "approval-grants" });
  const history = el("section", { id: "approval-history" });

  async function decide(id, verb, body) {
    try {
      const out = await api("POST", `/v1/approvals/${encodeURIComponent(id)}/${verb}`, body);
      const a = out.approval;
      const said = verb === "approve" ? `Approved ${a.id}: grant ${a.grant} allows ${askedLine(a)} until ${new Date(a.grant_expires_at).toLocaleString()}.`
        : verb === "deny" ? `Denied ${a.id}: ${askedLine(a)} stays refused.`
        : `Revoked the grant of ${a.id}: ${askedLine(a)} is refused again.`;
      await render(el("p", { role: "status" }, said));
    } catch (e) {
      fill(message, el("p", { class: "error", role: "alert" }, e.message));
    }
  }

  function details(a) {
    const r = a.request;
    return el("dl", { class: "approval-request" },
      el("dt", {}, "Workload"), el("dd", {}, a.identity || "(unnamed)", " ", (r.tags || []).map((t) => el("span", { class: "pill" }, t))),
      el("dt", {}, "Request"), el("dd", {}, el("code", {}, askedLine(a))),
      r.arguments_preview ? [el("dt", {}, "Arguments"), el("dd", {}, el("code", { class: "arguments" }, r.arguments_preview))] : null,
      el("dt", {}, "Policy"), el("dd", {}, el("a", { href: `#/policy?name=${encodeURIComponent(a.policy)}` }, a.policy)),
      el("dt", {}, "Asked"), el("dd", {}, `${new Date(a.requested_at).toLocaleString()}, ${a.asked} time${a.asked === 1 ? "" : "s"}; lapses ${new Date(a.lapses_at).toLocaleString()}`),
      el("dt", {}, "Request id"), el("dd", {}, a.request_id, " ", el("a", { href: `#/audit?policy=${encodeURIComponent(a.policy)}${a.identity ? `&identity=${encodeURIComponent(a.identity)}` : ""}` }, "audit")));
  }

  function pendingCard(a) {
    const lasts = el("input", { id: `for-${a.id}`, value: "1h", size: 6, "aria-label": `Grant ${a.id} for` });
    const note = el("input", { id: `note-${a.id}`, placeholder: "why (kept with the decision)", "aria-label": `Note for ${a.id}` });
    const body = () => {
      const b = {};
      if (note.value.trim()) b.note = note.value.trim();
      return b;
    };
    return el("article", { class: "card approval", "data-approval": a.id, id: `approval-${a.id}`, "aria-current": a.id === wanted ? "true" : null },
      el("h3", {}, `${a.id}`),
      details(a),
      canEdit() ? el("div", { class: "controls" },
        el("label", { for: `for-${a.id}` }, "Grant for", lasts),
        el("label", { for: `note-${a.id}` }, "Note", note),
        el("button", { type: "button", class: "primary", "aria-label": `Approve ${a.id}`,
          "on:click": () => decide(a.id, "approve", { ...body(), for: lasts.value.trim() || undefined }) }, "Approve"),
        el("button", { type: "button", "aria-label": `Deny ${a.id}`, "on:click": () => decide(a.id, "deny", body()) }, "Deny"))
        : el("p", { class: "muted" }, "An editor decides."));
  }

  async function render(notice) {
    const [pending, approved, all] = await Promise.all([
      api("GET", "/v1/approvals?status=pending"),
      api("GET", "/v1/approvals?status=approved"),
      api("GET", "/v1/approvals?limit=50"),
    ]);
    fill(message, notice || "");
    const first = pending.approvals.filter((a) => a.id === wanted).concat(pending.approvals.filter((a) => a.id !== wanted));
    fill(queue, el("h2", {}, `Waiting (${pending.approvals.length})`),
      first.length ? first.map(pendingCard) : el("p", { class: "muted" }, "No request is waiting for approval."));
    fill(grants, el("h2", {}, "Grants in force"),
      approved.approvals.length ? el("table", {},
        el("thead", {}, el("tr", {}, ["Approval", "Grant", "Allows", "Until", "By", ""].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, approved.approvals.map((a) => el("tr", { "data-grant": a.grant },
          el("td", {}, a.id),
          el("td", {}, el("a", { href: `#/policy?name=${encodeURIComponent(a.grant)}` }, a.grant)),
          el("td", {}, `${a.identity || "(unnamed)"}: ${askedLine(a)}`),
          el("td", {}, new Date(a.grant_expires_at).toLocaleString()),
          el("td", {}, a.decided_by || ""),
          el("td", {}, canEdit() ? el("button", { type: "button", "aria-label": `Revoke ${a.id}`, "on:click": () => decide(a.id, "revoke", {}) }, "Revoke") : null)))))
        : el("p", { class: "muted" }, "No grant is in force."));
    const past = all.approvals.filter((a) => a.status !== "pending" && a.status !== "approved");
    fill(history, el("h2", {}, "Decided and lapsed"),
      past.length ? el("table", {},
        el("thead", {}, el("tr", {}, ["Approval", "Status", "Request", "Decided", "By", "Note"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, past.map((a) => el("tr", { "data-approval": a.id },
          el("td", {}, a.id),
          el("td", {}, el("span", { class: `pill status-${a.status}` }, a.status)),
          el("td", {}, `${a.identity || "(unnamed)"}: ${askedLine(a)}`),
          el("td", {}, a.decided_at ? new Date(a.decided_at).toLocaleString() : ""),
          el("td", {}, a.decided_by || ""),
          el("td", {}, a.note || "")))))
        : el("p", { class: "muted" }, "Nothing yet."));
  }

  fill(root,
    el("h1", {}, "Approvals"),
    el("p", { class: "muted" }, "Requests a policy with action: approve refused until a person decides. Approving writes a grant: a policy allowing exactly that request from that workload until it expires."),
    message, queue, grants, history);
  await render();
}

// ------------------------------------------------------------------ rate limits

// Each rate limit of the pipeline and its most used keys now, as bars against the burst;
// then each LLM budget and what its keys spent this window, against the budget.
async function limits(root) {
  const [{ limits: all }, { budgets }] = await Promise.all([api("GET", "/v1/limits"), api("GET", "/v1/budgets")]);
  const spentCell = (used, limit, label) => limit
    ? el("meter", { min: 0, max: limit, value: Math.min(used, limit), high: limit * 0.8, "aria-label": label })
    : "";
  const budgetSection = budgets.length ? [
    el("h2", { id: "budgets-title" }, "LLM budgets"),
    budgets.map((b) => el("section", { class: "card budget", "data-transform": b.transform },
      el("h3", {}, `${b.transform}: ${[b.tokens ? `${b.tokens} tokens` : null, b.cost ? `${b.cost} spent` : null].filter(Boolean).join(" and ")} per ${b.per}, by ${b.key}; renews ${new Date(b.window_ends).toLocaleString()}`),
      b.keys.length ? el("table", {},
        el("thead", {}, el("tr", {}, ["Key", "Tokens", "Cost", "Of the budget"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, b.keys.map((k) => el("tr", {},
          el("td", {}, k.key || "(all)"),
          el("td", {}, b.tokens ? `${k.tokens} of ${b.tokens}` : String(k.tokens)),
          el("td", {}, b.cost ? `${k.cost.toFixed(4)} of ${b.cost}` : k.cost ? k.cost.toFixed(4) : "—"),
          el("td", {}, b.tokens ? spentCell(k.tokens, b.tokens, `${k.key || "all"}: ${k.tokens} of ${b.tokens} tokens`)
            : spentCell(k.cost, b.cost, `${k.key || "all"}: ${k.cost.toFixed(4)} of ${b.cost}`)))))) :
        el("p", { class: "muted" }, "Nothing spent this window."))),
  ] : el("p", { class: "muted" }, "This gateway's pipeline has no budget transform (docs/budgets.md).");
  fill(root,
    el("h1", {}, "Rate limits and budgets"),
    el("p", { class: "muted" }, "The pipeline's rate_limit transforms and their most used keys now: tokens taken and not yet back, against the burst. In memory: this instance's counts; in Redis: the fleet's."),
    all.length ? all.map((l) => el("section", { class: "card limit", "data-transform": l.transform },
      el("h2", {}, `${l.transform}: ${l.requests} per ${l.per}, burst ${l.burst}, by ${l.key}, in ${l.backend}`),
      l.error ? el("p", { class: "error", role: "alert" }, `Its use cannot be read: ${l.error}`) : null,
      l.keys.length ? el("table", {},
        el("thead", {}, el("tr", {}, ["Key", "In use", "Of the burst"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, l.keys.map((k) => el("tr", {},
          el("td", {}, k.key || "(all)"),
          el("td", {}, `${k.used} of ${k.capacity}`),
          el("td", {}, el("meter", { min: 0, max: k.capacity, value: k.used, high: k.capacity * 0.8,
            "aria-label": `${k.key || "all"}: ${k.used} of ${k.capacity} in use` })))))) :
        el("p", { class: "muted" }, "No key has a token in use."))) :
      el("p", { class: "muted" }, "This gateway's pipeline has no rate_limit transform (docs/config.md)."),
    budgetSection);
}

// ------------------------------------------------------------------ enrollment tokens

async function tokens(root) {
  const listed = await api("GET", "/v1/tokens");
  const message = el("div", { role: "status" });
  const name = el("input", { id: "token-name", required: true, placeholder: "acme-ci" });
  const tags = el("input", { id: "token-tags", placeholder: "tenant:acme, env:ci" });

  async function mint(event) {
    event.preventDefault();
    try {
      const minted = await api("POST", "/v1/tokens", {
        name: name.value.trim(),
        tags: tags.value.split(",").map((t) => t.trim()).filter(Boolean),
      });
      // The value is shown once, here; it is not kept by the page or the server.
      const value = el("code", { id: "minted-value" }, minted.value);
      await render(el("div", { class: "card", role: "alert" },
        el("p", {}, `Token ${minted.token.name} minted. Copy its value now: it is not shown again.`),
        value,
        el("p", { class: "muted" }, "A workload presents it as its proxy credential: Proxy-Authorization: Bearer <value>.")));
    } catch (e) {
      const errors = (e.body && e.body.error && e.body.error.errors) || [];
      fill(message, el("p", { class: "error", role: "alert" }, e.message),
        el("ul", {}, errors.map((x) => el("li", {}, `${x.path}: ${x.message}`))));
    }
  }

  async function revoke(id, label) {
    try {
      await api("DELETE", `/v1/tokens/${encodeURIComponent(id)}`);
      await render(el("p", { role: "status" }, `Token ${label} revoked.`));
    } catch (e) {
      fill(message, el("p", { class: "error", role: "alert" }, e.message));
    }
  }

  async function render(notice) {
    const fresh = notice ? (await api("GET", "/v1/tokens")).tokens : listed.tokens;
    fill(message, notice || "");
    fill(table, 
      el("thead", {}, el("tr", {}, ["Name", "Tags", "Created", "By", "State", "Actions"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, fresh.map((t) => el("tr", {},
        el("td", {}, t.name),
        el("td", {}, (t.tags || []).map((tag) => el("span", { class: "pill" }, tag))),
        el("td", {}, t.created_at ? new Date(t.created_at).toLocaleString() : ""),
        el("td", {}, t.created_by || ""),
        el("td", {}, t.revoked_at ? `revoked ${new Date(t.revoked_at).toLocaleString()}` : "active"),
        el("td", {}, canEdit() && !t.revoked_at
          ? el("button", { type: "button", "aria-label": `Revoke ${t.name}`, "on:click": () => revoke(t.id, t.name) }, "Revoke")
          : null)))));
  }

  const table = el("table", {});
  fill(root, 
    el("h1", {}, "Enrollment tokens"),
    el("p", { class: "muted" }, "A token gives the workload that presents it its tags. Values are shown once, when minted."),
    canEdit() ? el("form", { class: "controls", "on:submit": mint },
      el("label", { for: "token-name" }, "Name", name),
      el("label", { for: "token-tags" }, "Tags", tags),
      el("button", { type: "submit" }, "Mint")) : null,
    message,
    table,
  );
  await render();
}

// ------------------------------------------------------------------ audit

async function audit(root, params) {
  const filters = {};
  for (const key of ["since", "decision", "policy", "identity", "host", "tag"]) filters[key] = params.get(key) || "";
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
  field("identity", "Identity", text("identity")),
  field("host", "Host", text("host")),
  field("tag", "Tags (a,b)", text("tag")),
  el("button", { type: "submit" }, "Search"));
  const rows = page.events.map((e) => el("tr", {},
    el("td", {}, e.ts ? new Date(e.ts).toLocaleString() : ""),
    el("td", { class: e.decision }, e.decision),
    el("td", {}, el("details", { class: "trace" },
      el("summary", {}, `${e.method || ""} ${e.scheme || ""}://${e.host || ""}${e.port ? `:${e.port}` : ""}${e.path || ""}`),
      el("p", { class: "muted small" }, `request ${e.request_id || "—"}${e.status ? `, answered ${e.status}` : ""}${e.reason ? ` (${e.reason})` : ""}`),
      el("ol", {}, (e.transforms || []).map((t) => el("li", {},
        el("strong", {}, t.name), ` ${t.action}`,
        t.annotations && Object.keys(t.annotations).length
          ? el("code", { class: "small" }, ` ${JSON.stringify(t.annotations)}`) : null))))),
    el("td", {}, e.policy ? el("a", { href: `#/policy${query({ name: e.policy, version: e.policy_version })}` },
      e.policy, e.policy_version ? ` v${e.policy_version}` : "") : el("span", { class: "muted" }, e.reason || "—")),
    el("td", {}, e.identity && e.identity.name
      ? el("a", { href: `#/audit${query({ ...filters, cursor: null, identity: e.identity.name })}`,
        "aria-label": `Requests of ${e.identity.name}` }, e.identity.name)
      : identityName(e)),
    el("td", {}, (e.tags || []).map((t) => el("span", { class: "pill" }, t))),
    el("td", {}, el("a", { href: `#/playground${query({ method: e.method, url: auditedUrl(e) })}`,
      "aria-label": `Try ${e.method} ${e.host}${e.path || ""} in the playground` }, "Try")),
  ));
  const next = page.next_cursor
    ? el("a", { href: `#/audit${query({ ...filters, cursor: page.next_cursor })}` }, "Older →") : null;
  fill(root, 
    el("h1", {}, "Audit"),
    form,
    rows.length ? el("table", {},
      el("thead", {}, el("tr", {}, ["Time", "Decision", "Request", "Policy", "Identity", "Tags", "Playground"].map((h) => el("th", { scope: "col" }, h)))),
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
