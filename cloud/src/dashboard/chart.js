// The history chart of one sensor, drawn by the vendored uPlot (loaded before this module as the
// global `uPlot`): numbers as a line with their state as a band underneath, booleans, relays and
// texts as a stepped timeline of their states. Time axis with dates, human units on the value
// axis, the sensor's warn and error limits as dashed lines, a tooltip, zoom by dragging
// (double-click resets). The cloud answers a range as one series (hourly averages where retention
// folded the readings, raw readings after), so the chart's choice of raw or hourly data follows
// the range by itself. Points outside the chosen range are
// dropped as live readings arrive, so a tab left open does not grow.

import { h, setText } from "./dom.js";
import { axisValue, dateTime, value as fmtValue, stateText, when, num } from "./format.js";

export const RANGES = [
  ["1 h", 3600], ["6 h", 6 * 3600], ["24 h", 86400], ["7 d", 7 * 86400], ["30 d", 30 * 86400], ["400 d", 400 * 86400],
];
/// Most points kept in the page for one chart, whatever arrives.
const MAX_POINTS = 200000;

// Colours that keep 3:1 against white as graphics (WCAG 1.4.11); the text beside them says it too.
const STATE_COLOUR = { ok: "#166a2f", warn: "#b7791f", error: "#c62828", unknown: "#5f6b7a" };
const LINE = "#1f5fbf";

const iso = (ms) => new Date(ms).toISOString();
const enc = encodeURIComponent;

export class History {
  /// `box` receives the chart, `caption` a sentence on what it shows; `api(path)` fetches JSON.
  constructor(box, caption, api) {
    this.box = box; this.caption = caption; this.api = api;
    this.plot = null; this.points = []; this.kind = "number"; this.labels = [];
    this.range = 3600; this.notes = []; this.zoomed = false; this.seq = 0;
    this.tip = h("div", { class: "charttip", role: "status", "aria-live": "off", hidden: true });
    // Zooming is by mouse; going back to the whole range also by keyboard.
    this.reset = h("button", { type: "button", class: "resetzoom", hidden: true, onclick: () => this.unzoom() }, "Show the whole range");
    caption.after(this.reset);
    new ResizeObserver(() => this.fit()).observe(box);
  }

  clear(text) {
    this.seq++;
    this.key = null; this.points = [];
    if (this.plot) { this.plot.destroy(); this.plot = null; }
    this.box.replaceChildren(h("p", { class: "empty" }, text));
    this.box.dataset.points = "0";
    setText(this.caption, "");
  }

  /// Loads and draws `sensor` of `machine` over the last `range` seconds.
  async show(machine, sensor, latest, range) {
    const seq = ++this.seq;
    this.machine = machine; this.sensor = sensor; this.range = range; this.latest = latest;
    this.unit = latest && latest.unit; this.zoomed = false;
    // The limits the newest reading was judged against; older hubs send none.
    const lim = latest && latest.limits;
    this.limits = lim && typeof lim === "object" ? lim : null;
    this.box.dataset.limits = this.limits ? [this.limits.warn, this.limits.error].filter((v) => typeof v === "number").join(" ") : "";
    setText(this.caption, "loading…");
    const { points, notes } = await this.fetch(machine, sensor, range);
    if (seq !== this.seq) return; // another sensor or range was chosen meanwhile
    this.points = points; this.notes = notes;
    this.kind = points.some((p) => typeof p.raw === "number" || p.hourly) ? "number"
      : points.some((p) => typeof p.raw === "boolean") ? "bool" : points.length ? "text" : "number";
    this.draw();
  }

  /// The range as ONE series from the cloud (`/series`): hourly averages where retention folded
  /// the readings, every raw reading after, already trimmed to the range.
  async fetch(machine, sensor, range) {
    const now = Date.now(), start = now - range * 1000;
    const answer = await this.api(`/v1/machines/${enc(machine)}/series?sensor=${enc(sensor)}&from=${iso(start)}&until=${iso(now + 1000)}`);
    const points = [], notes = [];
    const list = Array.isArray(answer && answer.points) ? answer.points : [];
    let lastHour = null;
    for (const p of list) {
      let pt;
      if (p.hourly === true) {
        const t = Date.parse(p.ts);
        if (!Number.isFinite(t) || typeof p.value !== "number") continue;
        pt = { t: t / 1000, v: p.value, min: p.min, max: p.max, raw: p.value, s: null, hourly: true, n: p.count };
        lastHour = pt.t;
      } else {
        pt = toPoint(p);
        if (!pt) continue;
      }
      // Hours without any aggregate or reading (the machine was off) stay a gap in the line.
      const last = points[points.length - 1];
      if (last && last.hourly && pt.t - last.t > 7200) points.push({ t: last.t + 3600, v: null, raw: null, s: null, gap: true });
      points.push(pt);
    }
    if (lastHour !== null) notes.push(`Hourly averages until ${when((lastHour + 3600) * 1000)}, every reading after`);
    const om = answer && answer.omitted;
    if (om && typeof om.after === "string" && typeof om.before === "string") {
      // The cloud answers at most so many readings: the missing stretch is a gap, and said.
      const at = points.findIndex((p) => p.t * 1000 > Date.parse(om.after));
      if (at > 0) points.splice(at, 0, { t: Date.parse(om.after) / 1000 + 0.001, v: null, raw: null, s: null, gap: true });
      notes.push(`No readings shown from ${when(om.after)} to ${when(om.before)}: too many for one chart`);
    }
    this.box.dataset.hourly = String(points.filter((p) => p.hourly).length);
    return { points, notes };
  }

  /// A live reading of the shown sensor.
  push(reading) {
    if (!this.plot || !this.points) return;
    const pt = toPoint(reading);
    if (!pt) return;
    const last = this.points[this.points.length - 1];
    if (last && pt.t <= last.t) return; // a replayed backlog reading: history, not news
    if (this.kind === "text" && !this.labels.includes(String(pt.raw))) { this.points.push(pt); this.draw(); return; }
    this.points.push(pt);
    this.trim();
    this.plot.setData(this.data(), !this.zoomed);
    this.describe();
  }

  /// Drops what has left the range (and anything beyond the cap), oldest first.
  trim() {
    const cut = Date.now() / 1000 - this.range;
    let drop = 0;
    while (drop < this.points.length && this.points[drop].t < cut) drop++;
    drop = Math.max(drop, this.points.length - MAX_POINTS);
    if (drop > 0) this.points.splice(0, drop);
  }

  data() {
    const xs = this.points.map((p) => p.t);
    if (this.kind === "number") return [xs, this.points.map((p) => (typeof p.v === "number" ? p.v : null))];
    if (this.kind === "bool") return [xs, this.points.map((p) => (typeof p.raw === "boolean" ? (p.raw ? 1 : 0) : null))];
    return [xs, this.points.map((p) => (p.raw === null || p.raw === undefined ? null : this.labels.indexOf(String(p.raw))))];
  }

  draw() {
    if (this.plot) { this.plot.destroy(); this.plot = null; }
    this.reset.hidden = true;
    this.trim();
    if (this.points.length === 0) {
      this.box.replaceChildren(h("p", { class: "empty" }, "no readings in this range"));
      this.box.dataset.points = "0";
      setText(this.caption, this.notes.join("; "));
      return;
    }
    if (this.kind === "text") {
      this.labels = [...new Set(this.points.filter((p) => p.raw !== null).map((p) => String(p.raw)))].slice(-12);
    }
    const unit = this.unit, key = this.sensor, kind = this.kind, labels = this.labels;
    const yAxis = {
      scale: "y", size: 80, gap: 6, stroke: "#333f4b", grid: { stroke: "#e3e8ee" },
      values: (u, splits) => splits.map((v) => kind === "number" ? axisValue(v, unit, key)
        : kind === "bool" ? (v === 1 ? "on" : v === 0 ? "off" : "") : (labels[v] ?? "")),
    };
    if (kind !== "number") yAxis.splits = () => (kind === "bool" ? [0, 1] : labels.map((_, i) => i));
    const opts = {
      width: Math.max(200, this.box.clientWidth), height: 240,
      legend: { show: false },
      cursor: { drag: { x: true, y: false, setScale: true }, points: { size: 7 } },
      scales: {
        x: { time: true },
        y: kind === "number" ? { auto: true, range: (u, lo, hi) => this.yRange(lo, hi) } : { range: kind === "bool" ? [-0.15, 1.15] : [-0.5, Math.max(labels.length - 0.5, 0.5)] },
      },
      axes: [{ stroke: "#333f4b", grid: { stroke: "#e3e8ee" } }, yAxis],
      series: [{}, {
        label: key, stroke: LINE, width: 2, spanGaps: false,
        paths: kind === "number" ? undefined : uPlot.paths.stepped({ align: 1 }),
        points: { show: this.points.length < 80 },
      }],
      hooks: {
        draw: [(u) => this.band(u), (u) => this.limitLines(u)],
        setCursor: [(u) => this.tooltip(u)],
        setSelect: [() => { this.zoomed = true; this.reset.hidden = false; }],
      },
    };
    this.box.replaceChildren();
    this.plot = new uPlot(opts, this.data(), this.box);
    this.plot.over.append(this.tip);
    this.plot.over.addEventListener("dblclick", () => { this.zoomed = false; this.reset.hidden = true; });
    this.plot.over.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    this.describe();
  }

  /// The sensor's warn and error limits (from its latest reading) as dashed lines, labelled, so
  /// a reader sees how close the line came.
  limitLines(u) {
    const lim = this.limits;
    if (this.kind !== "number" || !lim) return;
    const ctx = u.ctx, { left, top, width, height } = u.bbox;
    ctx.save();
    ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.font = `${12 * devicePixelRatio}px system-ui, sans-serif`;
    ctx.textAlign = "right";
    for (const [name, colour] of [["warn", STATE_COLOUR.warn], ["error", STATE_COLOUR.error]]) {
      const v = lim[name];
      if (typeof v !== "number" || !Number.isFinite(v)) continue;
      const y = Math.round(u.valToPos(v, "y", true));
      if (y < top || y > top + height) continue;
      ctx.strokeStyle = colour; ctx.fillStyle = colour;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + width, y); ctx.stroke();
      const label = `${name === "warn" ? "warning" : "error"} ${lim.below ? "at or below" : "at or above"} ${fmtValue(v, this.unit, this.sensor)}`;
      // On a white ground, so the label stays readable where the line runs through it.
      const tx = left + width - 4 * devicePixelRatio, ty = y - 4 * devicePixelRatio, tw = ctx.measureText(label).width;
      ctx.fillStyle = "rgba(255,255,255,0.85)";
      ctx.fillRect(tx - tw - 2 * devicePixelRatio, ty - 12 * devicePixelRatio, tw + 4 * devicePixelRatio, 15 * devicePixelRatio);
      ctx.fillStyle = colour;
      ctx.fillText(label, tx, ty);
    }
    ctx.restore();
  }

  /// The value axis: the data, widened to show the limits when they lie near it (a limit ten
  /// times further away than the data spans would flatten the line to nothing).
  yRange(lo, hi) {
    if (lo === null || hi === null) return [0, 1];
    let a = lo, b = hi;
    const span = Math.max(hi - lo, Math.abs(hi) * 0.1, 1e-9);
    for (const v of [this.limits && this.limits.warn, this.limits && this.limits.error]) {
      if (typeof v === "number" && Number.isFinite(v) && v > lo - 3 * span && v < hi + 3 * span) { a = Math.min(a, v); b = Math.max(b, v); }
    }
    const pad = (b - a) * 0.05 || Math.abs(b) * 0.05 || 1;
    return [a - pad, b + pad];
  }

  /// The state of each reading as a band along the bottom of the plot.
  band(u) {
    const ctx = u.ctx, { left, top, width, height } = u.bbox, bh = Math.round(6 * devicePixelRatio);
    const pts = this.points, xmax = u.scales.x.max;
    ctx.save();
    // One rectangle per run of equal states, on whole pixels, so the band has no seams.
    for (let i = 0; i < pts.length;) {
      const s = pts[i].s;
      let j = i + 1;
      while (j < pts.length && pts[j].s === s && !pts[j].gap) j++;
      if (s && STATE_COLOUR[s]) {
        const t1 = j < pts.length ? pts[j].t : Math.min(Date.now() / 1000, xmax);
        const x0 = Math.floor(Math.max(left, u.valToPos(pts[i].t, "x", true)));
        const x1 = Math.ceil(Math.min(left + width, u.valToPos(t1, "x", true)));
        if (x1 > x0) { ctx.fillStyle = STATE_COLOUR[s]; ctx.fillRect(x0, top + height - bh, Math.max(1, x1 - x0), bh); }
      }
      i = j;
    }
    ctx.restore();
  }

  tooltip(u) {
    const i = u.cursor.idx;
    if (i === null || i === undefined || !this.points[i] || this.points[i].gap) { this.tip.hidden = true; return; }
    const p = this.points[i];
    const v = p.hourly
      ? `avg ${fmtValue(p.v, this.unit, this.sensor)} (min ${fmtValue(p.min, this.unit, this.sensor)}, max ${fmtValue(p.max, this.unit, this.sensor)}, ${p.n} readings in the hour)`
      : fmtValue(p.raw, this.unit, this.sensor);
    this.tip.replaceChildren(h("div", { class: "muted" }, dateTime(p.t * 1000)), h("div", {}, v),
      p.s ? h("div", {}, h("span", { class: "shape state-" + p.s, "aria-hidden": "true" }), stateText(p.s)) : null);
    this.tip.hidden = false;
    const left = u.cursor.left, w = u.over.clientWidth;
    this.tip.classList.toggle("flip", left > w / 2);
    this.tip.dataset.x = String(Math.round(left));
    this.tip.style.left = left > w / 2 ? "" : left + 12 + "px";
    this.tip.style.right = left > w / 2 ? w - left + 12 + "px" : "";
  }

  describe() {
    const pts = this.points.filter((p) => !p.gap);
    this.box.dataset.points = String(pts.length);
    // How the series holds together, for a reader of the page's data (and its tests): breaks in
    // the line, and the widest step between neighbouring points, in seconds.
    this.box.dataset.breaks = String(this.points.length - pts.length);
    this.box.dataset.widest = String(pts.reduce((w, p, i) => (i ? Math.max(w, p.t - pts[i - 1].t) : 0), 0));
    const first = pts[0], last = pts[pts.length - 1];
    const text = pts.length
      ? `${num(pts.length)} points, ${dateTime(first.t * 1000)} – ${dateTime(last.t * 1000)}. Drag across the chart to zoom, double-click to see the whole range.`
      : "";
    setText(this.caption, [text, ...this.notes].filter(Boolean).join(" "));
  }

  unzoom() {
    this.zoomed = false; this.reset.hidden = true;
    if (this.plot) this.plot.setData(this.data(), true);
  }

  fit() {
    if (this.plot) this.plot.setSize({ width: Math.max(200, this.box.clientWidth), height: 240 });
  }
}

function toPoint(p) {
  const t = Date.parse(p.ts);
  if (!Number.isFinite(t)) return null;
  const v = typeof p.value === "number" ? p.value : null;
  return { t: t / 1000, v, raw: p.value, s: typeof p.state === "string" ? p.state : null, gap: !!p.gap };
}
