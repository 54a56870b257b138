// Human values: numbers with sensible precision and units, durations, dates, sensor names.

const nf = (digits) => new Intl.NumberFormat(undefined, { maximumSignificantDigits: digits });
const NF3 = nf(3);
const NF4 = nf(4);
const INT = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
/// Between a number and its unit: they stay on one line.
const NB = "\u00a0";

/// 3 significant digits, at least the integer part (12,345 stays 12,345, not 12,300).
export function num(v) {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 1000) return INT.format(v);
  if (a >= 100) return NF4.format(v);
  return NF3.format(v);
}

const IEC = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
export function bytes(v) {
  let a = Math.abs(v), i = 0;
  while (a >= 1024 && i < IEC.length - 1) { a /= 1024; i++; }
  return num(Math.sign(v) * a) + NB + IEC[i];
}

/// Seconds as "2 h 13 min", "13 min 41 s", "4.2 s", "350 ms": the two largest units.
export function duration(seconds) {
  if (!Number.isFinite(seconds)) return String(seconds);
  const neg = seconds < 0 ? "−" : "";
  let s = Math.abs(seconds);
  if (s < 1) return neg + num(s * 1000) + NB + "ms";
  if (s < 60) return neg + INT.format(Math.floor(s)) + NB + "s";
  s = Math.floor(s);
  const parts = [[Math.floor(s / 86400), "d"], [Math.floor(s / 3600) % 24, "h"], [Math.floor(s / 60) % 60, "min"], [s % 60, "s"]];
  const first = parts.findIndex(([n]) => n > 0);
  const out = parts.slice(first, first + 2).filter(([n]) => n > 0).map(([n, u]) => n + NB + u);
  return neg + out.join(" ");
}

/// A reading's value with its unit, as a person reads it. Unknown units are shown as given.
export function value(v, unit, key) {
  if (typeof v === "boolean") return v ? "on" : "off";
  if (typeof v !== "number") return v === null || v === undefined ? "—" : String(v);
  return numberWithUnit(v, unit, key);
}

export function numberWithUnit(v, unit, key) {
  const u = unit || "";
  if (u === "B") return bytes(v);
  if (u === "B/s") return bytes(v) + "/s";
  if (u === "bit/s" || u === "b/s") return num(v) + NB + "bit/s";
  if (u === "%" || (!u && key && /_pct$/.test(key))) return num(v) + NB + "%";
  if (u === "s") return duration(v);
  if (u === "ms") return v >= 1000 ? duration(v / 1000) : num(v) + NB + "ms";
  if (u === "d") return num(v) + NB + (Math.abs(v) === 1 ? "day" : "days");
  return num(v) + (u ? NB + u : "");
}

/// Short number for chart axes: same units, fewer digits.
export function axisValue(v, unit, key) {
  return numberWithUnit(v, unit, key);
}

const DATE = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
const SHORT = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

/// Absolute time, always with its date: "Dec 2, 2026, 06:08:42".
export function dateTime(t) { return DATE.format(new Date(t)); }

/// Absolute time as short as still unambiguous: the time today, the date otherwise.
export function when(t) {
  const d = new Date(t), now = new Date();
  return d.toDateString() === now.toDateString() ? "today " + TIME.format(d) : SHORT.format(d);
}

/// "12 s ago", "3 d 4 h ago"; "just now" inside a second; future times (a clock ahead) say so.
export function ago(t, now = Date.now()) {
  const s = (now - new Date(t).getTime()) / 1000;
  if (s < -1) return "in " + duration(-s) + " (clock ahead)";
  if (s < 1) return "just now";
  return duration(s) + " ago";
}

// ---- sensors ----

const KINDS = {
  cpu: "CPU", mem: "Memory", swap: "Swap", load: "Load", disk: "Disks", diskio: "Disk I/O", net: "Network", network: "Network",
  proc: "Processes", svc: "Services", service: "Services", tcp: "TCP checks", http: "Web checks",
  cmd: "Commands", file: "Files", relay: "Relays",
};
/// Kind order on a machine's page: what fails most visibly first.
const ORDER = ["tcp", "http", "cmd", "svc", "service", "proc", "file", "cpu", "mem", "swap", "load", "disk", "diskio", "net", "network", "relay"];

export function kindOf(key) {
  const k = key.split(".")[0];
  return KINDS[k] ? k : "other";
}
export function kindTitle(kind) { return KINDS[kind] || "Other"; }
export function kindRank(kind) { const i = ORDER.indexOf(kind); return i < 0 ? ORDER.length : i; }

const SUFFIX = {
  used_pct: "used %", swap_used_pct: "swap used %", free: "free", total: "total", read_bps: "read", write_bps: "write", rx_bps: "received",
  tx_bps: "sent", errors: "errors", latency_ms: "latency", cert_days: "certificate valid for",
  status: "status", count: "processes", rss: "memory (RSS)", age: "age", size: "size",
  "1": "1 min", "5": "5 min", "15": "15 min",
};

/// A readable name within its kind: `disk./var.used_pct` → "/var used", `cpu.total` → "total".
export function sensorName(key) {
  const kind = kindOf(key);
  const rest = kind === "other" ? key : key.slice(key.indexOf(".") + 1);
  if (!rest || rest === key && kind !== "other") return KINDS[kind] || key;
  if (kind === "relay") {
    const m = rest.match(/^(\d+)(?:\.k([1-8]))?$/);
    if (m) return m[2] ? `card ${m[1]} relay K${m[2]}` : `card ${m[1]} state`;
  }
  const dot = rest.lastIndexOf(".");
  const last = dot < 0 ? rest : rest.slice(dot + 1);
  if (dot < 0) return SUFFIX[last] || rest;
  const head = rest.slice(0, dot);
  return head + " " + (SUFFIX[last] || last.replace(/_/g, " "));
}

export const STATES = ["ok", "warn", "error", "unknown"];
const RANK = { ok: 0, unknown: 1, warn: 2, error: 3 };
export function stateRank(s) { return RANK[s] ?? 1; }
export function stateText(s) {
  return { ok: "OK", warn: "Warning", error: "Error", unknown: "Unknown", stale: "Stale", offline: "Offline", revoked: "Revoked", clock: "Clock" }[s] || "Unknown";
}
/// The adjective a duration follows: "error for 2 h 13 min".
export function stateWord(s) {
  return { ok: "ok", warn: "warning", error: "error", unknown: "unknown", offline: "offline", stale: "no reading", clock: "clock off" }[s] || s;
}

// Default sampling interval of each kind (the hub's defaults): a sensor is called stale after 3
// intervals without a reading. The page learns a sensor's real interval from its readings and
// uses that instead as soon as it has seen two of them.
const DEFAULT_INTERVAL = { cpu: 10, mem: 10, swap: 10, diskio: 10, net: 10, network: 10, load: 10, proc: 30, svc: 30, service: 30, tcp: 30, disk: 60, http: 60, cmd: 60, file: 60 };
export function defaultInterval(key) { return DEFAULT_INTERVAL[kindOf(key)] || null; }
