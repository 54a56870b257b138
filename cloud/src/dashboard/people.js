// People and customers on the page, for admins (the users of the customers they administer) and
// owners (everyone, and the customers with their networks). The API decides what each may do;
// this shows only what it would allow.

import { $, h, emptyRow, setText } from "./dom.js";
import { api, enc, me, can, Unauthorised } from "./api.js";
import { dateTime } from "./format.js";

const quiet = (e) => e instanceof Unauthorised;
const ROLES = ["viewer", "operator", "admin"];
let customers = [];

/// Customers the signed-in person administers (the choices in the forms).
function administered() {
  return customers.filter((c) => can("admin", c.id));
}

function customerName(id) {
  if (id === "*") return "every customer";
  const c = customers.find((x) => x.id === id);
  return c && c.name !== c.id ? `${c.name} (${c.id})` : id;
}

export async function loadPeople() {
  const section = $("peoplesection");
  section.hidden = !me || !(me.owner || me.grants.some((g) => g.role === "admin"));
  if (section.hidden) return;
  try {
    customers = await api("/v1/customers");
    const users = await api("/v1/users");
    renderUsers(users);
    const choices = administered().map((c) => h("option", { value: c.id }, customerName(c.id)));
    if (me.owner) choices.push(h("option", { value: "*" }, "every customer"));
    $("pcustomer").replaceChildren(...choices);
    $("customersblock").hidden = !me.owner;
    if (me.owner) renderCustomers();
    setText($("perr"), "");
  } catch (e) {
    if (!quiet(e)) setText($("perr"), "cannot load people: " + e.message);
  }
}

function renderUsers(users) {
  if (!users.length) { $("plist").replaceChildren(emptyRow(4, "no users you manage")); return; }
  $("plist").replaceChildren(...users.map((u) => {
    const roles = u.owner ? [h("div", {}, "owner of the whole site")] : u.grants.map((g) => h("div", { class: "grant" },
      customerName(g.customer) + ": ",
      h("select", { "aria-label": `Role of ${u.name} in ${g.customer}`, onchange: (e) => setRole(u.name, g.customer, e.target.value) },
        ...ROLES.map((r) => h("option", { value: r, selected: r === g.role }, r)),
        h("option", { value: "" }, "no role (remove)"))));
    const status = u.locked_until ? `locked until ${dateTime(u.locked_until)}` : `since ${dateTime(u.created_at)}`;
    const self = u.name === me.name;
    return h("tr", { class: "person", "data-name": u.name },
      h("td", {}, h("div", { class: "name" }, u.name), h("div", { class: "muted" }, status)),
      h("td", {}, ...roles),
      h("td", {}, self || (u.owner && !me.owner) ? null : h("button", { type: "button", class: "premove",
        "aria-label": `Remove ${u.name}`, onclick: (e) => removeUser(u.name, e.currentTarget) }, "Remove")));
  }));
}

function renderCustomers() {
  $("clist").replaceChildren(...customers.map((c) => h("tr", { class: "customer", "data-id": c.id },
    h("td", {}, h("div", { class: "name" }, c.name), h("div", { class: "muted mono" }, c.id)),
    h("td", {}, c.networks.length ? c.networks.join(", ") : h("span", { class: "muted" }, c.id === "default" ? "every network no customer holds" : "none yet")))));
}

async function setRole(name, customer, role) {
  try {
    await api(`/v1/users/${enc(name)}/grants/${enc(customer)}`, { role: role || null }, "PUT");
    setText($("perr"), "");
  } catch (e) { if (!quiet(e)) setText($("perr"), `cannot change ${name}'s role: ${e.message}`); }
  loadPeople();
}

/// Two clicks: the first arms the button and says what will happen.
async function removeUser(name, b) {
  if (!b.classList.contains("armed")) {
    b.classList.add("armed");
    b.textContent = `Click again to remove ${name}`;
    return;
  }
  try {
    await api(`/v1/users/${enc(name)}`, undefined, "DELETE");
    setText($("perr"), "");
  } catch (e) { if (!quiet(e)) setText($("perr"), `cannot remove ${name}: ${e.message}`); }
  loadPeople();
}

export function initPeople() {
  $("pnewform").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("pname").value.trim(), password = $("ppassword").value;
    const grants = [{ customer: $("pcustomer").value, role: $("prole").value }];
    try {
      await api("/v1/users", { name, password, owner: false, grants });
      $("pname").value = ""; $("ppassword").value = "";
      setText($("pout"), `${name} can sign in now; give them the password another way than this page.`);
      setText($("perr"), "");
      loadPeople();
    } catch (ex) { if (!quiet(ex)) setText($("perr"), "not added: " + ex.message); }
  });
  $("cnewform").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = $("cid").value.trim(), name = $("cname").value.trim() || id;
    const networks = $("cnets").value.split(",").map((n) => n.trim()).filter(Boolean);
    try {
      await api("/v1/customers", { id, name, networks });
      $("cid").value = ""; $("cname").value = ""; $("cnets").value = "";
      setText($("perr"), "");
      loadPeople();
    } catch (ex) { if (!quiet(ex)) setText($("perr"), "customer not added: " + ex.message); }
  });
}
