// The audit trail of the whole system, one view: one row per command with its outcome (expired
// included), token creation and cancellation, enrollments, revocations and configuration
// changes, newest first, filtered by machine, person and kind. Live while open: it asks again
// every few seconds (audit events do not travel on the event stream).

import { $, h, emptyRow, setText } from "./dom.js";
import { api, enc, Unauthorised } from "./api.js";
import { dateTime, when } from "./format.js";
import { paramText, detailText } from "./admin.js";

const KINDS = [["", "all kinds"], ["command", "commands"], ["token", "enrollment tokens"], ["enrollment", "enrollments"],
  ["revocation", "revocations"], ["configuration", "configuration changes"]];
const OUTCOME_WORD = { pending: "waiting", delivered: "delivered, no answer yet", done: "done", failed: "failed",
  refused: "refused", expired: "expired unanswered", saved: "saved", "result-ignored": "answer ignored" };
/// How often the open view asks again.
const REFRESH_MS = 5000;

let machines = () => [];
let timer = null;
let seq = 0;
/// Everyone the trail has named so far, for the person filter.
const people = new Set();
/// Machines the trail has named, for the machine filter: one enrolled and revoked before it ever
/// sent a reading is in no machine list.
const named = new Set();

/// `list()` gives the machines the page knows (for names and the machine filter).
export function initAudit(list) {
  machines = list;
  $("auditkind").replaceChildren(...KINDS.map(([v, t]) => h("option", { value: v }, t)));
  for (const id of ["auditmachine", "auditwho", "auditkind"]) $(id).addEventListener("change", () => load());
  $("openaudit").addEventListener("click", openAudit);
}

export function openAudit() {
  $("problems").hidden = true; $("detail").hidden = true; $("auditall").hidden = false;
  fillMachines();
  load();
  clearInterval(timer);
  timer = setInterval(() => { if (!$("auditall").hidden && !document.hidden) load(); }, REFRESH_MS);
  $("h-auditall").focus();
}

export function closeAudit() {
  $("auditall").hidden = true;
  clearInterval(timer); timer = null;
}

function fillMachines() {
  const sel = $("auditmachine"), chosen = sel.value;
  const known = machines();
  const list = known.concat([...named].filter((id) => !known.some((m) => m.id === id)).map((id) => ({ id, hostname: id.slice(0, 12) })))
    .sort((a, b) => String(a.hostname).localeCompare(String(b.hostname)));
  sel.replaceChildren(h("option", { value: "" }, "all machines"),
    ...list.map((m) => h("option", { value: m.id, selected: m.id === chosen }, `${m.hostname} (${String(m.id).slice(0, 8)}…)`)));
}

function fillPeople() {
  const sel = $("auditwho"), chosen = sel.value;
  if (sel.options.length === people.size + 1) return; // nobody new: keep the list (and focus) as is
  sel.replaceChildren(h("option", { value: "" }, "everyone"),
    ...[...people].sort().map((p) => h("option", { value: p, selected: p === chosen }, p)));
}

function machineName(id) {
  if (!id) return "";
  const m = machines().find((x) => x.id === id);
  return m ? m.hostname : String(id).slice(0, 12) + "…";
}

async function load() {
  const my = ++seq;
  const q = [["machine", $("auditmachine").value], ["who", $("auditwho").value], ["kind", $("auditkind").value]]
    .filter(([, v]) => v).map(([k, v]) => `&${k}=${enc(v)}`).join("");
  try {
    const rows = await api(`/v1/audit/rows?limit=200${q}`);
    if (my !== seq || !Array.isArray(rows)) return;
    const before = named.size;
    for (const r of rows) {
      if (typeof r.who === "string" && r.who) people.add(r.who);
      if (typeof r.machine === "string" && r.machine) named.add(r.machine);
    }
    fillPeople();
    if (named.size !== before && document.activeElement !== $("auditmachine")) fillMachines();
    $("auditrows").replaceChildren(...rows.map((r) => h("tr", { class: "auditrow", "data-kind": r.kind, "data-outcome": r.outcome, "data-id": r.id || null },
      h("td", {}, h("time", { datetime: r.ts, title: dateTime(r.ts) }, when(r.ts))),
      h("td", {}, r.kind),
      h("td", {}, machineName(r.machine)),
      h("td", {}, h("code", {}, r.action), " ", h("span", { class: "muted" }, paramText(r.parameters))),
      h("td", {}, r.who),
      h("td", {}, h("span", { class: "ev ev-" + r.outcome }, OUTCOME_WORD[r.outcome] || r.outcome),
        detailText(r.detail) ? h("div", { class: "muted" }, detailText(r.detail)) : null))));
    if (rows.length === 0) $("auditrows").replaceChildren(emptyRow(6, "nothing recorded that matches"));
    setText($("auditallinfo"), `Newest first, ${rows.length} shown; refreshed ${when(Date.now())}, again every ${REFRESH_MS / 1000} s while this view is open.`);
  } catch (e) {
    if (!(e instanceof Unauthorised)) setText($("auditallinfo"), "cannot load the audit trail: " + e.message);
  }
}
