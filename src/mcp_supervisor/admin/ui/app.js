// The web observer of mcp-supervisor: the live tree (fed by /events), health, a child's output, recent events,
// and token-guarded controls. No framework, no build step; every text goes in through textContent.
"use strict";

const TOKEN_KEY = "mcp-supervisor-token";
const SYMBOL = { running: "●", starting: "◐", restarting: "↻", stopping: "◑", stopped: "■" };
const HOUR = 3600;
const BUCKETS = 12;
const BARS = "▁▂▃▄▅▆▇█";

const NOISE = new Set(["ProcessOutput", "ServiceOperation", "ServiceState", "HealthRound"]);  // hidden unless asked
const SEEN_MAX = 20000;

const state = {
  seen: new Set(),       // ids of the events already applied: a replay after a reconnect applies nothing twice
  seenOrder: [],
  showNoise: false,      // the events panel shows service telemetry too
  reloadBanner: false,   // the message line shows a reload failure (a later good reload clears it)
  fetchedAt: 0,          // when it was fetched (ms): uptimes tick from there
  restarts: new Map(),   // path -> [unix seconds of each restart seen in the event stream]
  selected: null,        // the child whose output is shown
  logSource: null,
  refreshTimer: null,
  fleetTimer: null,      // fleet mode: /cluster is read every 2 s
};

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function message(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function sparkline(path) {
  const now = Date.now() / 1000;
  const counts = new Array(BUCKETS).fill(0);
  for (const at of state.restarts.get(path) || []) {
    const age = now - at;
    if (age >= 0 && age < HOUR) counts[BUCKETS - 1 - Math.floor(age / (HOUR / BUCKETS))] += 1;
  }
  const max = Math.max(...counts);
  const bars = counts.map((c) => (c === 0 ? "·" : BARS[Math.min(BARS.length - 1, Math.ceil((c / max) * BARS.length) - 1)]));
  return { text: bars.join(""), total: counts.reduce((a, b) => a + b, 0) };
}

function bytes(n) {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  return `${Math.round(n / 1024)} KiB`;
}

function resourcesCell(res) {
  const td = el("td", null, "resources");
  if (!res) return td;
  const history = res.rss_history || [];
  const max = Math.max(1, ...history);
  const line = history.map((v) => BARS[Math.min(BARS.length - 1, Math.floor((v / max) * (BARS.length - 1)))]).join("");
  td.append(el("span", line, "spark"), el("span", ` ${bytes(res.rss_bytes)} · ${res.cpu_s.toFixed(1)}s`));
  td.title = `resident ${bytes(res.rss_bytes)} (peak ${bytes(res.peak_rss_bytes)}), CPU ${res.cpu_s.toFixed(2)}s, ` +
    `${res.processes} process(es), ${res.threads} thread(s)${res.fds !== null ? ", " + res.fds + " open files" : ""}`;
  return td;
}

function renderAlerts(receivers) {
  if (!receivers || !receivers.length) { $("alerts").replaceChildren(el("li", "none configured")); return; }
  $("alerts").replaceChildren(...receivers.map((r) => {
    const said = r.up === null ? "nothing sent yet" : r.up ? "ok" : `failing: ${r.last_error}`;
    const li = el("li", `${r.name} → ${r.receiver}: ${said} (sent ${r.sent}, failed ${r.failed}, dropped ${r.dropped})`,
      r.up === false ? "check-fail" : "");
    li.dataset.name = r.name;
    return li;
  }));
}

// -- why did it end (the selected child's exits) -------------------------------------------------------------
function clock(at) { return at ? new Date(at * 1000).toLocaleTimeString() : "never"; }

async function refreshWhy() {
  const path = state.selected;
  if (!path) return;
  const resp = await fetch(`/children/${path.split("/").map(encodeURIComponent).join("/")}/exits`, { cache: "no-store" });
  if (!resp.ok || path !== state.selected) return;
  const doc = await resp.json();
  $("why-panel").hidden = false;
  $("why-path").textContent = path;
  const lb = doc.loop_blocked;
  $("diagnosis").textContent = doc.diagnosis + (lb ? ` — it blocked the event loop ${lb.count} time(s), ` +
    `${lb.total_s.toFixed(1)}s in all; the last in ${lb.frames[lb.frames.length - 1] || "?"}` : "");
  $("diagnosis").className = doc.crash_loop ? "check-fail" : "";
  const rows = doc.exits.slice().reverse().map((r) => {
    const tr = el("tr");
    tr.append(el("td", clock(r.started_at)), el("td", clock(r.ready_at)), el("td", clock(r.ended_at)),
      el("td", duration(r.runtime_s) || "0s"), el("td", r.cause, `cause-${r.cause}`),
      el("td", (r.detail || r.reason) + (r.certainty && r.certainty !== "certain" ? ` (${r.certainty})` : "")),
      el("td", r.peak_rss_bytes ? bytes(r.peak_rss_bytes) : "-"), el("td", r.cpu_s !== null ? `${r.cpu_s.toFixed(1)}s` : "-"));
    tr.title = r.last_lines.join("\n");
    return tr;
  });
  document.querySelector("#exits tbody").replaceChildren(...rows);
}

// -- the tree ----------------------------------------------------------------------------------------------
function flatten(node, depth, out) {
  for (const child of node.children || []) {
    out.push({ node: child, depth });
    flatten(child, depth + 1, out);
  }
  return out;
}

function renderTree() {
  const body = document.querySelector("#tree tbody");
  const rows = state.status ? flatten(state.status, 0, []) : [];
  const elapsed = (Date.now() - state.fetchedAt) / 1000;
  const canAct = Boolean(token());
  body.replaceChildren(...rows.map(({ node, depth }) => {
    const tr = el("tr");
    tr.dataset.path = node.path;
    if (node.path === state.selected) tr.classList.add("selected");
    const name = el("td", `${"  ".repeat(depth)}${depth ? "└ " : ""}${node.id}`, "path");
    name.style.paddingLeft = `${0.5 + depth * 1.1}rem`;
    tr.append(name, el("td", node.kind));
    const st = el("td", `${SYMBOL[node.state] || "?"} ${node.state}`, `state state-${node.state}`);
    if (node.crash_loop) {
      const loop = node.crash_loop;
      st.append(el("span", " crash-looping", "looping"));
      st.classList.add("is-looping");
      st.title = `${loop.count} ${loop.cause} exits since ${new Date(loop.since * 1000).toLocaleTimeString()}` +
        (loop.line ? `: ${loop.line}` : "");
    }
    tr.append(st);
    tr.append(el("td", node.pid ?? ""));
    const up = el("td", node.state === "running" ? duration(node.uptime_s + elapsed) : "", "uptime");
    if (node.state === "running") up.dataset.up = String(node.uptime_s - state.fetchedAt / 1000);
    tr.append(up);
    tr.append(el("td", node.restarts, "restarts"));
    const spark = sparkline(node.path);
    const sp = el("td", spark.text, "spark");
    sp.title = `${spark.total} restart(s) seen in the last hour`;
    tr.append(sp);
    const last = node.last_exit;
    tr.append(el("td", last ? `${last.cause ? last.cause + " — " : ""}${last.detail || last.reason}` : "", "last-exit"));
    tr.append(resourcesCell(node.resources));
    const next = el("td", node.next_restart_at ? `in ${duration(node.next_restart_at - Date.now() / 1000)}` : "", "next");
    if (node.next_restart_at) next.dataset.at = String(node.next_restart_at);
    tr.append(next);
    const actions = el("td", null, "actions");
    for (const action of ["restart", "stop", "start"]) {
      const b = el("button", action);
      b.type = "button";
      b.disabled = !canAct;
      b.dataset.action = action;
      b.dataset.path = node.path;
      b.title = canAct ? `${action} ${node.path}` : "paste the admin token first";
      actions.append(b);
    }
    tr.append(actions);
    return tr;
  }));
}

function tick() {
  const now = Date.now() / 1000;
  for (const td of document.querySelectorAll("#tree td.uptime[data-up]")) td.textContent = duration(now + Number(td.dataset.up));
  for (const td of document.querySelectorAll("#tree td.next[data-at]")) td.textContent = `in ${duration(Number(td.dataset.at) - now)}`;
}

async function refreshStatus() {
  const resp = await fetch("/status", { cache: "no-store" });
  if (!resp.ok) throw new Error(`/status answered ${resp.status}`);
  state.status = await resp.json();
  state.fetchedAt = Date.now();
  renderTree();
  renderAlerts(state.status.alerts);
  if (state.status.fleet && !state.fleetTimer) refreshFleet();
}

// -- the fleet (fleet mode only: /status says so) ------------------------------------------------------------
async function refreshFleet() {
  state.fleetTimer = setTimeout(refreshFleet, 2000);  // the fleet is read from the database every heartbeat
  const resp = await fetch("/cluster", { cache: "no-store" });
  if (!resp.ok) return;
  const view = await resp.json();
  const now = Date.now() / 1000;
  $("fleet-panel").hidden = false;
  $("fleet-conn").textContent = view.connected ? `(this node: ${view.node})` : `(database unreachable: ${view.error})`;
  $("fleet-conn").className = view.connected ? "" : "check-fail";
  const rows = view.nodes.map((n) => {
    const tr = el("tr");
    tr.dataset.node = n.node;
    tr.append(el("td", n.node), el("td", n.live ? "live" : "down", n.live ? "state-running" : "state-stopped"),
      el("td", `${duration(Math.max(0, now - n.heartbeat_at))} ago`),
      el("td", `${n.status.running ?? "?"}/${n.status.children ?? "?"} running`), el("td", n.admin));
    return tr;
  });
  document.querySelector("#fleet tbody").replaceChildren(...rows);
  $("singletons").replaceChildren(...view.singletons.map((s) => {
    const unheld = s.unheld_for == null ? "" : ` for ${Math.round(s.unheld_for)}s`;
    const many = (s.holders || []).length > 1 ? ` — ALARM: held by ${s.holders.join(", ")}` : "";
    const li = el("li", `${s.path}: ${s.holder ? "held by " + s.holder + ` (token ${s.token})` : "not held" + unheld}${many}`);
    li.dataset.path = s.path;
    return li;
  }));
}

async function refreshHealth() {
  const resp = await fetch("/health", { cache: "no-store" });
  const doc = await resp.json();
  $("overall").textContent = `health: ${doc.status}`;
  $("overall").dataset.status = doc.status;
  const items = [];
  for (const [name, results] of Object.entries(doc.checks || {})) {
    for (const r of results) {
      const text = `${r.status === "pass" ? "✓" : r.status === "warn" ? "!" : "✗"} ${name}` +
        `${r.componentId ? " " + r.componentId : ""}: ${r.status}${r.output ? " — " + r.output : ""}`;
      items.push(el("li", text, `check-${r.status}`));
    }
  }
  $("health").replaceChildren(...items);
}

function scheduleRefresh(health) {
  if (health) refreshHealth().catch(() => {});
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    refreshStatus().catch((e) => message(String(e), true));
  }, 50);
}

// -- events ------------------------------------------------------------------------------------------------
function describe(ev) {
  const time = new Date((ev.at || 0) * 1000).toLocaleTimeString();
  const who = ev.path || "/";
  switch (ev.type) {
    case "ChildStarted": return `${time} ${who} started${ev.pid ? " pid " + ev.pid : ""} (restarts ${ev.restarts})`;
    case "ChildExited": return `${time} ${who} exited: ${ev.reason.kind}${ev.reason.detail ? " " + ev.reason.detail : ""}`;
    case "RestartScheduled": return `${time} ${who} restart in ${ev.delay_s.toFixed(2)}s (attempt ${ev.attempt})`;
    case "IntensityExceeded": return `${time} ${who} gave up: intensity ${ev.intensity} in ${ev.period}s exceeded`;
    case "ReloadResult": return `${time} reload ${ev.ok ? "applied: " + ev.changes.length + " change(s)" : "failed: " + ev.error}`;
    case "HealthTransition": return `${time} health ${ev.check || "overall"}: ${ev.previous} → ${ev.current}`;
    case "CrashLoopStarted": return `${time} ${who} is crash-looping: ${ev.count} ${ev.cause} exits${ev.line ? " — " + ev.line : ""}`;
    case "LoopBlocked": return `${time} ${who} blocked the event loop for ${ev.duration_s}s at ${ev.frames[ev.frames.length - 1] || "?"}`;
    case "CrashLoopEnded": return `${time} ${who} recovered after ${ev.count} ${ev.cause} exits`;
    case "ProcessOutput": return null;  // the output panel shows those
    case "ServiceOperation": return `${time} ${who} ${ev.service} ${ev.operation}: ${ev.outcome}`;
    case "ServiceState": return `${time} ${who} ${ev.service} ${ev.state}${ev.detail ? ": " + ev.detail : ""}`;
    case "HealthRound": return `${time} health round`;
    default: return `${time} ${who} ${ev.type}`;
  }
}

function firstTime(ev) {
  if (ev.id === undefined) return true;
  if (state.seen.has(ev.id)) return false;
  state.seen.add(ev.id);
  state.seenOrder.push(ev.id);
  if (state.seenOrder.length > SEEN_MAX) state.seen.delete(state.seenOrder.shift());
  return true;
}

function onEvent(ev) {
  if (!firstTime(ev)) return;
  if (ev.type === "ChildStarted" && ev.restarts > 0) {
    const list = state.restarts.get(ev.path) || [];
    list.push(ev.at);
    while (list.length && Date.now() / 1000 - list[0] > HOUR) list.shift();
    state.restarts.set(ev.path, list);
  }
  const text = describe(ev);
  if (text !== null) {
    const list = $("events");
    const li = el("li", text, ev.type);
    li.dataset.id = ev.id || "";
    if (NOISE.has(ev.type)) li.classList.add("noise");
    list.prepend(li);
    while (list.children.length > 300) list.lastChild.remove();
  }
  if (ev.type === "ReloadResult") {  // the banner shows the latest reload's result, not an old failure
    if (!ev.ok) message(`reload failed, the running configuration is kept: ${ev.error}`, true);
    else if (state.reloadBanner) message(`reloaded: ${ev.changes.length} change(s)`, false);
    state.reloadBanner = !ev.ok;
  }
  if (["ChildStarted", "ChildExited", "RestartScheduled", "StartFailed", "SupervisorStopped", "ReloadResult",
       "IntensityExceeded", "CrashLoopStarted", "CrashLoopEnded"].includes(ev.type)) scheduleRefresh(false);
  if (ev.path === state.selected && ["ChildExited", "StartFailed", "CrashLoopStarted", "CrashLoopEnded"].includes(ev.type)) {
    refreshWhy().catch(() => {});
  }
  if (ev.type === "HealthTransition" || ev.type === "HealthRound") scheduleRefresh(true);
}

function connectEvents() {
  // replay what the journal still holds (restart history for the sparklines), then follow live; EventSource
  // reconnects by itself and sends Last-Event-ID
  const source = new EventSource("/events?follow=1&last_event_id=0");
  const conn = $("conn");
  source.onopen = () => { conn.textContent = "live"; conn.dataset.state = "live"; scheduleRefresh(true); };
  source.onerror = () => { conn.textContent = "reconnecting…"; conn.dataset.state = "down"; };
  source.onmessage = (m) => onEvent(JSON.parse(m.data));
  for (const type of ["ChildStarted", "ChildExited", "RestartScheduled", "StartFailed", "IntensityExceeded",
                      "SupervisorStopped", "ShutdownTimeout", "ChildUnstopped", "EscapeeKilled", "SpecWarning",
                      "HealthTransition", "HealthRound", "ReloadResult", "ProcessOutput", "ServiceState",
                      "ServiceOperation", "CrashLoopStarted", "CrashLoopEnded", "SingletonStarted", "LoopBlocked",
                      "SingletonKilled", "SingletonUnheld", "SingletonOverlap"]) {
    source.addEventListener(type, (m) => onEvent(JSON.parse(m.data)));
  }
  source.addEventListener("gap", (m) => {
    const { missed, restarted } = JSON.parse(m.data);
    $("events").prepend(el("li", restarted ? "… the daemon restarted" : `… ${missed} event(s) missed`, "gap"));
    scheduleRefresh(true);
  });
}

// -- a child's output --------------------------------------------------------------------------------------
function select(path) {
  if (state.logSource) state.logSource.close();
  state.selected = path;
  $("log-path").textContent = path;
  const pre = $("logs");
  pre.replaceChildren();
  const source = new EventSource(`/children/${path.split("/").map(encodeURIComponent).join("/")}/logs?follow=1&lines=200`);
  state.logSource = source;
  source.addEventListener("line", (m) => {
    const line = JSON.parse(m.data);
    const time = new Date(line.at * 1000).toLocaleTimeString();
    pre.append(el("span", `${time} ${line.stream}${line.pid ? "[" + line.pid + "]" : ""} ${line.text}\n`, line.stream));
    while (pre.childNodes.length > 2000) pre.firstChild.remove();
    pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("gap", (m) => pre.append(el("span", `… ${JSON.parse(m.data).missed} line(s) missed\n`, "gap")));
  renderTree();
  refreshWhy().catch(() => {});
}

// -- controls ----------------------------------------------------------------------------------------------
async function post(url) {
  const t = token();
  if (!t) throw new Error("paste the admin token first");
  const resp = await fetch(url, { method: "POST", headers: { Authorization: `Bearer ${t}` }, cache: "no-store" });
  let doc = {};
  try { doc = await resp.json(); } catch (e) { /* an empty or non-JSON body */ }
  if (!resp.ok && resp.status !== 422) throw new Error(doc.error || `${url} answered ${resp.status}`);
  return { status: resp.status, doc };
}

async function act(action, path) {
  if (action === "stop" && !window.confirm(`Stop ${path}? It stays stopped until started again.`)) return;
  try {
    await post(`/children/${path.split("/").map(encodeURIComponent).join("/")}/${action}`);
    message(`${action} ${path}: done`, false);
  } catch (e) {
    message(`${action} ${path}: ${e.message}`, true);
  }
  scheduleRefresh(false);
}

async function reload() {
  try {
    const { doc } = await post("/reload?wait=1");
    if (doc.ok) {
      const changes = doc.changes.map((c) => `${c.path} ${c.change}`).join(", ");
      message(`reloaded: ${changes || "nothing changed"}`, false);
    } else {
      message(`reload refused, the running configuration is kept: ${doc.error}`, true);
    }
  } catch (e) {
    message(`reload: ${e.message}`, true);
  }
}

function updateControls() {
  const has = Boolean(token());
  $("reload").disabled = !has;
  $("forget-token").disabled = !has;
  $("token").placeholder = has ? "token in use (this tab only)" : "paste to enable controls";
  renderTree();
}

function init() {
  $("save-token").addEventListener("click", () => {
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    updateControls();
  });
  $("forget-token").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); updateControls(); });
  $("reload").addEventListener("click", reload);
  $("show-noise").addEventListener("change", (e) => {
    state.showNoise = e.target.checked;
    $("events").classList.toggle("show-noise", state.showNoise);
  });
  document.querySelector("#tree tbody").addEventListener("click", (e) => {
    const button = e.target.closest("button");
    if (button) { act(button.dataset.action, button.dataset.path); return; }
    const row = e.target.closest("tr");
    if (row) select(row.dataset.path);
  });
  setInterval(tick, 1000);  // uptimes and next-restart countdowns tick (in place: rows are not rebuilt)
  updateControls();
  refreshStatus().catch((e) => message(String(e), true));
  refreshHealth().catch(() => {});
  connectEvents();
}

document.addEventListener("DOMContentLoaded", init);
