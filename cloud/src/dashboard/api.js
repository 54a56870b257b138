// The JSON API as the page uses it: the admin token (a cookie), whether the cloud can be reached
// at all (a banner says so when it cannot), and the login form.

import { $, h } from "./dom.js";
import { ago, dateTime } from "./format.js";

export const enc = encodeURIComponent;

/// Whether a token has been offered in this page (typed, or from the printed URL): only then may
/// a refusal say "not accepted". A first visit just asks for it.
let tried = false;
/// Called once a token works; set by the app.
let onLogin = () => {};
export function whenLoggedIn(f) { onLogin = f; }

function setToken(t) {
  document.cookie = "outpost_token=" + encodeURIComponent(t) + "; path=/; Secure; SameSite=Strict; max-age=2592000";
}
export function takeTokenFromUrl() {
  const m = location.hash.match(/token=([0-9a-fA-F]+)/);
  if (m) { setToken(m[1]); tried = true; history.replaceState(null, "", location.pathname); }
  return !!m;
}

export function showLogin() {
  $("app").hidden = true; $("login").hidden = false;
  $("loginerr").textContent = tried ? "The token was not accepted: check it and try again." : "";
}
$("loginform").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("token").value.trim();
  if (!t) { $("loginerr").textContent = "Enter the admin token first."; return; }
  tried = true; setToken(t); onLogin();
});

// ---- reachability ----

/// Since when the cloud cannot be reached from this page (ms), or null.
let down = null;
let probe = null;
let onBack = () => {};
export function whenReachableAgain(f) { onBack = f; }
export function unreachableSince() { return down; }

function showBanner() {
  const b = $("banner");
  if (down === null) { b.hidden = true; document.body.classList.remove("disconnected"); return; }
  b.replaceChildren(
    h("span", {}, `The cloud cannot be reached from this page since ${dateTime(down)} (${ago(down)}). `),
    h("span", {}, "What you see was current then and may be out of date; retrying every 5 s."));
  b.hidden = false;
  document.body.classList.add("disconnected");
  $("live").textContent = "offline";
}

export function markDown() {
  if (down === null) down = Date.now();
  showBanner();
  if (!probe) probe = setInterval(checkHealth, 5000);
}
function markUp() {
  if (down === null) return;
  down = null;
  clearInterval(probe); probe = null;
  showBanner();
  onBack();
}
setInterval(() => { if (down !== null) showBanner(); }, 1000);

/// Asks the cloud whether it answers at all (the event stream's errors do not say why).
export async function checkHealth() {
  try {
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), 4000);
    const r = await fetch("/v1/health", { credentials: "same-origin", signal: ctl.signal, cache: "no-store" });
    clearTimeout(t);
    if (r.ok) markUp(); else markDown();
  } catch (_) { markDown(); }
}

export class Unauthorised extends Error {}

export async function api(path, body, method) {
  const init = { credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST"; init.headers = { "Content-Type": "application/json" }; init.body = JSON.stringify(body);
  }
  if (method) init.method = method;
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    markDown();
    throw new Error("the cloud cannot be reached");
  }
  // A proxy in front of the cloud answers 502-504 when the cloud is gone.
  if (r.status === 502 || r.status === 503 || r.status === 504) { markDown(); throw new Error("the cloud cannot be reached (" + r.status + ")"); }
  markUp();
  if (r.status === 401) { showLogin(); throw new Unauthorised("unauthorised"); }
  if (!r.ok) {
    const j = await r.json().catch(() => ({}));
    throw new Error(typeof j.error === "string" ? j.error : r.statusText);
  }
  return r.json();
}

/// Runs `f` on every item, at most `n` at a time.
export async function pool(items, n, f) {
  const queue = [...items];
  const worker = async () => { while (queue.length) { await f(queue.shift()).catch(() => {}); } };
  await Promise.all(Array.from({ length: Math.min(n, queue.length) }, worker));
}
