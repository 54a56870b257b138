// Acknowledgements and maintenance windows: what the problem list and the sensor rows say about
// them, and the machine view's maintenance section (list, add, remove). Times are entered in the
// browser's time zone and sent as UTC; a weekly window is converted once, when it is made.

import { $, h, emptyRow, setText } from "./dom.js";
import { api, enc, can } from "./api.js";
import * as F from "./format.js";

/// `machine \0 sensor` → acknowledgement; the windows as the API lists them.
export const SIL = { acks: new Map(), windows: [], loaded: false };
let onChange = () => {};

export async function loadSilences() {
  const s = await api("/v1/silences");
  SIL.acks = new Map((s.acks || []).map((a) => [a.machine + "\0" + a.sensor, a]));
  SIL.windows = s.maintenance || [];
  SIL.loaded = true;
  onChange();
}

/// The acknowledgement in force for this sensor: the cloud ends one when the sensor changes, so
/// one listed is in force while the sensor is still in the state acknowledged.
export function ackOf(machine, s) {
  const a = SIL.acks.get(machine + "\0" + s.sensor);
  return a && a.state === s.state ? a : null;
}

function covers(w, m) {
  return w.scope.machine ? w.scope.machine === m.id : !!m.network && w.scope.network === m.network;
}

/// Until when `m` is in maintenance (the API said so when the list was loaded), or null.
export function maintenanceOf(m) {
  let until = null;
  for (const w of SIL.windows) {
    if (!w.open_until || !covers(w, m)) continue;
    const t = Date.parse(w.open_until);
    if (t > Date.now() && (until === null || t > until)) until = t;
  }
  return until;
}

/// Acknowledges with a comment; returns the acknowledgement.
export async function acknowledge(machine, sensor, comment) {
  const a = await api(`/v1/machines/${enc(machine)}/sensors/${enc(sensor)}/ack`, { comment });
  SIL.acks.set(machine + "\0" + sensor, a.ack);
  onChange();
  return a.ack;
}

export async function withdraw(machine, sensor) {
  await api(`/v1/machines/${enc(machine)}/sensors/${enc(sensor)}/ack`, undefined, "DELETE");
  SIL.acks.delete(machine + "\0" + sensor);
  onChange();
}

const DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const DAY_NAMES = { mon: "Mon", tue: "Tue", wed: "Wed", thu: "Thu", fri: "Fri", sat: "Sat", sun: "Sun" };

function describe(w) {
  if (w.schedule.once) return `${F.dateTime(w.schedule.once.start)} to ${F.dateTime(w.schedule.once.end)}`;
  const wk = w.schedule.weekly;
  // Shown in the browser's time zone, from the next opening.
  const [hh, mm] = wk.start.split(":").map(Number);
  const local = wk.days.map((d) => {
    const now = new Date();
    const t = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate(), hh, mm));
    while (DAYS[t.getUTCDay()] !== d) t.setUTCDate(t.getUTCDate() + 1);
    return t;
  });
  const days = local.map((t) => DAY_NAMES[DAYS[t.getDay()]]).join(", ");
  const at = local[0] ? local[0].toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : wk.start;
  return `every ${days} at ${at} for ${F.duration(wk.minutes * 60)}`;
}

/// The maintenance section of machine `m`: its windows and those of its network.
export function renderMaintenance(m) {
  const body = $("maintlist");
  if (!m) { body.replaceChildren(); return; }
  const mine = SIL.windows.filter((w) => covers(w, m));
  const mayEdit = can("operator", m.customer) && !m.revoked;
  $("maintform").hidden = !mayEdit;
  setText($("maintstate"), maintenanceOf(m) ? `In maintenance until ${F.dateTime(maintenanceOf(m))}: problems raise no alert mail.` : "");
  if (!mine.length) { body.replaceChildren(emptyRow(4, "no maintenance window")); return; }
  body.replaceChildren(...mine.map((w) => h("tr", { "data-window": w.id },
    h("td", {}, w.scope.machine ? "this machine" : `network ${w.scope.network}`),
    h("td", {}, describe(w), w.open_until ? h("div", { class: "muted" }, `open until ${F.dateTime(w.open_until)}`) : null),
    h("td", {}, w.comment || "", h("div", { class: "muted" }, `by ${w.by}`)),
    h("td", {}, mayEdit ? h("button", { type: "button", class: "maintremove", onclick: () => removeWindow(w.id) }, "Remove") : null))));
}

async function removeWindow(id) {
  try {
    await api(`/v1/maintenance/${enc(id)}`, undefined, "DELETE");
    $("mainterr").textContent = "";
    await loadSilences();
  } catch (e) { $("mainterr").textContent = "cannot remove: " + e.message; }
}

/// Wires the form; `current()` is the machine on screen, `changed()` re-renders the page.
export function initSilences(current, changed) {
  onChange = changed;
  $("maintkind").addEventListener("change", () => {
    const weekly = $("maintkind").value === "weekly";
    $("maintonce").hidden = weekly; $("maintweekly").hidden = !weekly;
  });
  $("maintform").addEventListener("submit", async (e) => {
    e.preventDefault();
    const m = current();
    if (!m) return;
    const body = { comment: $("maintcomment").value };
    if ($("maintscope").value === "network") body.network = m.network; else body.machine = m.id;
    try {
      if ($("maintkind").value === "weekly") {
        const days = [...document.querySelectorAll("#maintweekly input[type=checkbox]:checked")].map((c) => c.value);
        const [hh, mm] = ($("maintat").value || "").split(":").map(Number);
        if (!days.length || !Number.isFinite(hh)) throw new Error("choose at least one day and a start time");
        // The local day and time of each opening, as UTC.
        const utc = days.map((d) => {
          const t = new Date(); t.setHours(hh, mm, 0, 0);
          while (DAYS[t.getDay()] !== d) t.setDate(t.getDate() + 1);
          return t;
        });
        const start = `${String(utc[0].getUTCHours()).padStart(2, "0")}:${String(utc[0].getUTCMinutes()).padStart(2, "0")}`;
        body.weekly = { days: [...new Set(utc.map((t) => DAYS[t.getUTCDay()]))], start, minutes: Number($("maintminutes").value) };
      } else {
        const start = Date.parse($("maintstart").value), end = Date.parse($("maintend").value);
        if (!Number.isFinite(start) || !Number.isFinite(end)) throw new Error("give a start and an end");
        body.once = { start: new Date(start).toISOString(), end: new Date(end).toISOString() };
      }
      await api("/v1/maintenance", body);
      $("mainterr").textContent = "";
      $("maintcomment").value = "";
      await loadSilences();
    } catch (err) { $("mainterr").textContent = "not saved: " + err.message; }
  });
}
