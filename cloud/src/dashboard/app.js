// The operator's console: problems first, machines by network, a machine's sensors grouped by
// kind, its relays, history and audit trail. Live events update rows in place: a row under the
// pointer or holding keyboard focus is never replaced.

import { $, h, emptyRow, setText, setAttr, keepOrder } from "./dom.js";
import { api, enc, pool, takeSetupFromUrl, showLogin, whenLoggedIn, whenReachableAgain, markDown, checkHealth, Unauthorised, loadMe, can, canAnywhere, me, showTotpSetup } from "./api.js";
import * as F from "./format.js";
import { History, RANGES } from "./chart.js";
import { initAudit, closeAudit } from "./audit.js";
import { R, renderRelays, resetRelays } from "./relays.js";
import { loadAudit, loadTokens, loadUnattached, loadApiTokens } from "./admin.js";
import { initManaged, loadManaged, resetManaged } from "./managed.js";
import { initPeople, loadPeople } from "./people.js";
import { loadSilences, ackOf, maintenanceOf, acknowledge as ackSensor, withdraw as withdrawAck, renderMaintenance, initSilences } from "./silences.js";

const S = {
  /// id → row of `GET /v1/machines` (with `network`, `revoked`, `uplink_name`).
  machines: new Map(),
  /// machine id → Map sensor → latest reading.
  sensors: new Map(),
  /// `machine \0 sensor` → { state, t (ms), exact }: since when the sensor is in its state.
  since: new Map(),
  /// `machine \0 sensor` → seconds between readings, learned from the readings themselves.
  interval: new Map(),
  machine: null,
  sensor: null,
  range: 3600,
};
const sk = (m, s) => m + "\0" + s;
const quiet = (e) => e instanceof Unauthorised;
const history = new History($("chart"), $("crange"), api);

// ---- state of things ----

function tsOf(r) { const t = Date.parse(r.ts); return Number.isFinite(t) ? t : 0; }

function isOffline(m) { return m.uplink === "offline"; }

/// A sensor with no reading for 3 of its intervals (learned, or its kind's default) is stale.
function staleness(m, s) {
  const key = sk(m.id, s.sensor);
  const iv = S.interval.get(key) ?? F.defaultInterval(s.sensor);
  if (!iv || !Number.isFinite(iv)) return null;
  const age = (Date.now() - tsOf(s)) / 1000;
  if (age <= 3 * iv) return null;
  if (!S.interval.has(key)) learnInterval(m.id, s);
  return { since: tsOf(s) + iv * 1000, interval: iv };
}

/// Finds out how often a sensor really reports, from its two readings before the latest one.
const learning = new Set();
async function learnInterval(machine, s) {
  const key = sk(machine, s.sensor);
  if (learning.has(key)) return;
  learning.add(key);
  try {
    const since = new Date(tsOf(s) - 26 * 3600e3).toISOString();
    const pts = await api(`/v1/machines/${enc(machine)}/readings?sensor=${enc(s.sensor)}&since=${since}&limit=3`);
    const ts = pts.map(tsOf).filter((t) => t > 0);
    // Fewer than two readings in a day: it reports less often than that, or rarely; not stale.
    S.interval.set(key, ts.length >= 2 ? Math.max(0.05, (ts[1] - ts[0]) / 1000) : Infinity);
    scheduleRender();
  } catch (_) { learning.delete(key); }
}

/// What a machine's rows show: its worst state and how many sensors are in each.
function machineState(m) {
  const counts = { error: 0, warn: 0, unknown: 0, stale: 0, ok: 0 };
  for (const s of (S.sensors.get(m.id) || new Map()).values()) {
    if (!isOffline(m) && staleness(m, s)) counts.stale++;
    counts[s.state in counts ? s.state : "unknown"]++;
  }
  const worst = m.revoked ? "revoked" : isOffline(m) ? "offline"
    : counts.error ? "error" : counts.warn ? "warn" : counts.unknown ? "unknown" : m.clock_problem ? "clock" : "ok";
  return { worst, counts };
}
const WORST_RANK = { revoked: 5, offline: 4, error: 4, warn: 3, clock: 3, unknown: 2, stale: 1, ok: 0 };

function stBadge(state, text) {
  return h("span", { class: "st t-" + state }, h("span", { class: "shape state-" + state, "aria-hidden": "true" }), text || F.stateText(state));
}
function setBadge(el, state, text) {
  const shape = el.querySelector(".shape");
  el.className = "st t-" + state;
  shape.className = "shape state-" + state;
  setText(el.lastChild, text || F.stateText(state));
}
/// A badge that can be updated in place: shape and word in separate nodes.
function badge() { return h("span", { class: "st" }, h("span", { class: "shape", "aria-hidden": "true" }), h("span", {})); }

function uplinkText(m) {
  if (m.uplink === "direct") return "direct to the cloud";
  if (m.uplink === "offline") return m.uplink_name ? `offline (last via ${m.uplink_name})` : "offline";
  if (m.uplink.startsWith("connector:")) {
    const id = m.uplink.slice(10);
    const name = m.uplink_name || S.machines.get(id)?.hostname;
    return "via " + (name || "connector " + id.slice(0, 8) + "…");
  }
  return m.uplink;
}

// ---- state since ----

/// Since when `s` has been in its state: known exactly once the page has seen a change, otherwise
/// found in the sensor's raw history (`resolveSince`).
function sinceOf(machine, s) {
  const v = S.since.get(sk(machine, s.sensor));
  return v && v.state === s.state ? v : null;
}

const resolving = new Set();
const sinceQueue = [];
function wantSince(machine, s) {
  const key = sk(machine, s.sensor);
  if (sinceOf(machine, s) || resolving.has(key)) return;
  resolving.add(key);
  sinceQueue.push([machine, s.sensor]);
  if (sinceQueue.length === 1) drainSince();
}
async function drainSince() {
  while (sinceQueue.length) {
    const [machine, sensor] = sinceQueue[0];
    try { await resolveSince(machine, sensor); } catch (_) { /* tried again on the next render */ }
    resolving.delete(sk(machine, sensor));
    sinceQueue.shift();
    scheduleRender();
  }
}

/// Looks back through raw readings in widening windows for the last reading in another state.
/// The API answers oldest first with a row limit: a window that fills the limit cannot show its
/// newest part, so the search stops there and the duration is a lower bound ("at least").
async function resolveSince(machine, sensor) {
  const latest = S.sensors.get(machine)?.get(sensor);
  if (!latest) return;
  const state = latest.state, end = tsOf(latest), LIMIT = 5000;
  const iv = S.interval.get(sk(machine, sensor)) ?? F.defaultInterval(sensor) ?? 60;
  let w = Math.min(600, Math.max(60, LIMIT * iv * 0.5));
  let bound = end, exact = false;
  for (let i = 0; i < 5; i++) {
    const since = end - w * 1000;
    const pts = await api(`/v1/machines/${enc(machine)}/readings?sensor=${enc(sensor)}&since=${new Date(since).toISOString()}&limit=${LIMIT}`);
    if (pts.length >= LIMIT) break;
    let j = pts.length - 1;
    while (j >= 0 && pts[j].state === state) j--;
    if (j >= 0) { bound = j + 1 < pts.length ? tsOf(pts[j + 1]) : end; exact = true; break; }
    if (pts.length) bound = Math.min(bound, tsOf(pts[0]));
    // Nothing older in the window than its first reading: that is where the sensor's history starts.
    if (pts.length && tsOf(pts[0]) > since + 3 * iv * 1000) { exact = true; break; }
    w *= 12;
  }
  const cur = S.sensors.get(machine)?.get(sensor);
  if (cur && cur.state === state) S.since.set(sk(machine, sensor), { state, t: bound, exact });
}

// ---- header: counts, title, favicon ----

function renderSummary(problems) {
  const n = { error: 0, warn: 0, unknown: 0, offline: 0, clock: 0 };
  for (const p of problems) n[p.state]++;
  const parts = [["error", "error", "errors"], ["warn", "warning", "warnings"], ["unknown", "unknown", "unknown"],
    ["offline", "machine offline", "machines offline"], ["clock", "clock off", "clocks off"]]
    .filter(([k]) => n[k]).map(([k, one, many]) => [k, `${n[k]} ${n[k] === 1 ? one : many}`]);
  const box = $("summary");
  const text = parts.length ? parts.map((p) => p[1]).join(", ")
    : S.machines.size ? `all ${S.machines.size} machine${S.machines.size === 1 ? "" : "s"} OK` : "no machines yet";
  if (box.dataset.text !== text) {
    box.dataset.text = text;
    box.replaceChildren(...(parts.length
      ? parts.map(([k, t]) => h("span", { class: "count" }, h("span", { class: "shape state-" + k, "aria-hidden": "true" }), t))
      : [h("span", { class: "count" }, h("span", { class: "shape state-ok", "aria-hidden": "true" }), text)]));
  }
  document.title = (parts.length ? text : "OK") + " · Outpost";
  const worst = n.error || n.offline ? "error" : n.warn || n.clock ? "warn" : n.unknown ? "unknown" : "ok";
  const icon = {
    error: '<rect x="2" y="2" width="12" height="12" fill="#c62828"/>',
    warn: '<polygon points="8,1 15,15 1,15" fill="#b7791f"/>',
    unknown: '<circle cx="8" cy="8" r="5.5" fill="none" stroke="#5f6b7a" stroke-width="3"/>',
    ok: '<circle cx="8" cy="8" r="7" fill="#166a2f"/>',
  }[worst];
  // Built from the constants above only: no data from the API goes into it.
  const href = "data:image/svg+xml," + encodeURIComponent(`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">${icon}</svg>`);
  if ($("favicon").getAttribute("href") !== href) $("favicon").setAttribute("href", href);
  $("favicon").dataset.state = worst;
}

// ---- problems ----

function collectProblems() {
  const out = [];
  for (const m of S.machines.values()) {
    if (m.revoked) continue;
    const maint = maintenanceOf(m);
    if (isOffline(m)) {
      out.push({ key: "m:" + m.id, machine: m, state: "offline", since: Date.parse(m.last_seen), exact: true, maint });
      continue; // its sensors' latest states are as old as its last batch; the machine row says it
    }
    if (m.clock_problem) out.push({ key: "c:" + m.id, machine: m, state: "clock", since: null, exact: false });
    for (const s of (S.sensors.get(m.id) || new Map()).values()) {
      if (s.state === "ok") continue;
      wantSince(m.id, s);
      const since = sinceOf(m.id, s);
      out.push({ key: "s:" + sk(m.id, s.sensor), machine: m, sensor: s, state: s.state in WORST_RANK ? s.state : "unknown",
        since: since ? since.t : null, exact: since ? since.exact : false, maint, ack: ackOf(m.id, s) });
    }
  }
  // Problems someone is on (acknowledged, in maintenance) after those nobody is on yet.
  const handled = (p) => (p.ack || p.maint ? 1 : 0);
  out.sort((a, b) => (handled(a) - handled(b)) || (WORST_RANK[b.state] - WORST_RANK[a.state])
    || ((a.since ?? Infinity) - (b.since ?? Infinity))
    || a.machine.hostname.localeCompare(b.machine.hostname)
    || (a.sensor?.sensor || "").localeCompare(b.sensor?.sensor || ""));
  return out;
}

/// "Acknowledged by user:olga: replacing the disk" / "In maintenance until …".
function handledText(ack, maint) {
  const parts = [];
  if (maint) parts.push(`In maintenance until ${F.dateTime(maint)}: no alert mail`);
  if (ack) parts.push(`Acknowledged by ${ack.by} ${F.ago(ack.at)}${ack.comment ? ": " + ack.comment : ""}`);
  return parts.join(" · ");
}

const probRows = new Map();
function renderProblems(problems) {
  const body = $("problist");
  if (S.machines.size === 0) { body.replaceChildren(emptyRow(3, "no machine has sent anything yet")); probRows.clear(); return; }
  if (problems.length === 0) { body.replaceChildren(emptyRow(3, "No problems: every sensor of every machine is OK.")); probRows.clear(); return; }
  const seen = new Set();
  const rows = problems.map((p) => {
    seen.add(p.key);
    let r = probRows.get(p.key);
    if (!r) {
      const tr = h("tr", { class: "problem", tabindex: 0, "data-machine": p.machine.id, "data-sensor": p.sensor ? p.sensor.sensor : null, "data-kind": p.sensor ? "sensor" : p.state });
      const open = () => selectMachine(p.machine.id, p.sensor ? p.sensor.sensor : null, true);
      tr.addEventListener("click", open);
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
      r = { tr, badge: badge(), what: h("div", { class: "name" }), detail: h("div", { class: "muted" }), handled: h("div", { class: "handled" }), dur: h("div", { class: "dur" }), abs: h("div", { class: "muted" }) };
      tr.append(h("td", {}, r.badge), h("td", {}, r.what, r.detail, r.handled), h("td", {}, r.dur, r.abs));
      probRows.set(p.key, r);
    }
    setBadge(r.badge, p.state);
    r.tr.dataset.state = p.state;
    const m = p.machine;
    setText(r.handled, handledText(p.ack, p.maint));
    setAttr(r.tr, "data-ack", p.ack ? p.ack.by : null);
    setAttr(r.tr, "data-maintenance", p.maint ? "yes" : null);
    if (p.sensor) {
      setText(r.what, `${F.kindTitle(F.kindOf(p.sensor.sensor))} · ${F.sensorName(p.sensor.sensor)} on ${m.hostname}`);
      const v = F.value(p.sensor.value, p.sensor.unit, p.sensor.sensor);
      setText(r.detail, p.sensor.message ? `${v} — ${p.sensor.message}` : v);
    } else if (p.state === "offline") {
      setText(r.what, `${m.hostname} is offline`);
      setText(r.detail, `no batch since ${F.dateTime(m.last_seen)}; its sensors show what they last reported`);
    } else {
      setText(r.what, `${m.hostname}: clock is off`);
      setText(r.detail, m.clock_problem);
    }
    const word = F.stateWord(p.state);
    if (p.since === null) {
      setText(r.dur, p.state === "clock" ? "reported with its latest batch" : "finding out since when…");
      setText(r.abs, p.state === "clock" ? "heard " + F.ago(m.last_seen) : "");
    } else {
      const d = F.duration(Math.max(0, (Date.now() - p.since) / 1000));
      setText(r.dur, `${word} for ${p.exact ? "" : "at least "}${d}`);
      setText(r.abs, "since " + F.dateTime(p.since));
      r.tr.dataset.since = String(p.since);
    }
    return r.tr;
  });
  for (const k of [...probRows.keys()]) if (!seen.has(k)) probRows.delete(k);
  if (body.querySelector(".emptyrow")) body.replaceChildren();
  keepOrder(body, rows);
}

// ---- machines ----

const machineRows = new Map();
const groupRows = new Map();
function machineMatches(m, q) {
  if (!q) return true;
  if (m.hostname.toLowerCase().includes(q) || m.id.toLowerCase().startsWith(q) || (m.network || "").toLowerCase().includes(q)) return true;
  for (const s of (S.sensors.get(m.id) || new Map()).values()) {
    if (s.sensor.toLowerCase().includes(q) || F.sensorName(s.sensor).toLowerCase().includes(q)) return true;
  }
  return false;
}

function renderMachines() {
  const body = $("machines");
  const net = $("netfilter").value, q = $("search").value.trim().toLowerCase(), onlyProblems = $("problemsonly").checked;
  const archived = [...S.machines.values()].filter((m) => m.archived_at).length;
  $("showarchivedlabel").hidden = archived === 0;
  // Archived machines (revoked, put out of sight by an admin) only when asked for.
  const showArchived = $("showarchived").checked;
  const nets = [...new Set([...S.machines.values()].map((m) => m.revoked ? "(revoked)" : m.network || "(unknown)"))].sort();
  const sel = $("netfilter");
  const have = [...sel.options].slice(1).map((o) => o.value);
  if (have.join("\n") !== nets.join("\n")) {
    sel.replaceChildren(h("option", { value: "" }, "all"), ...nets.map((n) => h("option", { value: n }, n)));
    sel.value = nets.includes(net) ? net : "";
  }
  const list = [...S.machines.values()].filter((m) => showArchived || !m.archived_at)
    .map((m) => ({ m, net: m.revoked ? "(revoked)" : m.network || "(unknown)", st: machineState(m) }))
    .filter((x) => (!net || x.net === net) && (!onlyProblems || x.st.worst !== "ok") && machineMatches(x.m, q))
    .sort((a, b) => (a.m.revoked - b.m.revoked) || a.net.localeCompare(b.net) || a.m.hostname.localeCompare(b.m.hostname) || a.m.id.localeCompare(b.m.id));
  if (S.machines.size === 0) { body.replaceChildren(emptyRow(2, "no machine has sent anything yet")); return; }
  if (list.length === 0) { body.replaceChildren(emptyRow(2, "no machine matches")); return; }
  if (body.querySelector(".emptyrow")) body.replaceChildren();
  const rows = [];
  let lastNet = null;
  const byNet = new Map();
  for (const x of list) byNet.set(x.net, (byNet.get(x.net) || 0) + 1);
  for (const { m, net: n, st } of list) {
    if (n !== lastNet) {
      lastNet = n;
      let g = groupRows.get(n);
      if (!g) { g = h("tr", { class: "group", "data-network": n }, h("th", { colspan: 2, scope: "rowgroup" })); groupRows.set(n, g); }
      setText(g.firstChild, `Network ${n} · ${byNet.get(n)} machine${byNet.get(n) === 1 ? "" : "s"}`);
      rows.push(g);
    }
    rows.push(machineRow(m, st));
  }
  keepOrder(body, rows);
}

function machineRow(m, st) {
  let r = machineRows.get(m.id);
  if (!r) {
    const tr = h("tr", { class: "machine", "data-id": m.id, tabindex: 0 });
    tr.addEventListener("click", () => selectMachine(m.id));
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); selectMachine(m.id); } });
    r = { tr, name: h("div", { class: "name" }), meta: h("div", { class: "muted" }), uplink: h("div", { class: "muted" }),
      buffer: h("div", { class: "muted" }), clock: h("div", { class: "clockwarn", role: "note" }), badge: badge(), counts: h("div", { class: "counts muted" }), seen: h("div", { class: "muted" }) };
    tr.append(h("td", {}, r.name, r.meta, r.uplink, r.buffer, r.clock), h("td", {}, r.badge, r.counts, r.seen));
    machineRows.set(m.id, r);
  }
  const selected = m.id === S.machine;
  r.tr.classList.toggle("sel", selected);
  setAttr(r.tr, "aria-current", selected ? "true" : null);
  r.tr.classList.toggle("offline", isOffline(m));
  r.tr.classList.toggle("revoked", !!m.revoked);
  r.tr.dataset.state = st.worst;
  setText(r.name, m.hostname);
  setText(r.meta, `${m.role} · ${m.id.slice(0, 12)}…${m.version ? " · v" + m.version : ""}`);
  setText(r.uplink, uplinkText(m));
  const buf = [`${m.buffered} buffered`];
  if (m.dropped) buf.push(`${m.dropped} dropped`);
  if (m.quarantined) buf.push(`${m.quarantined} put aside`);
  setText(r.buffer, buf.join(" · "));
  r.buffer.classList.toggle("bad", !!(m.dropped || m.quarantined));
  setText(r.clock, m.clock_problem ? "clock: " + m.clock_problem : "");
  r.clock.hidden = !m.clock_problem;
  setBadge(r.badge, st.worst);
  const c = st.counts, parts = [];
  if (c.error) parts.push(`${c.error} error${c.error === 1 ? "" : "s"}`);
  if (c.warn) parts.push(`${c.warn} warning${c.warn === 1 ? "" : "s"}`);
  if (c.unknown) parts.push(`${c.unknown} unknown`);
  if (c.stale) parts.push(`${c.stale} stale`);
  parts.push(`${c.ok} OK`);
  setText(r.counts, parts.join(" · "));
  setText(r.seen, m.revoked ? "enrollment withdrawn" : isOffline(m) ? `offline since ${F.when(m.last_seen)} (${F.ago(m.last_seen)})` : "heard " + F.ago(m.last_seen));
  r.seen.title = F.dateTime(m.last_seen);
  return r.tr;
}

// ---- the selected machine's sensors ----

const sensorRows = new Map();
const sensorGroups = new Map();
let sensorOrder = [];

/// Orders the table (kinds, then worst first, then name): done when a machine is chosen or a
/// sensor appears, never because a value or state changed, so rows do not move under the pointer.
function orderSensors() {
  const list = [...(S.sensors.get(S.machine) || new Map()).values()];
  list.sort((a, b) => F.kindRank(F.kindOf(a.sensor)) - F.kindRank(F.kindOf(b.sensor))
    || F.stateRank(b.state) - F.stateRank(a.state)
    || F.sensorName(a.sensor).localeCompare(F.sensorName(b.sensor), undefined, { numeric: true }));
  sensorOrder = list.map((s) => s.sensor);
}

function renderSensors() {
  const m = S.machines.get(S.machine);
  const body = $("sensors");
  if (!m) return;
  const sensors = S.sensors.get(m.id) || new Map();
  if (sensors.size === 0) { body.replaceChildren(emptyRow(3, "no readings yet")); return; }
  if (sensorOrder.length !== sensors.size || sensorOrder.some((k) => !sensors.has(k))) orderSensors();
  if (body.querySelector(".emptyrow")) body.replaceChildren();
  const rows = [];
  let kind = null;
  for (const key of sensorOrder) {
    const s = sensors.get(key);
    const k = F.kindOf(key);
    if (k !== kind) {
      kind = k;
      let g = sensorGroups.get(k);
      if (!g) { g = h("tr", { class: "group", "data-kind": k }, h("th", { colspan: 3, scope: "rowgroup" }, F.kindTitle(k))); sensorGroups.set(k, g); }
      rows.push(g);
    }
    rows.push(sensorRow(m, s));
  }
  keepOrder(body, rows);
  R.readOnly = !can("operator", m.customer);
  renderRelays(m.hostname);
}

function sensorRow(m, s) {
  let r = sensorRows.get(s.sensor);
  if (!r) {
    const tr = h("tr", { class: "sensor", "data-sensor": s.sensor, tabindex: 0 });
    const key = s.sensor;
    tr.addEventListener("click", () => selectSensor(key));
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); selectSensor(key); } });
    r = { tr, badge: badge(), name: h("div", { class: "name" }), key: h("div", { class: "key" }), value: h("div", { class: "value" }),
      msg: h("div", { class: "muted" }), time: h("time", {}), note: h("div", { class: "muted note" }),
      ack: h("button", { type: "button", class: "ack", "aria-label": `Acknowledge the problem of ${key}` }, "Acknowledge"),
      acked: h("div", { class: "handled" }),
      unack: h("button", { type: "button", class: "unack linkish", "aria-label": `Withdraw the acknowledgement of ${key}` }, "Withdraw"),
      ackform: h("form", { class: "ackform", hidden: true },
        h("input", { class: "ackcomment", maxlength: 500, placeholder: "comment (optional)", "aria-label": `Comment on the problem of ${key}` }),
        h("button", { class: "ackconfirm" }, "Acknowledge"), h("button", { type: "button", class: "ackcancel linkish" }, "Cancel")) };
    // Keys typed and clicks made in the row's controls do not select the row.
    for (const el of [r.ack, r.unack, r.ackform]) {
      el.addEventListener("click", (e) => e.stopPropagation());
      el.addEventListener("keydown", (e) => e.stopPropagation());
    }
    r.ack.addEventListener("click", () => { r.ack.hidden = true; r.ackform.hidden = false; r.ackform.querySelector("input").focus(); });
    r.ackform.querySelector(".ackcancel").addEventListener("click", () => { r.ackform.hidden = true; r.ack.hidden = false; r.ack.focus(); });
    r.ackform.addEventListener("submit", (e) => { e.preventDefault(); acknowledge(m.id, key, r); });
    r.unack.addEventListener("click", () => withdraw(m.id, key, r));
    tr.append(h("td", {}, r.badge, r.name, r.key), h("td", {}, r.value, r.msg), h("td", {}, r.time, r.note, r.acked, r.unack, r.ack, r.ackform));
    sensorRows.set(s.sensor, r);
  }
  const offline = isOffline(m);
  const stale = offline ? null : staleness(m, s);
  const shown = offline ? "offline" : stale ? "stale" : s.state;
  r.tr.classList.toggle("sel", s.sensor === S.sensor);
  setAttr(r.tr, "aria-selected", s.sensor === S.sensor ? "true" : "false");
  r.tr.classList.toggle("stale", !!stale);
  r.tr.classList.toggle("offline", offline);
  r.tr.dataset.state = s.state;
  setBadge(r.badge, s.state, stale || offline ? `${F.stateText(s.state)}, ${offline ? "machine offline" : "stale"}` : null);
  r.badge.dataset.shown = shown;
  setText(r.name, F.sensorName(s.sensor));
  setText(r.key, s.sensor);
  setText(r.value, F.value(s.value, s.unit, s.sensor));
  r.value.title = typeof s.value === "number" ? `${s.value}${s.unit ? " " + s.unit : ""}` : "";
  setText(r.msg, s.message || "");
  setAttr(r.time, "datetime", s.ts);
  r.time.title = F.dateTime(s.ts);
  setText(r.time, F.ago(s.ts));
  const ack = ackOf(m.id, s), operator = can("operator", m.customer);
  const open = !r.ackform.hidden;
  r.ack.hidden = s.state === "ok" || !operator || !!ack || open;
  r.unack.hidden = !ack || !operator;
  if (ack && open) r.ackform.hidden = true;
  setText(r.acked, ack ? handledText(ack, null) : "");
  setAttr(r.tr, "data-ack", ack ? ack.by : null);
  if (r.ack.dataset.ts !== s.ts) { r.ack.dataset.ts = s.ts; r.ack.disabled = false; r.ack.textContent = "Acknowledge"; }
  const since = s.state !== "ok" ? sinceOf(m.id, s) : null;
  setText(r.note, offline ? `machine offline since ${F.when(m.last_seen)}`
    : stale ? `no reading since ${F.when(s.ts)}; expected every ${F.duration(stale.interval)}`
    : since ? `${F.stateWord(s.state)} for ${since.exact ? "" : "at least "}${F.duration((Date.now() - since.t) / 1000)}` : F.when(s.ts));
  return r.tr;
}

/// Acknowledges the problem with the comment typed (operators only): its alert mails stop until
/// it changes or recovers.
async function acknowledge(machine, sensor, r) {
  const confirm = r.ackform.querySelector(".ackconfirm");
  confirm.disabled = true;
  try {
    await ackSensor(machine, sensor, r.ackform.querySelector("input").value);
    r.ackform.hidden = true;
    r.ackform.querySelector("input").value = "";
    loadAudit(machine);
  } catch (e) {
    if (!quiet(e)) { r.ackform.hidden = true; r.ack.hidden = false; r.ack.textContent = "Cannot acknowledge: " + e.message; }
  } finally { confirm.disabled = false; }
}

async function withdraw(machine, sensor, r) {
  try {
    await withdrawAck(machine, sensor);
    loadAudit(machine);
  } catch (e) { if (!quiet(e)) setText(r.acked, "cannot withdraw: " + e.message); }
}

async function selectMachine(id, sensor, fromProblems) {
  if (S.machine !== id) {
    resetRelays(id);
    loadManaged(id);
    sensorRows.clear(); sensorGroups.clear(); sensorOrder = [];
    $("sensors").replaceChildren();
    history.clear("choose a sensor");
  }
  S.machine = id; S.sensor = null;
  closeAudit();
  $("problems").hidden = true; $("detail").hidden = false;
  const m = S.machines.get(id);
  setText($("mtitle"), m ? `Sensors of ${m.hostname}` : "Sensors");
  setText($("minfo"), m ? `${m.role} in network ${m.network || "(unknown)"} · ${uplinkText(m)} · id ${m.id}` : "");
  R.sensors = S.sensors.get(id) || new Map();
  resetRevoke();
  renderMaintenance(m);
  renderMachines();
  renderSensors();
  loadAudit(id);
  try {
    const list = await api(`/v1/machines/${enc(id)}/sensors`);
    if (S.machine !== id) return;
    const map = new Map(list.map((s) => [s.sensor, s]));
    S.sensors.set(id, map); R.sensors = map;
    orderSensors();
    renderSensors();
    const worst = list.filter((s) => s.state !== "ok").sort((a, b) => F.stateRank(b.state) - F.stateRank(a.state))[0];
    const first = (sensor && map.get(sensor)) || worst || map.get("cpu.total") || list.find((s) => typeof s.value === "number") || list[0];
    // Unless the operator chose a sensor while this was loading.
    if (first && S.sensor === null) selectSensor(first.sensor, fromProblems);
  } catch (e) {
    if (!quiet(e)) setText($("minfo"), "cannot load the sensors: " + e.message);
  }
}

function goHome() {
  S.machine = null; S.sensor = null;
  resetManaged(null);
  closeAudit();
  $("detail").hidden = true; $("problems").hidden = false;
  history.clear("choose a sensor");
  renderAll();
}
$("home").addEventListener("click", goHome);
$("back").addEventListener("click", goHome);
$("auditback").addEventListener("click", goHome);
initAudit(() => [...S.machines.values()]);
initSilences(() => S.machines.get(S.machine), () => scheduleRender());
initPeople();

function selectSensor(key, focusRow) {
  const changed = S.sensor !== key;
  S.sensor = key;
  for (const [k, r] of sensorRows) {
    r.tr.classList.toggle("sel", k === key);
    setAttr(r.tr, "aria-selected", k === key ? "true" : "false");
  }
  if (focusRow) sensorRows.get(key)?.tr.focus({ preventScroll: false });
  if (changed) loadChart();
}

function loadChart() {
  const m = S.machines.get(S.machine), s = S.sensors.get(S.machine)?.get(S.sensor);
  if (!m || !s) return;
  setText($("ctitle"), `History of ${F.kindTitle(F.kindOf(s.sensor))} · ${F.sensorName(s.sensor)} (${s.sensor})`);
  history.show(m.id, s.sensor, s, S.range).catch((e) => { if (!quiet(e)) history.clear("cannot load the history: " + e.message); });
}

for (const [label, secs] of RANGES) {
  $("ranges").append(h("button", { type: "button", "data-range": secs, "aria-pressed": String(secs === S.range),
    onclick: (e) => {
      S.range = secs;
      for (const b of $("ranges").children) setAttr(b, "aria-pressed", String(b === e.currentTarget));
      loadChart();
    } }, label));
}

// ---- revocation: two clicks on the same button (the first arms it and says what will happen) ----

function resetRevoke() {
  const b = $("revoke"), m = S.machines.get(S.machine);
  b.classList.remove("armed"); b.disabled = false; b.textContent = "Revoke this machine";
  $("revokeout").textContent = m && m.revoked ? `${m.hostname} is revoked: its enrollment was withdrawn; its readings stay.` : "";
  b.hidden = !!(m && m.revoked);
  // A revoked machine belongs to no customer: archiving it is for admins of every customer.
  const a = $("archive");
  a.hidden = !(m && m.revoked && can("admin"));
  a.textContent = m && m.archived_at ? "Bring back from the archive" : "Archive";
  $("revokerow").hidden = !S.machine || !(can("admin", m && m.customer) || !a.hidden);
}
$("archive").addEventListener("click", async () => {
  const m = S.machines.get(S.machine);
  if (!m) return;
  try {
    const back = !!m.archived_at;
    const r = await api(`/v1/machines/${enc(m.id)}/archive`, back ? undefined : {}, back ? "DELETE" : "POST");
    m.archived_at = r.archived_at || undefined;
    $("revokeout").textContent = back ? `${m.hostname} is back in the list.` : `${m.hostname} is archived: out of the list (tick "archived" to see it); its readings stay.`;
    loadAudit(m.id);
    resetRevoke();
    renderAll();
  } catch (e) { $("revokeout").textContent = "cannot archive: " + e.message; }
});
$("revoke").addEventListener("click", async () => {
  const b = $("revoke"), m = S.machines.get(S.machine);
  if (!m) return;
  if (!b.classList.contains("armed")) {
    b.classList.add("armed");
    b.textContent = `Click again to revoke ${m.hostname}`;
    $("revokeout").textContent = "It will be refused from then on, and hubs leave it if it is a connector. Its readings stay.";
    return;
  }
  b.disabled = true;
  try {
    await api(`/v1/machines/${enc(m.id)}`, undefined, "DELETE");
    b.classList.remove("armed"); b.textContent = "Revoked";
    m.revoked = true; m.network = null;
    $("revokeout").textContent = `${m.hostname} is revoked; a new enrollment token takes it back.`;
    loadAudit(m.id);
    renderAll();
  } catch (e) {
    b.disabled = false;
    $("revokeout").textContent = "cannot revoke: " + e.message;
  }
});
R.onDone = () => loadAudit(S.machine);

// ---- rendering ----

function renderAll() {
  const problems = collectProblems();
  renderSummary(problems);
  renderProblems(problems);
  renderMachines();
  if (S.machine) { renderSensors(); renderMaintenance(S.machines.get(S.machine)); }
}
let pendingRender = null;
/// Live events come in bursts (a fast sensor, many machines): one render per 250 ms at most.
function scheduleRender() {
  if (pendingRender) return;
  pendingRender = setTimeout(() => { pendingRender = null; renderAll(); }, 250);
}
for (const id of ["search", "netfilter", "problemsonly", "showarchived"]) $(id).addEventListener("input", renderMachines);

// ---- live updates ----

function mergeMachine(m) {
  const old = S.machines.get(m.id);
  // Live events carry what the machine reported; enrollment facts come from the list.
  const row = { ...old, ...m };
  if (old && old.uplink !== m.uplink) row.uplink_name = undefined;
  S.machines.set(m.id, row);
  return !old || (old.uplink !== m.uplink && m.uplink.startsWith("connector:"));
}

let refreshSoon = null;
function refreshMachinesSoon() {
  if (refreshSoon) return;
  refreshSoon = setTimeout(() => { refreshSoon = null; refreshMachines(); }, 1000);
}

async function refreshMachines() {
  const list = await api("/v1/machines");
  const ids = new Set(list.map((m) => m.id));
  for (const m of list) {
    if (!S.machines.has(m.id)) loadSensorsOf(m.id);
    S.machines.set(m.id, m);
  }
  for (const id of [...S.machines.keys()]) if (!ids.has(id)) S.machines.delete(id);
  renderAll();
}

async function loadSensorsOf(id) {
  const list = await api(`/v1/machines/${enc(id)}/sensors`);
  const map = S.sensors.get(id) || new Map();
  for (const s of list) map.set(s.sensor, s);
  S.sensors.set(id, map);
  if (id === S.machine) R.sensors = map;
  scheduleRender();
}

function onSensors(machine, list) {
  let map = S.sensors.get(machine);
  if (!map) { map = new Map(); S.sensors.set(machine, map); }
  for (const s of list) {
    const key = sk(machine, s.sensor), old = map.get(s.sensor);
    if (old && tsOf(s) < tsOf(old)) continue; // replayed backlog: history, not the latest
    if (old && tsOf(s) > tsOf(old)) {
      const gap = (tsOf(s) - tsOf(old)) / 1000;
      const known = S.interval.get(key);
      S.interval.set(key, known && Number.isFinite(known) ? Math.min(known, gap) : gap);
    }
    if (old && old.state !== s.state) S.since.set(key, { state: s.state, t: tsOf(s), exact: true });
    map.set(s.sensor, s);
    if (machine === S.machine && s.sensor === S.sensor) history.push(s);
  }
  if (machine === S.machine) R.sensors = map;
  scheduleRender();
}

let es = null;
function listen() {
  if (es) es.close();
  es = new EventSource("/v1/events");
  es.onopen = () => { $("live").textContent = "live"; checkHealth(); };
  es.onerror = () => { $("live").textContent = "reconnecting…"; checkHealth(); };
  es.addEventListener("machine", (e) => {
    let m;
    try { m = JSON.parse(e.data); } catch (_) { return; }
    if (!m || typeof m.id !== "string" || typeof m.hostname !== "string" || typeof m.uplink !== "string") return;
    delete m.type;
    if (mergeMachine(m)) { refreshMachinesSoon(); if (!S.sensors.has(m.id)) loadSensorsOf(m.id).catch(() => {}); }
    scheduleRender();
  });
  es.addEventListener("sensors", (e) => {
    let ev;
    try { ev = JSON.parse(e.data); } catch (_) { return; }
    if (!ev || typeof ev.machine !== "string" || !Array.isArray(ev.sensors)) return;
    onSensors(ev.machine, ev.sensors.filter((s) => s && typeof s.sensor === "string" && typeof s.state === "string"));
  });
}

// ---- start ----

async function start() {
  try {
    const list = await api("/v1/machines");
    await loadMe();
    if (me.totp_required) { showTotpSetup(); return; }
    $("login").hidden = true; $("app").hidden = false;
    $("enrollsection").hidden = !canAnywhere("admin");
    $("tokencustomer").replaceChildren(...me.customers.filter((c) => can("admin", c.id))
      .map((c) => h("option", { value: c.id }, c.name === c.id ? c.id : `${c.name} (${c.id})`)));
    S.machines = new Map(list.map((m) => [m.id, m]));
    renderAll();
    if (canAnywhere("admin")) loadTokens();
    loadUnattached((id) => S.machines.get(id)?.hostname); loadApiTokens();
    initManaged();
    loadPeople();
    loadSilences().catch(() => {});
    listen();
    await pool(list.map((m) => m.id), 4, loadSensorsOf);
    renderAll();
  } catch (e) {
    if (!quiet(e)) { $("live").textContent = "error: " + e.message; markDown(); }
  }
}
whenLoggedIn(start);
whenReachableAgain(() => { refreshMachines().catch(() => {}); if (S.machine) selectMachine(S.machine); });
// The first-owner link asks for a name and password instead of trying the API.
if (takeSetupFromUrl()) showLogin(); else start();
window.addEventListener("hashchange", () => { if (takeSetupFromUrl()) showLogin(); });

setInterval(() => { // machines turn offline by silence, which sends no event
  if ($("app").hidden) return;
  refreshMachines().catch(() => {});
  loadSilences().catch(() => {});
  loadUnattached((id) => S.machines.get(id)?.hostname);
  if (canAnywhere("admin")) loadTokens();
}, 15000);
// Durations and "ago" texts move with the clock.
setInterval(() => { if (!$("app").hidden) renderAll(); }, 5000);
