// The relay panel of the selected machine. The hub reports `relay.<card>` (state byte, or an
// error when the card cannot be read) and `relay.<card>.k1`..`k8` (booleans; a named relay's
// message is "name: on"). A relay locked in the hub's config is refused by the hub; the cloud
// learns it from that refusal (the audit trail), and the panel then shows it locked for good.

import { $, h, setText, setAttr } from "./dom.js";
import { api, enc, Unauthorised } from "./api.js";
import { when } from "./format.js";

const TERMINAL = new Set(["done", "failed", "refused", "expired"]);

export const R = {
  /// The signed-in person may only look (a viewer): switches are shown, not clickable.
  readOnly: false,
  machine: null,
  sensors: new Map(),
  pending: new Map(),
  outcomes: new Map(),
  /// `card.relay` → when a refusal said it is locked.
  locked: new Map(),
  onDone: () => {},
};

export function resetRelays(machine) {
  R.machine = machine; R.pending = new Map(); R.outcomes = new Map(); R.locked = new Map();
  $("relays").replaceChildren();
}

/// Learns locked relays from the machine's audit trail: a `relay.set` refused by the hub for
/// being locked.
export function learnLocks(audit) {
  for (const a of audit) {
    const p = a.parameters;
    const detail = typeof a.detail === "string" ? a.detail : a.detail && typeof a.detail.error === "string" ? a.detail.error : "";
    if (a.event === "refused" && p && typeof p === "object" && Number.isInteger(p.card) && Number.isInteger(p.relay) && /locked/i.test(detail)) {
      const k = `${p.card}.${p.relay}`;
      if (!R.locked.has(k)) R.locked.set(k, a.ts);
    }
  }
  renderRelays();
}

function relayCards() {
  const cards = new Map();
  const card = (n) => { if (!cards.has(n)) cards.set(n, { card: n, state: null, relays: new Map() }); return cards.get(n); };
  for (const s of R.sensors.values()) {
    let m = s.sensor.match(/^relay\.(\d+)$/);
    if (m) { card(Number(m[1])).state = s; continue; }
    m = s.sensor.match(/^relay\.(\d+)\.k([1-8])$/);
    if (m) card(Number(m[1])).relays.set(Number(m[2]), s);
  }
  return [...cards.values()].sort((a, b) => a.card - b.card);
}

function relayName(reading, relay) {
  const msg = reading && typeof reading.message === "string" ? reading.message : "";
  const i = msg.lastIndexOf(":");
  const name = i > 0 ? msg.slice(0, i).trim() : "";
  return name || "K" + relay;
}

export function renderRelays(hostname) {
  const cards = relayCards();
  $("relaysection").hidden = cards.length === 0;
  if (hostname) setText($("h-relays"), "Relays of " + hostname);
  const box = $("relays");
  // Updated in place rather than rebuilt, so keyboard focus stays on a switch across live updates.
  for (const c of cards) {
    let div = box.querySelector(`.card[data-card="${c.card}"]`);
    if (!div) {
      const switches = [];
      for (let r = 1; r <= 8; r++) {
        switches.push(h("button", { type: "button", class: "relay", role: "switch", "aria-checked": "false",
            "data-card": c.card, "data-relay": r, onclick: () => switchRelay(c.card, r) },
          h("span", { class: "rname" }), h("span", { class: "track", "aria-hidden": "true" }), h("span", { class: "rstate" })));
      }
      div = h("div", { class: "card", "data-card": c.card },
        h("h3", {}, h("span", {}, "Card " + c.card), h("span", { class: "muted cardinfo" })),
        h("div", { class: "switches", role: "group", "aria-label": "Relays of card " + c.card }, switches),
        h("p", { class: "outcome", role: "status", "aria-live": "polite" }));
      const next = [...box.children].find((e) => Number(e.dataset.card) > c.card);
      box.insertBefore(div, next || null);
    }
    const cardError = c.state && c.state.state === "error";
    setText(div.querySelector(".cardinfo"), !c.state ? ""
      : cardError ? `cannot be read: ${c.state.message || c.state.value}`
      : `state 0x${Number(c.state.value).toString(16).padStart(2, "0")} · read ${when(c.state.ts)}`);
    for (const btn of div.querySelectorAll("button.relay")) {
      const r = Number(btn.dataset.relay);
      const reading = c.relays.get(r);
      const name = relayName(reading, r);
      const on = reading ? reading.value === true : false;
      const pending = R.pending.get(`${c.card}.${r}`);
      const locked = R.locked.get(`${c.card}.${r}`);
      btn.dataset.name = name;
      setAttr(btn, "aria-checked", reading ? String(on) : "mixed");
      btn.classList.toggle("stale", !reading || cardError);
      btn.classList.toggle("locked", !!locked);
      setText(btn.querySelector(".rname"), name);
      setText(btn.querySelector(".rstate"), pending ? (pending.on ? "→ ON…" : "→ OFF…") : !reading ? "?" : (on ? "ON" : "OFF") + (locked ? " · locked" : ""));
      setAttr(btn, "aria-busy", pending ? "true" : null);
      btn.disabled = !!pending || !!locked || R.readOnly;
      const label = name === "K" + r ? name : name + " (K" + r + ")";
      btn.title = `${label} of card ${c.card}: ` +
        (reading ? (on ? "on" : "off") + " as read back " + when(reading.ts) : "state unknown") +
        (R.readOnly ? "; switching needs the operator role"
          : locked ? `; locked in the hub's config (refused ${when(locked)}): it cannot be switched from here`
          : pending ? "; command sent, waiting for the card" : "; click to switch " + (on ? "off" : "on"));
    }
    const out = R.outcomes.get(c.card);
    const p = div.querySelector(".outcome");
    setText(p, out ? out.text : "");
    p.className = "outcome" + (out ? (out.good ? " good" : " bad") : "");
  }
  for (const div of [...box.children]) {
    if (!cards.some((c) => String(c.card) === div.dataset.card)) div.remove();
  }
}

async function switchRelay(card, relay) {
  const machine = R.machine, key = `${card}.${relay}`;
  if (R.pending.has(key) || R.locked.has(key)) return;
  const reading = relayCards().find((c) => c.card === card)?.relays.get(relay);
  const name = relayName(reading, relay);
  const label = name === "K" + relay ? name : `${name} (K${relay})`;
  // The target is the opposite of what the card last reported, not of what was last clicked.
  const on = !(reading && reading.value === true);
  const outcome = (good, text) => { if (R.machine === machine) { R.outcomes.set(card, { good, text }); renderRelays(); } };
  R.pending.set(key, { on });
  outcome(true, `switching ${label} ${on ? "on" : "off"}: sending…`);
  try {
    const { command_id } = await api(`/v1/machines/${enc(machine)}/relays/${card}/${relay}`, { on });
    outcome(true, `switching ${label} ${on ? "on" : "off"}: waiting for the hub…`);
    const cmd = await waitForCommand(command_id, (c) => {
      if (c.status === "delivered") outcome(true, `switching ${label} ${on ? "on" : "off"}: the hub has it…`);
    });
    const detail = cmd.result && typeof cmd.result === "object" && typeof cmd.result.error === "string" ? cmd.result.error : "";
    if (cmd.status === "done") {
      const st = cmd.result && typeof cmd.result.state === "number" ? `; the card reads back 0x${cmd.result.state.toString(16).padStart(2, "0")}` : "";
      outcome(true, `done: ${label} switched ${on ? "on" : "off"}${st}`);
    } else if (cmd.status === "expired") {
      outcome(false, `expired: the hub did not fetch the command for ${label} in time`);
    } else {
      outcome(false, `${cmd.status}: ${label}${detail ? " — " + detail : ""}`);
    }
  } catch (e) {
    if (!(e instanceof Unauthorised)) outcome(false, `not sent: ${label} — ${e.message}`);
  } finally {
    R.pending.delete(key);
    if (R.machine === machine) { renderRelays(); R.onDone(); }
  }
}

async function waitForCommand(id, onChange) {
  let last = null;
  for (;;) {
    const c = await api(`/v1/commands/${enc(id)}`);
    if (c.status !== last) { last = c.status; onChange(c); }
    if (TERMINAL.has(c.status)) return c;
    await new Promise((r) => setTimeout(r, 500));
  }
}
