//! The reading and batch model, and the JSON shapes of the HTTP API. These types are the wire
//! format: renaming a field is a breaking change for every deployed hub.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The health a sensor reports for one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    Warn,
    Error,
    #[default]
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Warn => "warn",
            State::Error => "error",
            State::Unknown => "unknown",
        }
    }

    /// Nagios plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, anything else UNKNOWN.
    pub fn from_nagios_exit(code: i32) -> State {
        match code {
            0 => State::Ok,
            1 => State::Warn,
            2 => State::Error,
            _ => State::Unknown,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reading's value: a number, a flag or a short text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Text(_) => None,
        }
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Number(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

/// What a sensor produces: a reading before the buffer gives it its place (`seq`) in the
/// machine's sequence. This is also the form readings are stored in inside a buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Sensor key, dotted: `cpu.total`, `disk./var.used_pct`, `http.intranet.status`.
    pub sensor: String,
    /// When the value was taken. Replayed readings keep this original time.
    pub ts: DateTime<Utc>,
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The warn and error limits the state was judged against, when the sensor has any: what the
    /// dashboard draws as threshold lines. Optional on the wire: older hubs send none, and a
    /// reading without it means "no limits known", never "no limits".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// A sensor's `warn` and `error` limits as readings carry them. `below` turns them around: the
/// value is bad when at or under the limit (free bytes, days until a certificate expires).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<f64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub below: bool,
}

impl Limits {
    /// Whether a received value can be drawn: finite numbers only (JSON cannot carry NaN, but a
    /// hub's own code could make one, and a line at infinity is no line).
    pub fn is_valid(&self) -> bool {
        self.warn.is_none_or(f64::is_finite) && self.error.is_none_or(f64::is_finite)
    }
}

impl Sample {
    pub fn new(sensor: impl Into<String>, value: impl Into<Value>, state: State) -> Self {
        Sample {
            sensor: sensor.into(),
            ts: Utc::now(),
            value: value.into(),
            unit: None,
            state,
            message: None,
            limits: None,
        }
    }

    pub fn unit(mut self, unit: &str) -> Self {
        self.unit = Some(unit.to_string());
        self
    }

    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    pub fn at(mut self, ts: DateTime<Utc>) -> Self {
        self.ts = ts;
        self
    }

    /// The limits the state was judged against (none when `limits` is None).
    pub fn limits(mut self, limits: Option<Limits>) -> Self {
        self.limits = limits;
        self
    }
}

/// One reading as it travels: `(machine_id, seq)` identifies it everywhere, so every hop can
/// resend it safely and the cloud stores it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub machine_id: String,
    /// Rises strictly per machine and survives restarts.
    pub seq: u64,
    #[serde(flatten)]
    pub sample: Sample,
}

/// The role a machine plays; reported with every batch so the cloud can list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Sensorhub,
    Connector,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Sensorhub => "sensorhub",
            Role::Connector => "connector",
        })
    }
}

/// What a hub sends in one upload: its identity, how it is connected, how much it still holds,
/// and the readings. `POST /v1/batches`, gzip-compressed JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub machine_id: String,
    pub hostname: String,
    #[serde(default)]
    pub role: Role,
    /// `direct`, `connector:<id>` (the cloud never sees `offline` from the hub itself: it derives
    /// it from silence).
    pub uplink: String,
    /// Readings still in the hub's buffer besides these.
    pub buffered: u64,
    /// Readings the hub had to drop because its buffer quota was full, counted since install.
    /// Loss is never silent: this count is shown next to the machine.
    #[serde(default)]
    pub dropped: u64,
    /// Agent version, for the dashboard.
    #[serde(default)]
    pub version: String,
    /// Readings the hub put aside for good since install (a hop's `Refused` verdict, records it
    /// could not read back): kept in its quarantine, counted durably, never silent.
    #[serde(default)]
    pub quarantined: u64,
    /// Set while the hub's clock disagrees with the hops it reports to (a `Clock` verdict), in
    /// words for the dashboard; cleared when readings are accepted again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_problem: Option<String>,
    /// Protocol features this agent understands beyond the first version, such as
    /// [`crate::keys::command_key::FEATURE`]; the cloud uses a feature only for machines that list
    /// it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    pub readings: Vec<Reading>,
}

/// Why a batch cannot be taken, as the receiver tells the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchProblem {
    /// More readings than the receiver takes at once (HTTP 413).
    #[error("{count} readings in one batch; at most {max}")]
    TooMany { count: usize, max: usize },
    /// Something in it is wrong (HTTP 400). One bad reading refuses the whole batch, so a sender
    /// never has to guess which part was kept.
    #[error("{0}")]
    Invalid(String),
}

/// Most feature names one batch may list.
const MAX_FEATURES: usize = 16;

impl Batch {
    /// Checks a whole batch before anything of it is stored.
    pub fn validate(&self, max_readings: usize) -> Result<(), BatchProblem> {
        let bad = |m: String| Err(BatchProblem::Invalid(m));
        if self.machine_id.is_empty() || self.machine_id.len() > 128 || self.machine_id.contains('\0') {
            return bad("machine_id must be 1 to 128 characters without NUL".into());
        }
        if self.readings.len() > max_readings {
            return Err(BatchProblem::TooMany { count: self.readings.len(), max: max_readings });
        }
        // Kept with the machine's status: a few short names, not whatever a sender makes up.
        let name_ok = |f: &String| (1..=64).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_graphic());
        if self.features.len() > MAX_FEATURES || !self.features.iter().all(name_ok) {
            return bad(format!(
                "features: at most {MAX_FEATURES} names of 1 to 64 printable ASCII characters"
            ));
        }
        for (i, r) in self.readings.iter().enumerate() {
            if r.machine_id != self.machine_id {
                return bad(format!(
                    "reading {i} belongs to machine {}, not to the sender {}",
                    r.machine_id, self.machine_id
                ));
            }
            if r.seq == 0 {
                return bad(format!("reading {i}: seq starts at 1"));
            }
            let s = &r.sample.sensor;
            if s.is_empty() || s.len() > 256 || s.contains('\0') {
                return bad(format!("reading {i}: sensor key must be 1 to 256 characters without NUL"));
            }
            if let Value::Number(n) = r.sample.value {
                if !n.is_finite() {
                    return bad(format!("reading {i}: value must be a finite number"));
                }
            }
        }
        Ok(())
    }

    /// The indexes of the readings stamped outside `window`: the one clock check every hop
    /// (connector intake, cloud ingest) makes, so they can never disagree on what "too far in the
    /// future" or "too old" means.
    pub fn outside(&self, window: &TimeWindow) -> Vec<usize> {
        self.readings
            .iter()
            .enumerate()
            .filter(|(_, r)| !window.contains(r.sample.ts))
            .map(|(i, _)| i)
            .collect()
    }
}

impl TimeWindow {
    /// What a hop accepts at `now`: up to `max_future` ahead of its clock (clocks differ a
    /// little) and back to `max_age` (its raw retention: older readings would be folded away at
    /// once, and a reading from 2000 is a clock that was never set).
    pub fn around(
        now: DateTime<Utc>,
        max_future: std::time::Duration,
        max_age: std::time::Duration,
    ) -> TimeWindow {
        let d = |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        TimeWindow {
            from: now.checked_sub_signed(d(max_age)).unwrap_or(DateTime::<Utc>::MIN_UTC),
            until: now.checked_add_signed(d(max_future)).unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    pub fn contains(&self, ts: DateTime<Utc>) -> bool {
        self.from <= ts && ts <= self.until
    }
}

/// A hub that answered a connector's SSDP search but sends its readings elsewhere (or nowhere):
/// listed on the dashboard so an operator can attach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnattachedHub {
    /// The hub's machine id, from its USN.
    pub machine_id: String,
    pub location: String,
    #[serde(default)]
    pub server: String,
    /// The connector that saw it.
    #[serde(default)]
    pub connector: String,
    pub seen_at: DateTime<Utc>,
}

/// `POST /v1/forward`: what a connector sends the cloud. Each batch is the hub's own batch JSON,
/// byte for byte as the hub sent it, so the connector cannot alter what a hub said.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardEnvelope {
    /// The connector's machine id.
    pub connector: String,
    pub batches: Vec<ForwardedBatch>,
    /// Hubs the connector found by SSDP that do not send through it.
    #[serde(default)]
    pub unattached: Vec<UnattachedHub>,
    /// Sensor states the connector alerted about itself while the cloud was unreachable; the
    /// cloud takes them as told and mails nothing for them (see `connector::mail`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mailed: Vec<MailedState>,
    /// Readings this connector put aside for good per hub since install (the cloud refused them
    /// with [`Verdict::Refused`], or their record could not be framed), by hub machine id. Totals,
    /// not increments, so a lost or repeated forward cannot skew them; the cloud adds them to
    /// each hub's [`MachineInfo::quarantined`]. Sent when they changed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub quarantined: std::collections::BTreeMap<String, u64>,
}

/// "The recipients were told by mail that this sensor is in `state`": a connector's note, so the
/// cloud does not alert a second time about a change the connector mailed during an outage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailedState {
    pub machine_id: String,
    pub sensor: String,
    pub state: State,
    /// Time of the reading the state comes from.
    pub ts: DateTime<Utc>,
}

/// One hub batch inside a forward: the JSON exactly as the hub signed it, and its signature.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedBatch {
    pub sig: BatchSignature,
    pub body: Box<serde_json::value::RawValue>,
}

/// The three signature headers of the hub's original request, carried along.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSignature {
    pub machine_id: String,
    pub timestamp: i64,
    pub signature: String,
}

/// The cloud's answer to a forward: one result per batch, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardAck {
    pub results: Vec<ForwardResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ForwardResult {
    Stored(BatchAck),
    /// Not stored: the HTTP status it would have had, why, and the verdict. Only
    /// [`Verdict::Refused`] lets the batch leave the connector's custody (into its quarantine);
    /// anything else, a missing verdict included, means the connector keeps it and retries.
    Refused {
        status: u16,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verdict: Option<Verdict>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<RefusalCode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accept: Option<TimeWindow>,
    },
}

/// The cloud's answer to an accepted batch. Sent only after the readings are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    /// Readings stored for the first time.
    pub stored: u64,
    /// Readings the cloud already had (a resend after a lost acknowledgement).
    pub duplicates: u64,
}

/// `GET /v1/machines` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub id: String,
    pub hostname: String,
    pub role: Role,
    /// `direct`, `connector:<id>` or `offline`.
    pub uplink: String,
    pub last_seen: DateTime<Utc>,
    pub buffered: u64,
    #[serde(default)]
    pub dropped: u64,
    #[serde(default)]
    pub version: String,
    /// As [`Batch::quarantined`]: the latest count the machine reported, plus what connectors
    /// put aside of its data ([`ForwardEnvelope::quarantined`]).
    #[serde(default)]
    pub quarantined: u64,
    /// As [`Batch::clock_problem`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_problem: Option<String>,
    /// As [`Batch::features`], from the latest batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// `GET /v1/machines/{id}/sensors` row: the latest reading of one sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorLatest {
    pub sensor: String,
    pub state: State,
    pub value: Value,
    #[serde(default)]
    pub unit: Option<String>,
    pub ts: DateTime<Utc>,
    #[serde(default)]
    pub message: Option<String>,
    /// As [`Sample::limits`] of this latest reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// `GET /v1/machines/{id}/readings` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingPoint {
    pub seq: u64,
    pub ts: DateTime<Utc>,
    pub value: Value,
    pub state: State,
}

/// `GET /v1/machines/{id}/readings?resolution=hourly` row: what is left of raw readings after
/// their retention, one row per sensor and hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HourlyPoint {
    pub ts: DateTime<Utc>,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub count: u64,
}

/// Error body of every API error: what went wrong, in words that say what to fix, and for data
/// offered to a hop (batches, forwards) the hop's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    /// Custody rule: only `Some(Verdict::Refused)` lets the sender put the data aside (into its
    /// counted quarantine). No verdict (a proxy's 404, a timeout, an old peer) means retry later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<RefusalCode>,
    /// With [`RefusalCode::Clock`]: the timestamps the hop accepts, by its clock. The sender puts
    /// aside only the readings outside it and sends the rest again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<TimeWindow>,
}

impl ApiError {
    /// An error with no verdict: for data, the sender keeps it and retries later.
    pub fn new(error: impl Into<String>) -> ApiError {
        ApiError { error: error.into(), verdict: None, code: None, accept: None }
    }

    /// A verdict on data: `Refused` (for good) or `RetryLater`, with its machine-readable reason.
    pub fn verdict(error: impl Into<String>, verdict: Verdict, code: RefusalCode) -> ApiError {
        ApiError { error: error.into(), verdict: Some(verdict), code: Some(code), accept: None }
    }
}

/// A hop's decision on data it did not store. See ARCHITECTURE.md, "Verdicts, not guesses".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Keep it and send it again later (storage busy, not enrolled yet, over a limit that can change).
    RetryLater,
    /// Sending it again can never help (forged, malformed, timestamps outside the window): the
    /// sender moves it to its quarantine, counts it, and reports the count.
    Refused,
}

/// Why data was not stored, for programs (the `error` text is for people). Unknown codes from a
/// newer peer read as [`RefusalCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// No valid signature by an enrolled key of the right network.
    Forged,
    /// Not a batch: bad JSON, invalid UTF-8, a reading that breaks the rules.
    Malformed,
    /// Too big for the hop: split and send again (413); never a reason to drop.
    TooLarge,
    /// Readings stamped outside the hop's accepted window ([`ApiError::accept`]).
    Clock,
    /// The machine is not enrolled (yet): retry later.
    NotEnrolled,
    /// The machine's enrollment was withdrawn.
    Revoked,
    /// The hop is busy or full: retry after `Retry-After`.
    Busy,
    /// The hop could not store it (disk, database): retry later.
    Storage,
    /// The session ticket expired or is not one the cloud can open (another cloud key): open a
    /// new session and send the same request again; nothing is decided about the data.
    SessionExpired,
    #[serde(other)]
    Other,
}

/// Accepted reading timestamps, inclusive, by the answering hop's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWindow {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_json_is_flat_and_round_trips() {
        let r = Reading {
            machine_id: "m1".into(),
            seq: 7,
            sample: Sample::new("cpu.total", 12.5, State::Ok).unit("%"),
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["machine_id"], "m1");
        assert_eq!(json["seq"], 7);
        assert_eq!(json["sensor"], "cpu.total");
        assert_eq!(json["value"], 12.5);
        assert_eq!(json["state"], "ok");
        let back: Reading = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn readings_outside_the_window_are_named_by_index() {
        let now = Utc::now();
        let window = TimeWindow::around(
            now,
            std::time::Duration::from_secs(300),
            std::time::Duration::from_secs(7 * 86400),
        );
        let at = |ts: DateTime<Utc>, seq| Reading {
            machine_id: "m".into(),
            seq,
            sample: Sample::new("cpu", 1.0, State::Ok).at(ts),
        };
        let year = |y| DateTime::parse_from_rfc3339(&format!("{y}-01-01T00:00:00Z")).unwrap().to_utc();
        let batch = Batch {
            machine_id: "m".into(),
            hostname: "h".into(),
            role: Role::Sensorhub,
            uplink: "direct".into(),
            buffered: 0,
            dropped: 0,
            version: String::new(),
            quarantined: 0,
            clock_problem: None,
            features: Vec::new(),
            readings: vec![
                at(now, 1),
                at(year(2100), 2),
                at(now + chrono::Duration::seconds(299), 3),
                at(year(2000), 4),
                at(now + chrono::Duration::seconds(301), 5),
                at(now - chrono::Duration::days(6), 6),
            ],
        };
        assert_eq!(batch.outside(&window), vec![1, 3, 4]);
        // Huge settings saturate instead of overflowing.
        let all = TimeWindow::around(now, std::time::Duration::MAX, std::time::Duration::MAX);
        assert!(batch.outside(&all).is_empty());
    }

    #[test]
    fn values_keep_their_kind() {
        for v in [Value::Bool(true), Value::Number(3.0), Value::Text("up".into())] {
            let s = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Value>(&s).unwrap(), v);
        }
    }

    #[test]
    fn nagios_exit_codes_map_to_states() {
        assert_eq!(State::from_nagios_exit(0), State::Ok);
        assert_eq!(State::from_nagios_exit(1), State::Warn);
        assert_eq!(State::from_nagios_exit(2), State::Error);
        assert_eq!(State::from_nagios_exit(3), State::Unknown);
        assert_eq!(State::from_nagios_exit(127), State::Unknown);
    }
}
