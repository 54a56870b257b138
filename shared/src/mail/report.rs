//! The periodic status report of one network: a table of machines and their sensors' states (as
//! text and as HTML) and the period's readings as a CSV attachment. The caller (the cloud) gathers
//! the data; this module only lays it out and computes when the next report is due.

use super::alerts::format_value;
use super::{html_escape, Attachment, Mail};
use crate::model::{State, Value};
use chrono::{DateTime, NaiveTime, Utc};

/// Readings in the CSV at most; a bigger period is cut (and the mail says so) so the mail stays
/// within what mail servers accept (a row is ~80 bytes: 200 000 rows ≈ 16 MB before base64).
pub const MAX_CSV_ROWS: usize = 200_000;

/// One machine in the report.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineStatus {
    pub machine_id: String,
    pub hostname: String,
    /// When the cloud last heard from it.
    pub last_seen: Option<DateTime<Utc>>,
    pub sensors: Vec<SensorStatus>,
}

/// A sensor's latest reading.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorStatus {
    pub sensor: String,
    pub state: State,
    pub value: Option<Value>,
    pub unit: Option<String>,
    pub ts: DateTime<Utc>,
}

/// One reading of the period, for the CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportReading {
    pub machine_id: String,
    pub hostname: String,
    pub sensor: String,
    pub ts: DateTime<Utc>,
    pub value: Value,
    pub unit: Option<String>,
    pub state: State,
}

/// Builds the report mail: multipart/mixed holding multipart/alternative (text, HTML) and the CSV.
pub fn build(
    network: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    machines: &[MachineStatus],
    readings: &[ReportReading],
    to: Vec<String>,
) -> Mail {
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    let mut counts = [0usize; 4];
    for s in machines.iter().flat_map(|m| &m.sensors) {
        counts[state_index(s.state)] += 1;
    }
    let worst = [State::Error, State::Warn, State::Unknown, State::Ok]
        .into_iter()
        .find(|s| counts[state_index(*s)] > 0)
        .unwrap_or(State::Ok);
    // Several reports a day need the time to tell them apart.
    let daily = until - from >= chrono::Duration::days(1);
    let (label, file_label) = if daily {
        (until.format("%Y-%m-%d").to_string(), until.format("%Y-%m-%d").to_string())
    } else {
        (until.format("%Y-%m-%d %H:%M").to_string(), until.format("%Y-%m-%dT%H%M%S").to_string())
    };
    let subject = format!(
        "[Outpost] {network} report {label}: {} machine(s), {} error, {} warn",
        machines.len(),
        counts[state_index(State::Error)],
        counts[state_index(State::Warn)]
    );
    let truncated = readings.len() > MAX_CSV_ROWS;
    let summary = format!(
        "Network {network}, {} to {}: {} machine(s), sensors: {} ok, {} warn, {} error, {} unknown; \
         worst state {}. {} reading(s) attached as CSV{}.",
        fmt(from),
        fmt(until),
        machines.len(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        worst,
        readings.len().min(MAX_CSV_ROWS),
        if truncated {
            format!(" (cut from {}: too many for one mail)", readings.len())
        } else {
            String::new()
        }
    );

    let (tables_text, html) = tables(network, &summary, machines);
    let text = format!("{summary}\n\n{tables_text}");
    let csv = csv(&readings[..readings.len().min(MAX_CSV_ROWS)]);
    Mail {
        to,
        subject,
        text,
        html: Some(html),
        attachments: vec![Attachment {
            filename: format!("outpost-{}-{file_label}.csv", file_safe(network)),
            content_type: "text/csv; charset=utf-8".into(),
            data: csv.into_bytes(),
        }],
    }
}

/// The machines and their sensors' latest states as text lines and as an HTML page.
fn tables(title: &str, summary: &str, machines: &[MachineStatus]) -> (String, String) {
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
    let mut text = String::new();
    let mut rows = String::new();
    for m in machines {
        let seen = m.last_seen.map(fmt).unwrap_or_else(|| "never".into());
        text.push_str(&format!("{} ({}), last seen {}\n", m.hostname, m.machine_id, seen));
        rows.push_str(&format!(
            "<tr><th colspan=\"4\" style=\"text-align:left;background:#eee\">{} <small>({})</small>, last seen {}</th></tr>\n",
            html_escape(&m.hostname),
            html_escape(&m.machine_id),
            html_escape(&seen)
        ));
        if m.sensors.is_empty() {
            text.push_str("  (no sensors)\n");
        }
        for s in &m.sensors {
            let value = format_value(s.value.as_ref(), s.unit.as_deref());
            text.push_str(&format!("  {:<7} {:<32} {:<16} {}\n", s.state, s.sensor, value, fmt(s.ts)));
            rows.push_str(&format!(
                "<tr><td style=\"color:{};font-weight:bold\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                colour(s.state),
                s.state,
                html_escape(&s.sensor),
                html_escape(&value),
                fmt(s.ts)
            ));
        }
    }
    let html = format!(
        "<!DOCTYPE html><html><body style=\"font-family:sans-serif\"><h2>Outpost: {}</h2><p>{}</p>\
         <table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">\
         <tr><th>State</th><th>Sensor</th><th>Value</th><th>Time</th></tr>\n{rows}</table></body></html>",
        html_escape(title),
        html_escape(summary)
    );
    (text, html)
}

/// A status mail without attachment (the answer to a `STATUS` mail command): `summary` on top,
/// then the machines' sensors as in the report.
pub fn status(
    subject: String,
    title: &str,
    summary: &str,
    machines: &[MachineStatus],
    to: Vec<String>,
) -> Mail {
    let (tables_text, html) = tables(title, summary, machines);
    Mail {
        to,
        subject,
        text: format!("{summary}\n\n{tables_text}"),
        html: Some(html),
        attachments: Vec::new(),
    }
}

fn state_index(s: State) -> usize {
    match s {
        State::Ok => 0,
        State::Warn => 1,
        State::Error => 2,
        State::Unknown => 3,
    }
}

fn colour(s: State) -> &'static str {
    match s {
        State::Error => "#c62828",
        State::Warn => "#ef6c00",
        State::Ok => "#2e7d32",
        State::Unknown => "#616161",
    }
}

fn file_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// RFC 4180: fields with a comma, quote or line break are quoted, quotes doubled.
fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

fn csv(readings: &[ReportReading]) -> String {
    let mut out = String::from("machine_id,hostname,sensor,time,value,unit,state\r\n");
    for r in readings {
        let value = match &r.value {
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Text(t) => t.clone(),
        };
        let ts = r.ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let unit = r.unit.as_deref().unwrap_or("");
        for (i, f) in
            [r.machine_id.as_str(), &r.hostname, &r.sensor, &ts, &value, unit].into_iter().enumerate()
        {
            if i > 0 {
                out.push(',');
            }
            csv_field(&mut out, f);
        }
        out.push(',');
        out.push_str(r.state.as_str());
        out.push_str("\r\n");
    }
    out
}

/// The next report time strictly after `now`: `at` (UTC) on 1970-01-01 plus a whole number of
/// `every`. With `every` = 1 day that is daily at `at`; with 1 hour, hourly at `at`'s minute.
pub fn next_run(now: DateTime<Utc>, at: NaiveTime, every: std::time::Duration) -> DateTime<Utc> {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date").and_time(at).and_utc();
    let every_ms = (every.as_millis() as i64).max(1);
    let since = (now - epoch).num_milliseconds();
    let periods = since.div_euclid(every_ms) + 1;
    epoch + chrono::Duration::milliseconds(periods * every_ms)
}
