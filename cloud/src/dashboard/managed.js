// Sensors managed from the cloud: the selected machine's panel (status, its sensors and those of
// its templates, add/edit with a form per kind from the catalogue, remove, test now, history with
// roll back) and the templates section. Password fields are write-only: the API only ever says
// a password is set, and an empty field keeps it.

import { $, h, emptyRow, setText } from "./dom.js";
import { api, enc, Unauthorised, canAnywhere } from "./api.js";
import { when, dateTime } from "./format.js";

const quiet = (e) => e instanceof Unauthorised;
const TERMINAL = new Set(["done", "failed", "refused", "expired"]);

const M = {
  machine: null,
  catalogue: null,
  view: null,
  /// The form being edited: {target: "machine"|"template", editing: sensor id or null, kind}.
  form: null,
  timer: null,
  templates: [],
  /// The template whose sensors the template editor shows.
  template: null,
  /// The relay settings being edited, and whether they differ from the machine's (then a refresh
  /// leaves them alone).
  relays: [],
  relaysDirty: false,
};

async function catalogue() {
  if (!M.catalogue) M.catalogue = await api("/v1/sensor-catalogue");
  return M.catalogue;
}

function kindEntry(kind) { return (M.catalogue || []).find((k) => k.kind === kind); }

// ---- the form of one sensor ----

function valueText(v) {
  if (v === undefined || v === null) return "";
  if (Array.isArray(v)) return v.join(", ");
  return String(v);
}

/// A form for `kind`, filled from `sensor` when editing. `where` is the element it goes into.
function renderForm(where, kind, sensor, onSave, onCancel) {
  // One form at a time: its fields have fixed ids.
  $("mform-area").replaceChildren(); $("tform-area").replaceChildren();
  const entry = kindEntry(kind);
  const inputs = [];
  const rows = entry.fields.map((f) => {
    const id = `mf-${f.key}`;
    const current = sensor ? sensor[f.key] : undefined;
    let input;
    if (f.type === "bool" || f.type === "choice") {
      const opts = f.type === "bool" ? ["true", "false"] : f.choices;
      input = h("select", { id, "data-key": f.key },
        h("option", { value: "" }, f.default !== undefined ? `default (${valueText(f.default)})` : "not set"),
        ...opts.map((o) => h("option", { value: o, selected: valueText(current) === o }, o)));
    } else if (f.type === "password") {
      const set = current && current.set;
      input = h("input", { id, "data-key": f.key, type: "password", autocomplete: "new-password",
        placeholder: set ? "set; leave empty to keep it" : "not set" });
    } else {
      input = h("input", { id, "data-key": f.key, value: valueText(current),
        placeholder: f.default !== undefined ? `default ${valueText(f.default)}` : f.required ? "required" : "",
        inputmode: f.type === "number" || f.type === "integer" ? "decimal" : null });
    }
    inputs.push([f, input]);
    return h("div", { class: "mfield" },
      h("label", { for: id }, f.key, f.required ? " *" : ""),
      input,
      h("span", { class: "muted" }, f.help));
  });
  const err = h("p", { class: "outcome bad", role: "alert", id: "mformerr" });
  const save = h("button", { type: "submit", id: "mformsave" }, sensor ? "Save" : "Add");
  const form = h("form", { class: "mform", id: "mform", "data-kind": kind },
    h("h3", {}, sensor ? `Edit ${sensor.id || kind}` : `New ${kind} sensor`),
    ...rows, err,
    h("div", { class: "mbuttons" }, save, h("button", { type: "button", onclick: onCancel }, "Cancel")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { kind };
    for (const [f, input] of inputs) {
      const raw = input.value.trim();
      if (raw === "") continue; // not set: the default, or for a password, keep it
      if (f.type === "number") body[f.key] = Number(raw);
      else if (f.type === "integer") body[f.key] = parseInt(raw, 10);
      else if (f.type === "bool") body[f.key] = raw === "true";
      else if (f.type === "list" || f.type === "choices") {
        const items = raw.split(",").map((x) => x.trim()).filter((x) => x);
        body[f.key] = f.key === "expect_status" ? items.map((x) => parseInt(x, 10)) : items;
      } else body[f.key] = raw;
    }
    save.disabled = true; err.textContent = "";
    try { await onSave(body); } catch (ex) { if (!quiet(ex)) err.textContent = ex.message; } finally { save.disabled = false; }
  });
  where.replaceChildren(form);
  form.querySelector("input, select")?.focus();
}

// ---- the machine panel ----

export function resetManaged(machine) {
  M.machine = machine; M.view = null; M.form = null; M.relays = []; M.relaysDirty = false;
  $("mrelays").replaceChildren(); setText($("mrelayerr"), "");
  $("mform-area").replaceChildren();
  $("mlist").replaceChildren();
  $("mhistory").replaceChildren();
  setText($("mstatus"), ""); setText($("mtest"), "");
  clearInterval(M.timer);
  if (machine) M.timer = setInterval(() => refresh(machine), 3000);
}

export async function loadManaged(machine) {
  resetManaged(machine);
  try {
    await catalogue();
    const kinds = $("mkind");
    if (kinds.options.length === 0) kinds.replaceChildren(...M.catalogue.map((k) => h("option", { value: k.kind }, k.kind)));
    await refresh(machine);
  } catch (e) {
    if (!quiet(e)) setText($("mstatus"), "cannot load managed sensors: " + e.message);
  }
}

async function refresh(machine) {
  if (M.machine !== machine) return;
  try {
    const [view, history] = await Promise.all([
      api(`/v1/machines/${enc(machine)}/managed`),
      api(`/v1/machines/${enc(machine)}/managed/history?limit=20`),
    ]);
    if (M.machine !== machine) return;
    M.view = view;
    renderStatus(view.status);
    renderTemplatesOf(view);
    if (!M.relaysDirty) { M.relays = view.relays.map((r) => ({ ...r })); renderRelays(); }
    renderList(view);
    renderHistory(history);
  } catch (e) {
    if (!quiet(e)) setText($("mstatus"), "cannot load managed sensors: " + e.message);
  }
}

function renderStatus(st) {
  const el = $("mstatus");
  setText(el, st.text);
  el.dataset.state = st.state;
  el.className = "mstatus " + (st.state === "refused" ? "bad" : st.state === "applied" ? "good" : "");
}

function renderTemplatesOf(view) {
  const names = M.templates.map((t) => t.name);
  const box = $("mtemplates");
  if (box.contains(document.activeElement)) return;
  box.replaceChildren(...(names.length === 0 ? [h("span", { class: "muted" }, "no templates yet")] :
    names.map((n) => h("label", { class: "check" },
      h("input", { type: "checkbox", value: n, checked: view.templates.includes(n) }), " ", n))));
}

$("mtemplatesave").addEventListener("click", async () => {
  if (!M.machine) return;
  const chosen = [...$("mtemplates").querySelectorAll("input:checked")].map((i) => i.value);
  // Keep the order they apply in: the ones already applied first, then new ones.
  const order = [...(M.view?.templates || []).filter((n) => chosen.includes(n)), ...chosen.filter((n) => !(M.view?.templates || []).includes(n))];
  try {
    const r = await api(`/v1/machines/${enc(M.machine)}/managed/templates`, { templates: order }, "PUT");
    setText($("mtest"), `templates saved as version ${r.version}`);
    refresh(M.machine); loadTemplates();
  } catch (e) { if (!quiet(e)) setText($("mtest"), e.message); }
});

// ---- relay settings ----

const RESTORE = [["unset", "leave as it came up"], ["on", "switch on"], ["off", "switch off"]];

function renderRelays() {
  if (M.relays.length === 0) { $("mrelays").replaceChildren(emptyRow(6, "none from the cloud")); return; }
  const edited = (r, key, value) => { r[key] = value; M.relaysDirty = true; };
  $("mrelays").replaceChildren(...M.relays.map((r, i) => h("tr", { class: "mrelay", "data-index": i },
    h("td", {}, h("input", { type: "number", min: 1, max: 255, value: r.card, "aria-label": "card", class: "rcard",
      oninput: (e) => edited(r, "card", Number(e.target.value)) })),
    h("td", {}, h("input", { type: "number", min: 1, max: 8, value: r.relay, "aria-label": "relay", class: "rrelay",
      oninput: (e) => edited(r, "relay", Number(e.target.value)) })),
    h("td", {}, h("input", { type: "text", maxlength: 64, value: r.name || "", "aria-label": "name", class: "rname",
      oninput: (e) => edited(r, "name", e.target.value) })),
    h("td", {}, h("input", { type: "checkbox", checked: !!r.locked, "aria-label": "locked", class: "rlocked",
      onchange: (e) => edited(r, "locked", e.target.checked) })),
    h("td", {}, h("select", { "aria-label": "after power loss", class: "rrestore", onchange: (e) => edited(r, "restore", e.target.value) },
      ...RESTORE.map(([v, text]) => h("option", { value: v, selected: (r.restore || "unset") === v }, text)))),
    h("td", {}, h("button", { type: "button", onclick: () => { M.relays.splice(i, 1); M.relaysDirty = true; renderRelays(); } }, "Remove")))));
}

$("mrelayadd").addEventListener("click", () => {
  const used = new Set(M.relays.map((r) => `${r.card}/${r.relay}`));
  let relay = 1;
  while (used.has(`1/${relay}`) && relay < 8) relay++;
  M.relays.push({ card: 1, relay, name: "", locked: false, restore: "unset" });
  M.relaysDirty = true;
  renderRelays();
});

$("mrelaysave").addEventListener("click", async () => {
  if (!M.machine) return;
  const relays = M.relays.map((r) => {
    const out = { card: r.card, relay: r.relay, locked: !!r.locked, restore: r.restore || "unset" };
    if (r.name && r.name.trim() !== "") out.name = r.name.trim();
    return out;
  });
  const el = $("mrelayerr");
  try {
    const v = await api(`/v1/machines/${enc(M.machine)}/managed/relays`, { relays }, "PUT");
    el.className = "outcome good";
    setText(el, `relay settings saved as version ${v.version}`);
    M.relaysDirty = false;
    refresh(M.machine);
  } catch (e) {
    if (quiet(e)) return;
    el.className = "outcome bad";
    setText(el, e.message);
  }
});

function renderList(view) {
  if (view.effective.length === 0) { $("mlist").replaceChildren(emptyRow(4, "no managed sensors: add one below")); return; }
  $("mlist").replaceChildren(...view.effective.map((s) => {
    const own = s.origin.from === "machine";
    const ownSensor = own ? view.sensors.find((x) => sensorId(x) === s.id) : null;
    return h("tr", { class: "msensor", "data-id": s.id },
      h("td", {}, h("span", { class: "name" }, s.id), h("div", { class: "key" }, s.kind, s.interval ? ` every ${s.interval}` : "")),
      h("td", {}, own ? "this machine" : `template ${s.origin.name}`),
      h("td", { class: "mono muted" }, summary(s)),
      h("td", { class: "mactions" },
        h("button", { type: "button", class: "mtestnow", "data-id": s.id, onclick: () => testNow(s.id) }, "Test now"),
        own ? h("button", { type: "button", class: "medit", "data-id": s.id, onclick: () => editSensor(ownSensor, s.id) }, "Edit") : null,
        own ? h("button", { type: "button", class: "mremove", "data-id": s.id, onclick: (e) => removeSensor(e.target, s.id) }, "Remove") : null));
  }));
}

/// The id the hub knows a sensor by (the shared rule, see SensorConfig::id).
function sensorId(s) {
  const prefix = { memory: "mem", process: "proc", command: "cmd", perfcounter: "perf" }[s.kind] || s.kind;
  if (s.kind === "process") return `proc.${s.name || s.process}`;
  if (s.kind === "service") return `service.${s.name || s.unit}`;
  if (["tcp", "http", "command", "file", "perfcounter"].includes(s.kind)) return `${prefix}.${s.name}`;
  return s.name || s.kind;
}

function summary(s) {
  const skip = new Set(["kind", "name", "interval", "id", "origin"]);
  return Object.entries(s).filter(([k]) => !skip.has(k))
    .map(([k, v]) => `${k}=${k === "password" ? "(set)" : valueText(v)}`).join(" ");
}

$("madd").addEventListener("click", async () => {
  await catalogue();
  const kind = $("mkind").value;
  renderForm($("mform-area"), kind, null, async (body) => {
    const r = await api(`/v1/machines/${enc(M.machine)}/managed/sensors`, body);
    $("mform-area").replaceChildren();
    setText($("mtest"), `saved as version ${r.version}`);
    refresh(M.machine);
  }, () => $("mform-area").replaceChildren());
});

function editSensor(sensor, id) {
  renderForm($("mform-area"), sensor.kind, { ...sensor, id }, async (body) => {
    const r = await api(`/v1/machines/${enc(M.machine)}/managed/sensors/${enc(id)}`, body, "PUT");
    $("mform-area").replaceChildren();
    setText($("mtest"), `saved as version ${r.version}`);
    refresh(M.machine);
  }, () => $("mform-area").replaceChildren());
}

/// Two clicks: the first arms the button, the second removes.
async function removeSensor(button, id) {
  if (!button.classList.contains("armed")) {
    button.classList.add("armed"); button.textContent = "Really remove?";
    setTimeout(() => { button.classList.remove("armed"); button.textContent = "Remove"; }, 5000);
    return;
  }
  try {
    const r = await api(`/v1/machines/${enc(M.machine)}/managed/sensors/${enc(id)}`, undefined, "DELETE");
    setText($("mtest"), `removed ${id}: version ${r.version}`);
    refresh(M.machine);
  } catch (e) { if (!quiet(e)) setText($("mtest"), e.message); }
}

async function testNow(id) {
  const out = $("mtest");
  try {
    const { command_id } = await api(`/v1/machines/${enc(M.machine)}/managed/sensors/${enc(id)}/test`, {});
    setText(out, `testing ${id}…`);
    out.dataset.command = command_id;
    for (let i = 0; i < 60; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      const c = await api(`/v1/commands/${enc(command_id)}`);
      if (out.dataset.command !== command_id) return;
      if (TERMINAL.has(c.status)) {
        out.dataset.status = c.status;
        setText(out, `test of ${id}: ${c.status} ${c.result == null ? "" : JSON.stringify(c.result)}`);
        return;
      }
    }
    setText(out, `test of ${id}: no answer from the machine yet`);
  } catch (e) { if (!quiet(e)) setText(out, e.message); }
}

function renderHistory(list) {
  if (list.length === 0) { $("mhistory").replaceChildren(emptyRow(4, "no versions yet")); return; }
  const current = M.view?.status?.version;
  $("mhistory").replaceChildren(...list.map((v) => h("tr", { class: "mversion", "data-version": v.version },
    h("td", {}, `v${v.version}`),
    h("td", {}, h("time", { datetime: v.at, title: dateTime(v.at) }, when(v.at))),
    h("td", {}, v.change, h("div", { class: "muted" }, `by ${v.who} · ${v.sensors.length} sensors` + (v.relays.length ? ` · ${v.relays.length} relay settings` : ""))),
    h("td", {}, v.version === current ? h("span", { class: "muted" }, "newest") :
      h("button", { type: "button", class: "mrollback", "data-version": v.version, onclick: () => rollBack(v.version) }, "Roll back")))));
}

async function rollBack(version) {
  try {
    const r = await api(`/v1/machines/${enc(M.machine)}/managed/rollback`, { version });
    setText($("mtest"), `rolled back to v${version} as version ${r.version}`);
    refresh(M.machine);
  } catch (e) { if (!quiet(e)) setText($("mtest"), e.message); }
}

// ---- templates ----

export async function loadTemplates() {
  // Templates are an admin's tool: others are not shown a section that can only refuse them.
  $("templatesection").hidden = !canAnywhere("admin");
  if (!canAnywhere("admin")) return;
  try {
    M.templates = await api("/v1/templates");
    $("tlist").replaceChildren(...(M.templates.length === 0 ? [emptyRow(3, "no templates yet")] :
      M.templates.map((t) => h("tr", { class: "template", "data-name": t.name, tabindex: 0, onclick: () => openTemplate(t.name) },
        h("td", { class: "name" }, t.name),
        h("td", {}, `${t.sensors.length}`),
        h("td", {}, `${t.machines.length}`)))));
    if (M.template) renderTemplate(M.templates.find((t) => t.name === M.template));
    if (M.view) renderTemplatesOf(M.view);
  } catch (e) {
    if (!quiet(e)) setText($("terr"), "cannot load templates: " + e.message);
  }
}

$("tnewform").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("tname").value.trim();
  try {
    await api("/v1/templates", { name, sensors: [] });
    $("tname").value = ""; setText($("terr"), "");
    await loadTemplates();
    openTemplate(name);
  } catch (ex) { if (!quiet(ex)) setText($("terr"), ex.message); }
});

function openTemplate(name) {
  M.template = name;
  renderTemplate(M.templates.find((t) => t.name === name));
}

function renderTemplate(t) {
  const box = $("tedit");
  if (!t) { box.hidden = true; return; }
  box.hidden = false;
  setText($("ttitle"), `Template ${t.name}`);
  setText($("tinfo"), t.machines.length ? `applied to ${t.machines.length} machine(s)` : "applied to no machine yet");
  $("tsensors").replaceChildren(...(t.sensors.length === 0 ? [emptyRow(2, "no sensors yet")] :
    t.sensors.map((s) => h("tr", { class: "tsensor", "data-id": sensorId(s) },
      h("td", {}, h("span", { class: "name" }, sensorId(s)), h("div", { class: "mono muted" }, summary(s))),
      h("td", { class: "mactions" },
        h("button", { type: "button", class: "tedit", onclick: () => editTemplateSensor(t, s) }, "Edit"),
        h("button", { type: "button", class: "tremove", onclick: () => saveTemplate(t, t.sensors.filter((x) => x !== s)) }, "Remove"))))));
}

async function saveTemplate(t, sensors) {
  try {
    await api(`/v1/templates/${enc(t.name)}`, { sensors }, "PUT");
    $("tform-area").replaceChildren(); setText($("terr"), "");
    await loadTemplates();
    if (M.machine) refresh(M.machine);
  } catch (e) { if (!quiet(e)) setText($("terr"), e.message); throw e; }
}

function editTemplateSensor(t, s) {
  renderForm($("tform-area"), s.kind, s, (body) => saveTemplate(t, t.sensors.map((x) => (x === s ? body : x))),
    () => $("tform-area").replaceChildren());
}

$("tadd").addEventListener("click", async () => {
  await catalogue();
  const t = M.templates.find((x) => x.name === M.template);
  if (!t) return;
  renderForm($("tform-area"), $("tkind").value, null, (body) => saveTemplate(t, [...t.sensors, body]),
    () => $("tform-area").replaceChildren());
});

export async function initManaged() {
  try {
    await catalogue();
    const opts = () => M.catalogue.map((k) => h("option", { value: k.kind }, k.kind));
    if ($("tkind").options.length === 0) $("tkind").replaceChildren(...opts());
    if ($("mkind").options.length === 0) $("mkind").replaceChildren(...opts());
  } catch (e) { if (!quiet(e)) setText($("terr"), e.message); }
  loadTemplates();
}
