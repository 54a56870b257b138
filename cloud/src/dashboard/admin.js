// Administration beside the machines: the audit trail of the selected machine, enrollment
// tokens, hubs found but not enrolled, revocation, and the signed-in person's API tokens.

import { $, h, emptyRow } from "./dom.js";
import { api, enc, Unauthorised, me, can } from "./api.js";
import { dateTime, when } from "./format.js";
import { learnLocks } from "./relays.js";

const quiet = (e) => e instanceof Unauthorised;
function timeEl(t, long) { return h("time", { datetime: t, title: dateTime(t) }, long ? dateTime(t) : when(t)); }

export function paramText(p) {
  if (!p || typeof p !== "object") return p == null ? "" : String(p);
  // A sensor document is long and its passwords are sealed: the history panel shows its content.
  return Object.entries(p).map(([k, v]) => `${k}=${k === "document" ? "(signed sensor document)" : typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
}
export function detailText(d) {
  if (d == null) return "";
  if (typeof d === "string") return d;
  if (typeof d === "object" && typeof d.error === "string") return d.error;
  return typeof d === "object" ? paramText(d) : String(d);
}
let auditSeq = 0;
export async function loadAudit(machine) {
  const seq = ++auditSeq;
  if (!machine) return;
  try {
    const list = await api(`/v1/audit?machine=${enc(machine)}&limit=50`);
    if (seq !== auditSeq) return;
    $("audit").replaceChildren(...list.map((a) => h("tr", { class: "audit", "data-event": a.event, "data-command": a.command_id },
      h("td", {}, timeEl(a.ts)),
      h("td", {}, h("span", { class: "ev ev-" + a.event }, a.event)),
      h("td", {}, h("code", {}, a.action), " ", h("span", { class: "muted" }, paramText(a.parameters)),
        a.command_id ? h("div", { class: "muted mono", title: "command " + a.command_id }, "id " + String(a.command_id).slice(0, 12) + "…") : null),
      h("td", {}, a.who),
      h("td", {}, detailText(a.detail)))));
    if (list.length === 0) $("audit").replaceChildren(emptyRow(5, "no commands yet"));
    $("auditinfo").textContent = `Commands sent to this machine and operator actions on it, newest first (last ${list.length}, refreshed ${when(Date.now())}).`;
    learnLocks(list);
  } catch (e) {
    if (!quiet(e)) $("auditinfo").textContent = "cannot load the audit trail: " + e.message;
  }
}

export async function loadTokens() {
  try {
    const list = await api("/v1/enrollment-tokens");
    list.sort((a, b) => String(a.expires_at).localeCompare(String(b.expires_at)));
    $("tokens").replaceChildren(...list.map((t) => h("tr", { class: "token", "data-id": t.id },
      h("td", {}, t.label || h("span", { class: "mono" }, t.id)), h("td", {}, t.role), h("td", {}, t.network),
      h("td", {}, timeEl(t.expires_at, true)),
      h("td", {}, h("button", { type: "button", class: "cancel", "aria-label": `Cancel token ${t.label || t.id}`,
        onclick: () => cancelToken(t) }, "Cancel")))));
    if (list.length === 0) $("tokens").replaceChildren(emptyRow(5, "none open"));
  } catch (e) {
    if (!quiet(e)) $("tokens").replaceChildren(emptyRow(5, "cannot load: " + e.message));
  }
}

async function cancelToken(t) {
  try {
    await api("/v1/enrollment-tokens/" + enc(t.id), undefined, "DELETE");
    $("tokencancelout").textContent = `Token ${t.label || t.id} cancelled: it enrolls nobody now.`;
  } catch (e) {
    if (!quiet(e)) $("tokencancelout").textContent = "cannot cancel: " + e.message;
  }
  loadTokens();
}

$("newtoken").addEventListener("click", async () => {
  const btn = $("newtoken");
  btn.disabled = true; $("tokenerr").textContent = "";
  try {
    const role = $("tokenrole").value;
    const t = await api("/v1/enrollment-tokens",
      { network: $("tokennetwork").value.trim() || "default", role, label: $("tokenlabel").value.trim(), ttl: $("tokenttl").value,
        customer: $("tokencustomer").value || undefined });
    $("tokenvalue").value = t.token;
    $("tokennet").textContent = t.network;
    $("tokenrolename").textContent = t.role;
    const exp = $("tokenexp"); exp.dateTime = t.expires_at; exp.textContent = dateTime(t.expires_at);
    const { install, conf, ca } = enrollCommand(t, location.origin);
    $("tokencmd").textContent = install;
    $("tokenconf").textContent = conf;
    $("tokenca").textContent = ca;
    $("copied").textContent = "";
    $("tokenout").hidden = false;
    $("tokenvalue").focus(); $("tokenvalue").select();
    loadTokens();
  } catch (e) {
    if (!quiet(e)) $("tokenerr").textContent = "cannot make a token: " + e.message;
  } finally { btn.disabled = false; }
});

/// The commands that enroll a machine with token `t`, pasted on that machine: the cloud's
/// configured public address (else the one this page came from), its CA fetched and checked
/// against the fingerprint the cloud gave before anything trusts it. Values the cloud did not
/// send in the expected shape are left out rather than pasted into a shell.
export function enrollCommand(t, origin) {
  const safe = (v, re) => (typeof v === "string" && re.test(v) ? v : null);
  const url = safe(t.cloud_url, /^https:\/\/[A-Za-z0-9.\-:\[\]\/_~]+$/) || origin;
  const token = safe(t.token, /^[A-Za-z0-9._\-]+$/) || "TOKEN";
  const sha = safe(t.ca_sha256, /^[0-9a-f]{64}$/);
  const role = t.role === "connector" ? "connector" : "sensorhub";
  const file = "outpost-cloud-ca.pem";
  const fetchCa = sha
    ? `curl -fsSk ${url}/v1/ca.pem -o ${file} && echo "${sha}  ${file}" | sha256sum -c - && `
    : "";
  const install = `${fetchCa}sudo outpost install --role ${role} --cloud ${url}${sha ? ` --cloud-ca ${file}` : ""} --enroll ${token}`;
  const conf = role === "connector"
    ? `[cloud]\nurl = "${url}"\nca_file = "/etc/outpost/cloud-ca.pem"\nenroll_token = "${token}"`
    : `[uplink]\ncloud = "${url}"\nca_file = "/etc/outpost/cloud-ca.pem"\nenroll_token = "${token}"`;
  return { install, conf, ca: sha || "unknown: the cloud could not read it" };
}

$("copytoken").addEventListener("click", async () => {
  const input = $("tokenvalue");
  try {
    await navigator.clipboard.writeText(input.value);
    $("copied").textContent = "Copied.";
  } catch (_) {
    input.focus(); input.select();
    $("copied").textContent = "Selected: press Ctrl+C to copy.";
  }
});

/// `nameOf(id)` is the host name of an enrolled connector, when the page knows it.
export async function loadUnattached(nameOf) {
  try {
    const list = await api("/v1/hubs/unattached");
    list.sort((a, b) => String(b.seen_at).localeCompare(String(a.seen_at)));
    $("unattached").replaceChildren(...list.map((u) => h("tr", { class: "unattached", "data-id": u.machine_id },
      h("td", {}, h("span", { class: "mono", title: u.machine_id }, u.machine_id.slice(0, 16)),
        h("div", { class: "muted" }, u.location), u.server ? h("div", { class: "muted" }, u.server) : null),
      h("td", { title: u.connector }, !u.connector ? "—" : nameOf(u.connector) || h("span", { class: "mono" }, String(u.connector).slice(0, 8) + "…")),
      h("td", {}, timeEl(u.seen_at)))));
    if (list.length === 0) $("unattached").replaceChildren(emptyRow(3, "none: every hub found is sending"));
  } catch (e) {
    if (!quiet(e)) $("unattached").replaceChildren(emptyRow(3, "cannot load: " + e.message));
  }
}


// ---- the signed-in person's API tokens ----

/// Fills the customer choice (customers where the person has any role, or all) and the list.
export async function loadApiTokens() {
  const sel = $("apicustomer");
  if (me && sel.options.length === 0) {
    const opts = me.customers.filter((c) => can("viewer", c.id)).map((c) => h("option", { value: c.id }, c.name === c.id ? c.id : `${c.name} (${c.id})`));
    if (me.owner || me.grants.some((g) => g.customer === "*")) opts.push(h("option", { value: "*" }, "every customer"));
    sel.replaceChildren(...opts);
  }
  try {
    const list = await api("/v1/api-tokens");
    $("apitokens").replaceChildren(...list.map((t) => h("tr", { class: "apitoken", "data-id": t.id },
      h("td", {}, t.label || h("span", { class: "mono" }, t.id)), h("td", {}, `${t.role} · ${t.customer === "*" ? "all" : t.customer}`),
      h("td", {}, t.last_used ? timeEl(t.last_used) : "never"), h("td", {}, timeEl(t.expires_at, true)),
      h("td", {}, h("button", { type: "button", class: "revoke", "aria-label": `Revoke API token ${t.label || t.id}`,
        onclick: () => revokeApiToken(t) }, "Revoke")))));
    if (list.length === 0) $("apitokens").replaceChildren(emptyRow(5, "none"));
  } catch (e) {
    if (!quiet(e)) $("apitokens").replaceChildren(emptyRow(5, "cannot load: " + e.message));
  }
}

async function revokeApiToken(t) {
  try {
    await api("/v1/api-tokens/" + enc(t.id), undefined, "DELETE");
    $("apiout").hidden = true;
  } catch (e) {
    if (!quiet(e)) $("apierr").textContent = "cannot revoke: " + e.message;
  }
  loadApiTokens();
}

$("newapitoken").addEventListener("click", async () => {
  $("apierr").textContent = "";
  try {
    const t = await api("/v1/api-tokens", { label: $("apilabel").value.trim(), role: $("apirole").value, customer: $("apicustomer").value });
    $("apivalue").value = t.token;
    $("apiout").hidden = false;
    $("apivalue").focus(); $("apivalue").select();
    loadApiTokens();
  } catch (e) {
    if (!quiet(e)) $("apierr").textContent = "cannot make a token: " + e.message;
  }
});
