// DOM helpers. Every piece of data from the API reaches the page through these, as text nodes or
// attribute values, never as HTML, so a hostile host name or message cannot inject markup.

export const $ = (id) => document.getElementById(id);

/// h("tr", {class: "x", onclick: f}, child, "text", [more]) builds an element.
export function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of kids.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

export function emptyRow(cols, text) {
  return h("tr", { class: "emptyrow" }, h("td", { colspan: cols, class: "empty" }, text));
}

/// Sets a text only when it differs, so live updates do not disturb a selection or a screen
/// reader's place in text that did not change.
export function setText(el, text) {
  const t = String(text ?? "");
  if (el.textContent !== t) el.textContent = t;
}

export function setAttr(el, name, value) {
  if (value === null || value === undefined || value === false) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
  } else {
    const v = value === true ? "" : String(value);
    if (el.getAttribute(name) !== v) el.setAttribute(name, v);
  }
}

/// Puts `kids` into `parent` in this order, moving only the nodes that are out of place: a node
/// that is moved loses keyboard focus, so nodes that keep their place must not be touched.
export function keepOrder(parent, kids) {
  kids.forEach((k, i) => {
    if (parent.children[i] !== k) {
      const focused = k.contains(document.activeElement) ? document.activeElement : null;
      parent.insertBefore(k, parent.children[i] || null);
      if (focused) focused.focus({ preventScroll: true });
    }
  });
  while (parent.children.length > kids.length) parent.lastElementChild.remove();
}
