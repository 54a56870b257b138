// The JSON API as the page uses it: signing in (a session cookie the page never sees: HttpOnly),
// whether the cloud can be reached at all (a banner says so when it cannot), and who is signed in.

import { $, h } from "./dom.js";
import { ago, dateTime } from "./format.js";

export const enc = encodeURIComponent;

/// Called once signed in; set by the app.
let onLogin = () => {};
export function whenLoggedIn(f) { onLogin = f; }

/// The secret of the one-time first-owner link (`#setup=…`), while the form uses it.
let setupToken = null;
export function takeSetupFromUrl() {
  const m = location.hash.match(/setup=([A-Za-z0-9_-]+)/);
  if (m) { setupToken = m[1]; history.replaceState(null, "", location.pathname); }
  return !!m;
}

/// Who is signed in (`/v1/me`): name, owner, grants, customers they see.
export let me = null;
export async function loadMe() {
  me = await api("/v1/me");
  $("whoname").textContent = me.name + (me.owner ? " (owner)" : "");
  $("who").hidden = false;
  return me;
}
const RANK = { viewer: 1, operator: 2, admin: 3 };
/// May the signed-in person act as `role` for `customer` (the API decides; this only hides buttons).
export function can(role, customer) {
  if (!me) return false;
  if (me.owner) return true;
  return me.grants.some((g) => (g.customer === "*" || g.customer === customer) && RANK[g.role] >= RANK[role]);
}
export function canAnywhere(role) {
  return !!me && (me.owner || me.grants.some((g) => RANK[g.role] >= RANK[role]));
}

export function showLogin() {
  $("app").hidden = true; $("login").hidden = false; $("who").hidden = true;
  $("logintitle").textContent = setupToken ? "Make the first owner" : "Sign in";
  $("loginbutton").textContent = setupToken ? "Make owner and sign in" : "Sign in";
  $("password").autocomplete = setupToken ? "new-password" : "current-password";
}
$("loginform").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("username").value.trim(), password = $("password").value;
  if (!name || !password) { $("loginerr").textContent = "Enter your name and password."; return; }
  const body = setupToken ? { token: setupToken, name, password } : { name, password };
  if (!$("code").hidden && $("code").value.trim()) body.code = $("code").value.trim();
  $("loginbutton").disabled = true;
  try {
    const r = await fetch(setupToken ? "/v1/setup" : "/v1/session", {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (r.ok) {
      setupToken = null; $("password").value = ""; $("code").value = ""; $("loginerr").textContent = "";
      onLogin();
    } else {
      const j = await r.json().catch(() => ({}));
      $("loginerr").textContent = typeof j.error === "string" ? j.error : r.statusText;
      // The password was right; the account has a second factor.
      if (j.totp_required === true) { $("code").hidden = false; $("codelabel").hidden = false; $("code").focus(); }
    }
  } catch (_) {
    $("loginerr").textContent = "The cloud cannot be reached.";
  } finally { $("loginbutton").disabled = false; }
});

/// A role that needs a second factor the person has not set up: only this panel until they do.
export function showTotpSetup() {
  $("app").hidden = true; $("login").hidden = true; $("totpsetup").hidden = false;
}
$("totpbegin").addEventListener("click", async () => {
  try {
    const t = await api("/v1/me/totp", {});
    $("totpsecret").textContent = t.secret;
    $("totpuri").href = t.uri; $("totpuri").hidden = false;
  } catch (e) { $("totperr").textContent = e.message; }
});
$("totpform").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await api("/v1/me/totp", { code: $("totpcode").value.trim() }, "PUT");
    $("totpsetup").hidden = true; $("totperr").textContent = "";
    onLogin();
  } catch (err) { $("totperr").textContent = err.message; }
});

async function signOut(everywhere) {
  try {
    await fetch(everywhere ? "/v1/sessions" : "/v1/session", { method: "DELETE", credentials: "same-origin", cache: "no-store" });
  } catch (_) { /* the page forgets the session either way */ }
  location.reload();
}
$("signout").addEventListener("click", () => signOut(false));
$("signouteverywhere").addEventListener("click", () => signOut(true));

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
