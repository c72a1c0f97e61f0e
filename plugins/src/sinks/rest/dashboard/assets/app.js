// The dashboard: reads the metrics, their history and the open alerts at
// load, then follows the WebSocket (REST polling while it is down). Updates
// are rendered at most once per animation frame, in place; everything kept
// is capped (one hour of chart points, 500 events, 100 resolved alerts).

import * as api from "./api.js";
import * as fmt from "./format.js";
import * as panels from "./panels.js";
import { LineChart, Series } from "./charts.js";
import { Live } from "./live.js";

const M = "/api/v1/monitoring";
const HOUR_MS = 3_600_000;
const MAX_EVENTS = 500;
const MAX_RESOLVED = 100;

const state = {
  doc: null,
  receivedAt: null,
  // finished, errors, p50, p95, p99 by event time
  history: new Series(5),
  open: new Map(), // alert id → Alert (triggered, acknowledged)
  resolved: [], // newest first
  events: [], // newest first
  eventsDropped: 0,
  eventsPaused: false,
  healthy: null,
  // False once the server says it keeps no alerts (no `store`): not asked again.
  alertStore: true,
};

const $ = (id) => document.getElementById(id);

// ---- rendering, at most once per frame ----------------------------------

const dirty = new Set();
let frame = null;
const renderTimes = [];

function schedule(...parts) {
  for (const p of parts) dirty.add(p);
  if (frame === null) frame = requestAnimationFrame(render);
}

function render() {
  frame = null;
  const started = performance.now();
  const parts = new Set(dirty);
  dirty.clear();
  // Each panel on its own: one that cannot draw leaves the others be.
  const part = (name, draw) => {
    if (!parts.has(name)) return;
    try {
      draw();
    } catch (e) {
      console.warn(`flowpulse: the ${name} panel could not be drawn`, e);
    }
  };
  part("metrics", () => {
    if (!state.doc) return;
    panels.cards(state.doc);
    const list = (v) => (Array.isArray(v) ? v.filter((x) => x && typeof x === "object") : []);
    panels.agents($("agents"), list(state.doc.agents), Date.parse(state.doc.as_of || state.doc.last_update) || Date.now());
    panels.types($("types"), list(state.doc.workflows_by_type));
  });
  part("charts", drawCharts);
  part("alerts", drawAlerts);
  part("events", drawEvents);
  part("banner", drawBanner);
  renderTimes.push(performance.now() - started);
  if (renderTimes.length > 1000) renderTimes.splice(0, renderTimes.length - 1000);
}

/** For tests and benchmarks: the render times so far (ms). */
window.flowpulseRenderTimes = () => renderTimes.slice();

const charts = {
  throughput: new LineChart($("chart-throughput"), ["finished"], (v) => fmt.count(v)),
  errors: new LineChart($("chart-errors"), ["error rate"], (v) => fmt.percent(v)),
  latency: new LineChart($("chart-latency"), ["p50", "p95", "p99"], (v) => fmt.duration(v)),
};

const column = (c) => (s, i) => s.value(i, c);
const errorRate = (s, i) => {
  const finished = s.value(i, 0);
  return finished > 0 ? (100 * s.value(i, 1)) / finished : 0;
};

function drawCharts() {
  const h = state.history;
  charts.throughput.draw(h, [column(0)]);
  charts.errors.draw(h, [errorRate]);
  charts.latency.draw(h, [column(2), column(3), column(4)]);
}

const rank = { critical: 0, warning: 1, info: 2 };

function drawAlerts() {
  const open = [...state.open.values()].sort(
    (a, b) =>
      (rank[a.severity] ?? 3) - (rank[b.severity] ?? 3) ||
      (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : a.id < b.id ? -1 : 1),
  );
  panels.alerts($("alerts"), open, alertActions);
  // Resolved ones are drawn only while their panel is open.
  panels.alerts($("resolved"), $("resolved-panel").open ? state.resolved : [], alertActions);
  $("alerts-empty").hidden = open.length > 0;
  $("alerts-empty").textContent = state.alertStore
    ? "No open alerts."
    : "No alert store on this server: alerts are not kept.";
  schedule("banner");
}

function drawEvents() {
  const list = $("events");
  // Newest first; rows are reused from the bottom, never rebuilt wholesale.
  const rows = list.children;
  for (let i = 0; i < state.events.length; i++) {
    const text = panels.eventLine(state.events[i]);
    if (i < rows.length) {
      if (rows[i].textContent !== text) rows[i].textContent = text;
    } else {
      const li = document.createElement("li");
      li.textContent = text;
      list.appendChild(li);
    }
  }
  while (rows.length > state.events.length) list.lastChild.remove();
  $("events-dropped").textContent = `${fmt.count(state.eventsDropped)} dropped`;
}

function drawBanner() {
  const counts = { critical: 0, warning: 0, info: 0 };
  for (const a of state.open.values()) counts[a.severity] = (counts[a.severity] || 0) + 1;
  $("open-critical").textContent = counts.critical;
  $("open-warning").textContent = counts.warning;
  $("open-info").textContent = counts.info;
  const health = $("health");
  health.dataset.ok = state.healthy === null ? "unknown" : String(state.healthy);
  health.textContent = state.healthy === null ? "health unknown" : state.healthy ? "healthy" : "degraded";
}

// ---- data ----------------------------------------------------------------

function addHistory(points) {
  for (const p of points) {
    const t = Date.parse(p.timestamp);
    if (Number.isNaN(t)) continue;
    state.history.upsert(t, [p.finished, p.errors, p.latency_p50_ms, p.latency_p95_ms, p.latency_p99_ms]);
  }
  if (state.history.len) state.history.dropBefore(state.history.tAt(state.history.len - 1) - HOUR_MS);
}

function onMetrics(doc) {
  if (!doc || typeof doc.overview !== "object" || doc.overview === null) {
    console.warn("flowpulse: a metrics document without an overview was skipped");
    return;
  }
  // A poll answer older than what a frame already showed changes nothing.
  if (state.doc && doc.last_update && state.doc.last_update && doc.last_update < state.doc.last_update) return;
  $("banner-error").textContent = "";
  $("token-enter").hidden = true;
  state.doc = doc;
  state.receivedAt = Date.now();
  if (Array.isArray(doc.history) && doc.history.length) {
    addHistory([doc.history[doc.history.length - 1]]);
    schedule("charts");
  }
  schedule("metrics", "banner");
}

/** Ids of alerts seen resolved (capped): resolved is final. */
const resolvedIds = new Set();
/** When each alert's newest notice arrived (for merging a snapshot). */
const noticedAt = new Map();

function onAlert(alert) {
  if (!alert || typeof alert.id !== "string" || typeof alert.status !== "string") {
    console.warn("flowpulse: an alert without an id or status was skipped");
    return;
  }
  noticedAt.delete(alert.id);
  noticedAt.set(alert.id, performance.now());
  if (noticedAt.size > 1000) noticedAt.delete(noticedAt.keys().next().value);
  if (alert.status === "resolved") {
    state.open.delete(alert.id);
    resolvedIds.add(alert.id);
    if (resolvedIds.size > 1000) resolvedIds.delete(resolvedIds.values().next().value);
    state.resolved = [alert, ...state.resolved.filter((a) => a.id !== alert.id)].slice(0, MAX_RESOLVED);
  } else if (resolvedIds.has(alert.id)) {
    // A late copy of an older notice: the alert is resolved for good.
    return;
  } else {
    const known = state.open.get(alert.id);
    // A notice older than what is shown (a resend) changes nothing.
    const stale = known && (known.repeat > alert.repeat ||
      (known.repeat === alert.repeat && known.status === "acknowledged" && alert.status === "triggered"));
    if (!stale) state.open.set(alert.id, alert);
  }
  schedule("alerts");
}

function onEvents(events, dropped) {
  events = events.filter((e) => e && typeof e === "object");
  if (state.eventsPaused) {
    state.eventsDropped += events.length + dropped;
    schedule("events");
    return;
  }
  state.eventsDropped += dropped;
  for (const e of events) state.events.unshift(e);
  if (state.events.length > MAX_EVENTS) state.events.length = MAX_EVENTS;
  schedule("events");
}

/**
 * Reads the open alerts again and merges them: a notice that arrived while
 * the read was under way is newer than the snapshot and wins.
 */
async function loadAlerts() {
  if (!state.alertStore) return;
  const asked = performance.now();
  try {
    const answer = await api.get(`${M}/alerts?status=triggered,acknowledged&limit=500`);
    const open = new Map();
    for (const a of answer.data) {
      if (!resolvedIds.has(a.id)) open.set(a.id, a);
    }
    for (const [id, a] of state.open) {
      if ((noticedAt.get(id) || 0) > asked) open.set(id, a);
    }
    for (const id of [...open.keys()]) {
      if (resolvedIds.has(id)) open.delete(id);
    }
    state.open = open;
    // Notices older than this snapshot are in it: forget their times.
    for (const [id, at] of noticedAt) {
      if (at <= asked) noticedAt.delete(id);
    }
    schedule("alerts");
  } catch (e) {
    if (e.code === "store_not_configured") {
      state.alertStore = false;
      schedule("alerts");
    } else {
      showError(e);
    }
  }
}

async function loadHistory() {
  try {
    const answer = await api.get(`${M}/metrics/history`);
    addHistory(answer.data.points || []);
    schedule("charts");
  } catch (e) {
    if (e.code !== "metrics_unavailable") showError(e);
  }
}

async function loadRealtime() {
  try {
    const answer = await api.get(`${M}/metrics/realtime`);
    onMetrics(answer.data);
  } catch (e) {
    if (e.code !== "metrics_unavailable") showError(e);
  }
}

let healthInFlight = false;
async function loadHealth() {
  if (healthInFlight) return;
  healthInFlight = true;
  try {
    const r = await fetch(`${M}/health`, { cache: "no-store", signal: AbortSignal.timeout(10_000) });
    const body = await r.json();
    state.healthy = body.healthy === true;
    if (!$("pipeline").textContent) {
      const status = await api.get(`${M}/status`).catch(() => null);
      if (status && status.pipeline) $("pipeline").textContent = status.pipeline;
    }
  } catch {
    state.healthy = false;
  } finally {
    healthInFlight = false;
  }
  schedule("banner");
}

function showError(e) {
  $("banner-error").textContent = e.message;
  // Reads need the token and its dialog was cancelled: a way back in.
  if (e.status === 401) $("token-enter").hidden = false;
}

const alertActions = {
  async acknowledge(alert, comment, until) {
    const body = {};
    if (comment) body.comment = comment;
    if (until) body.until = until;
    const answer = await api.post(`${M}/alerts/${encodeURIComponent(alert.id)}/acknowledge`, body);
    onAlert(answer.data);
  },
  async resolve(alert) {
    const answer = await api.post(`${M}/alerts/${encodeURIComponent(alert.id)}/resolve`, {});
    onAlert(answer.data);
  },
  async history(alert) {
    const answer = await api.get(`${M}/alerts/${encodeURIComponent(alert.id)}`);
    return answer.data.history || [];
  },
};

// ---- controls ------------------------------------------------------------

function setupControls(live) {
  $("resolved-panel").addEventListener("toggle", () => schedule("alerts"));
  const panel = $("events-panel");
  panel.addEventListener("toggle", () => live.setEvents(panel.open));
  const pause = $("events-pause");
  pause.addEventListener("click", () => {
    state.eventsPaused = !state.eventsPaused;
    pause.setAttribute("aria-pressed", String(state.eventsPaused));
    pause.textContent = state.eventsPaused ? "Resume" : "Pause";
  });

  $("control").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = $("control-id").value.trim();
    const answer = $("control-answer");
    const send = $("control-send");
    if (!id || send.disabled) return;
    send.disabled = true;
    const body = { action: $("control-action").value };
    const reason = $("control-reason").value.trim();
    if (reason) body.reason = reason;
    answer.className = "";
    answer.textContent = "sending…";
    try {
      const r = await api.post(`/api/v1/workflows/${encodeURIComponent(id)}/control`, body, {
        "Idempotency-Key": api.uuid(),
      });
      answer.textContent = `${r.data.status}: ${r.data.message}`;
    } catch (e) {
      answer.className = "error";
      answer.textContent = e.message;
    } finally {
      send.disabled = false;
    }
  });

  $("token-enter").addEventListener("click", async () => {
    if (!(await api.askToken())) return;
    $("token-enter").hidden = true;
    $("banner-error").textContent = "";
    // The socket reconnects by itself on a new token; the reads go again.
    loadRealtime();
    loadHistory();
    loadAlerts();
  });

  const theme = $("theme");
  const themes = ["system", "light", "dark"];
  const apply = (t) => {
    if (t === "system") document.documentElement.removeAttribute("data-theme");
    else document.documentElement.dataset.theme = t;
    theme.textContent = `Theme: ${t}`;
    theme.setAttribute("aria-label", t === "system" ? "Theme: follows the system" : `Theme: ${t}`);
  };
  let current = localStorage.getItem("flowpulse-theme") || "system";
  apply(current);
  theme.addEventListener("click", () => {
    current = themes[(themes.indexOf(current) + 1) % themes.length];
    localStorage.setItem("flowpulse-theme", current);
    apply(current);
  });
}

function tickAge() {
  const age = $("age");
  age.textContent = state.receivedAt === null ? "no update yet" : `updated ${fmt.ago(Date.now() - state.receivedAt)}`;
}

// ---- start ---------------------------------------------------------------

const live = new Live({
  onMetrics,
  onAlert,
  onEvents,
  onPollAlerts: loadAlerts,
  // A socket (re)opened: alerts and history of the time without one.
  onOpen() {
    loadAlerts();
    loadHistory();
  },
  onState(s) {
    const pill = $("connection");
    pill.dataset.state = s;
    pill.textContent = s;
  },
});
window.flowpulseConnection = () => live.state;
setupControls(live);
// The first reads, then the WebSocket (each read gives up after 10 s).
Promise.all([loadRealtime(), loadHistory(), loadAlerts()]).finally(() => live.start());
loadHealth();
setInterval(tickAge, 1000);
setInterval(loadHealth, 10_000);
