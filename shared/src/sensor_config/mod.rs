//! `[[sensor]]` tables: one flat struct per table so that `deny_unknown_fields` keeps working
//! (serde's `flatten` would silently disable it), then [`validate_sensors`] rejects keys that do
//! not belong to the table's `kind` and everything else serde cannot check.

pub mod threshold;

use crate::config::Problem;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
pub use threshold::{Thresholds, Unit};

/// What a sensor measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SensorKind {
    Cpu,
    Memory,
    Disk,
    Diskio,
    Network,
    Load,
    Process,
    Service,
    Tcp,
    Http,
    Command,
    File,
    /// Windows event log: new errors and warnings since the last read.
    Eventlog,
    /// A Windows performance counter by path, through PDH.
    Perfcounter,
}

impl SensorKind {
    pub const ALL: [SensorKind; 14] = [
        SensorKind::Cpu,
        SensorKind::Memory,
        SensorKind::Disk,
        SensorKind::Diskio,
        SensorKind::Network,
        SensorKind::Load,
        SensorKind::Process,
        SensorKind::Service,
        SensorKind::Tcp,
        SensorKind::Http,
        SensorKind::Command,
        SensorKind::File,
        SensorKind::Eventlog,
        SensorKind::Perfcounter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SensorKind::Cpu => "cpu",
            SensorKind::Memory => "memory",
            SensorKind::Disk => "disk",
            SensorKind::Diskio => "diskio",
            SensorKind::Network => "network",
            SensorKind::Load => "load",
            SensorKind::Process => "process",
            SensorKind::Service => "service",
            SensorKind::Tcp => "tcp",
            SensorKind::Http => "http",
            SensorKind::Command => "command",
            SensorKind::File => "file",
            SensorKind::Eventlog => "eventlog",
            SensorKind::Perfcounter => "perfcounter",
        }
    }

    /// How often the kind samples when `interval` is not set. Machine-wide numbers change fast;
    /// checks of other things cost more and change slowly.
    pub fn default_interval(self) -> Duration {
        Duration::from_secs(match self {
            SensorKind::Cpu | SensorKind::Memory | SensorKind::Diskio => 10,
            SensorKind::Network | SensorKind::Load => 10,
            SensorKind::Process | SensorKind::Service | SensorKind::Tcp => 30,
            SensorKind::Eventlog => 60,
            SensorKind::Perfcounter => 10,
            SensorKind::Disk | SensorKind::Http | SensorKind::Command | SensorKind::File => 60,
        })
    }

    /// The first part of this kind's reading keys, and of its sensor name when it has a target.
    pub fn key_prefix(self) -> &'static str {
        match self {
            SensorKind::Memory => "mem",
            SensorKind::Process => "proc",
            SensorKind::Command => "cmd",
            SensorKind::Perfcounter => "perf",
            other => other.as_str(),
        }
    }

    /// Kinds whose readings are named after the sensor (`tcp.<name>`), so `name` is required.
    fn needs_name(self) -> bool {
        matches!(
            self,
            SensorKind::Tcp
                | SensorKind::Http
                | SensorKind::Command
                | SensorKind::File
                | SensorKind::Perfcounter
        )
    }

    /// Keys besides the common ones (`kind`, `name`, `interval`) a table of this kind may set.
    pub fn keys(self) -> &'static [&'static str] {
        const TH: [&str; 3] = ["warn", "error", "below"];
        match self {
            SensorKind::Cpu => &["warn", "error", "below", "per_core"],
            SensorKind::Memory => &["warn", "error", "below", "metric"],
            SensorKind::Disk => &["warn", "error", "below", "metric", "mounts"],
            SensorKind::Diskio => &["warn", "error", "below", "devices"],
            SensorKind::Network => &["warn", "error", "below", "interfaces"],
            SensorKind::Load => &TH,
            SensorKind::Process => &["warn", "error", "below", "process", "min_count"],
            SensorKind::Service => &["unit", "timeout"],
            SensorKind::Tcp => &["warn", "error", "below", "host", "port", "timeout"],
            SensorKind::Http => &[
                "warn",
                "error",
                "below",
                "url",
                "timeout",
                "expect_status",
                "expect_text",
                "ca_file",
                "username",
                "password",
                "cert_warn_days",
                "cert_error_days",
            ],
            SensorKind::Command => &["command", "timeout"],
            SensorKind::File => &["warn", "error", "below", "metric", "path"],
            SensorKind::Eventlog => &["logs", "sources", "levels", "max_messages"],
            SensorKind::Perfcounter => &["warn", "error", "below", "counter"],
        }
    }

    /// The readings `metric` may pick for thresholds; the first is the default.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            SensorKind::Memory => &[Metric::UsedPct, Metric::SwapUsedPct],
            SensorKind::Disk => &[Metric::UsedPct, Metric::Free],
            SensorKind::File => &[Metric::Age, Metric::Size],
            _ => &[],
        }
    }
}

impl fmt::Display for SensorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which reading `warn`/`error` apply to, for kinds that have more than one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Used space or memory in percent (memory, disk).
    UsedPct,
    /// Used swap in percent (memory).
    SwapUsedPct,
    /// Free bytes (disk); thresholds count downwards.
    Free,
    /// Seconds since the last modification (file).
    Age,
    /// Size in bytes (file).
    Size,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::UsedPct => "used_pct",
            Metric::SwapUsedPct => "swap_used_pct",
            Metric::Free => "free",
            Metric::Age => "age",
            Metric::Size => "size",
        }
    }

    fn unit(self) -> Unit {
        match self {
            Metric::UsedPct | Metric::SwapUsedPct => Unit::Percent,
            Metric::Free | Metric::Size => Unit::Bytes,
            Metric::Age => Unit::Secs,
        }
    }
}

/// Event types of the Windows event log an `eventlog` sensor can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventLevel {
    Error,
    Warning,
    Information,
    AuditFailure,
    AuditSuccess,
}

impl EventLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            EventLevel::Error => "error",
            EventLevel::Warning => "warning",
            EventLevel::Information => "information",
            EventLevel::AuditFailure => "audit_failure",
            EventLevel::AuditSuccess => "audit_success",
        }
    }
}

/// Event logs an `eventlog` sensor reads when `logs` is not set.
pub const DEFAULT_EVENT_LOGS: [&str; 2] = ["System", "Application"];
/// Newest event texts an `eventlog` reading carries when `max_messages` is not set, and the most
/// it may ask for (the message of a reading stays small).
pub const DEFAULT_MAX_MESSAGES: u32 = 3;
pub const MAX_MAX_MESSAGES: u32 = 10;

/// The command of a `command` sensor: a string runs through the system shell (`sh -c`,
/// `cmd /C`), a list runs the program directly with those arguments, no shell involved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandLine {
    Shell(String),
    Argv(Vec<String>),
}

impl CommandLine {
    fn is_empty(&self) -> bool {
        match self {
            CommandLine::Shell(s) => s.trim().is_empty(),
            CommandLine::Argv(v) => v.first().is_none_or(|p| p.trim().is_empty()),
        }
    }
}

/// A password from the config: Debug and Display print `***`, the memory is wiped when dropped,
/// and it is written back as the text the config holds (plain or sealed).
pub use crate::keys::Secret;

/// One `[[sensor]]` table of the hub's config. Only `kind` is always required; which other keys a
/// kind takes is [`SensorKind::keys`], and a key of another kind is a config error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    pub kind: SensorKind,
    /// Names the sensor for `sample-now` and, for tcp/http/command/file (where it is required),
    /// its reading keys. Defaults: the kind; `proc.<process>`; `service.<unit>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How often to sample, e.g. `"10s"`; at least one second. Default per kind.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Threshold on the sensor's main value at which it turns `warn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<f64>,
    /// Threshold on the sensor's main value at which it turns `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<f64>,
    /// Thresholds count downwards (the value is bad when it falls below them). Default: true for
    /// `metric = "free"`, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<bool>,
    /// Which reading the thresholds apply to (memory, disk, file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,

    /// cpu: also report every core (`cpu.core0`, ...). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_core: Option<bool>,
    /// disk: mount points to watch (a missing one is an error). Default: every real filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<String>>,
    /// diskio: devices as named in /proc/diskstats (`sda`, `nvme0n1`). Default: every whole disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// network: interfaces to watch. Default: every interface that has seen traffic, but loopback
    /// and virtual ones (veth*, docker*, br-*, virbr*); name those here to watch them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,

    /// process: the process name to count (as `ps -e` shows it; `.exe` optional on Windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// process: fewer running processes than this is an error. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<u32>,

    /// service: the systemd unit (`ssh.service`) or Windows service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,

    /// tcp: host name or address to connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// tcp: port to connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// tcp, http, command, service: give up after this long. Default 10s.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,

    /// http: the URL to GET (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// http: status codes that count as healthy. Default: any below 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<Vec<u16>>,
    /// http: text that must appear in the first MiB of the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_text: Option<String>,
    /// http: PEM file of the authority to trust instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// http: user for basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// http: password for basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// http: certificate days left at which the check warns. Default 14.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_warn_days: Option<f64>,
    /// http: certificate days left at which the check is an error. Default 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_error_days: Option<f64>,

    /// command: a Nagios-compatible plugin command line (string: shell; list: direct).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandLine>,

    /// file: the file whose age and size to watch; absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,

    /// eventlog: the classic event logs to read (`System`, `Application`, …). Default both of those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<String>>,
    /// eventlog: only events of these sources (as Event Viewer's "Source" column names them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
    /// eventlog: the event types to report. Default `["error", "warning"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<Vec<EventLevel>>,
    /// eventlog: how many of the newest event texts a reading carries. Default 3, at most 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<u32>,

    /// perfcounter: the counter path, e.g. `\Processor(_Total)\% Processor Time` (English names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<String>,
}

/// Default timeout of checks that wait on something outside this process.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CERT_WARN_DAYS: f64 = 14.0;
pub const DEFAULT_CERT_ERROR_DAYS: f64 = 7.0;

impl SensorConfig {
    /// A table of `kind` with every optional key unset.
    pub fn new(kind: SensorKind) -> Self {
        SensorConfig {
            kind,
            name: None,
            interval: None,
            warn: None,
            error: None,
            below: None,
            metric: None,
            per_core: None,
            mounts: None,
            devices: None,
            interfaces: None,
            process: None,
            min_count: None,
            unit: None,
            host: None,
            port: None,
            timeout: None,
            url: None,
            expect_status: None,
            expect_text: None,
            ca_file: None,
            username: None,
            password: None,
            cert_warn_days: None,
            cert_error_days: None,
            command: None,
            path: None,
            logs: None,
            sources: None,
            levels: None,
            max_messages: None,
            counter: None,
        }
    }

    /// The name `trigger()` knows this sensor by: `name` for machine-wide kinds (default: the
    /// kind), `<prefix>.<name>` for targeted ones (`tcp.db`, `proc.nginx`, `service.ssh.service`).
    pub fn id(&self) -> String {
        match self.kind {
            SensorKind::Process => {
                format!("proc.{}", self.name.as_deref().or(self.process.as_deref()).unwrap_or(""))
            }
            SensorKind::Service => {
                format!("service.{}", self.name.as_deref().or(self.unit.as_deref()).unwrap_or(""))
            }
            k if k.needs_name() => format!("{}.{}", k.key_prefix(), self.name.as_deref().unwrap_or("")),
            k => self.name.clone().unwrap_or_else(|| k.as_str().to_string()),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or_else(|| self.kind.default_interval())
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The reading thresholds apply to.
    pub fn metric(&self) -> Option<Metric> {
        self.metric.or_else(|| self.kind.metrics().first().copied())
    }

    /// The thresholds on the main value, with the kind's defaults when neither is set.
    pub fn thresholds(&self) -> Thresholds {
        let metric = self.metric();
        let below = self.below.unwrap_or(metric == Some(Metric::Free));
        // The kind's defaults are upward limits; with `below` set only the user's own apply.
        if self.warn.is_some() || self.error.is_some() || below {
            return Thresholds { warn: self.warn, error: self.error, below };
        }
        let (warn, error) = match (self.kind, metric) {
            (SensorKind::Cpu, _) => (Some(90.0), Some(98.0)),
            (SensorKind::Memory, Some(Metric::UsedPct)) => (Some(90.0), Some(95.0)),
            (SensorKind::Disk, Some(Metric::UsedPct)) => (Some(80.0), Some(90.0)),
            _ => (None, None),
        };
        Thresholds { warn, error, below }
    }

    /// Downward thresholds on certificate days left (http).
    pub fn cert_thresholds(&self) -> Thresholds {
        Thresholds {
            warn: Some(self.cert_warn_days.unwrap_or(DEFAULT_CERT_WARN_DAYS)),
            error: Some(self.cert_error_days.unwrap_or(DEFAULT_CERT_ERROR_DAYS)),
            below: true,
        }
    }

    /// Unit of the main value, for checking and printing thresholds.
    fn main_unit(&self) -> Unit {
        match (self.kind, self.metric()) {
            (_, Some(m)) => m.unit(),
            (SensorKind::Cpu, _) => Unit::Percent,
            (SensorKind::Diskio | SensorKind::Network, _) => Unit::BytesPerSec,
            (SensorKind::Process, _) => Unit::Bytes,
            (SensorKind::Tcp | SensorKind::Http, _) => Unit::Millis,
            _ => Unit::None,
        }
    }

    /// Names of the optional keys this table sets.
    fn present_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut add = |set: bool, key: &'static str| {
            if set {
                keys.push(key);
            }
        };
        add(self.warn.is_some(), "warn");
        add(self.error.is_some(), "error");
        add(self.below.is_some(), "below");
        add(self.metric.is_some(), "metric");
        add(self.per_core.is_some(), "per_core");
        add(self.mounts.is_some(), "mounts");
        add(self.devices.is_some(), "devices");
        add(self.interfaces.is_some(), "interfaces");
        add(self.process.is_some(), "process");
        add(self.min_count.is_some(), "min_count");
        add(self.unit.is_some(), "unit");
        add(self.host.is_some(), "host");
        add(self.port.is_some(), "port");
        add(self.timeout.is_some(), "timeout");
        add(self.url.is_some(), "url");
        add(self.expect_status.is_some(), "expect_status");
        add(self.expect_text.is_some(), "expect_text");
        add(self.ca_file.is_some(), "ca_file");
        add(self.username.is_some(), "username");
        add(self.password.is_some(), "password");
        add(self.cert_warn_days.is_some(), "cert_warn_days");
        add(self.cert_error_days.is_some(), "cert_error_days");
        add(self.command.is_some(), "command");
        add(self.path.is_some(), "path");
        add(self.logs.is_some(), "logs");
        add(self.sources.is_some(), "sources");
        add(self.levels.is_some(), "levels");
        add(self.max_messages.is_some(), "max_messages");
        add(self.counter.is_some(), "counter");
        keys
    }
}

/// What a hub samples when its config has no `[[sensor]]`: this machine only, nothing remote.
pub fn default_sensors() -> Vec<SensorConfig> {
    [
        SensorKind::Cpu,
        SensorKind::Memory,
        SensorKind::Disk,
        SensorKind::Diskio,
        SensorKind::Network,
        SensorKind::Load,
    ]
    .into_iter()
    .map(SensorConfig::new)
    .collect()
}

/// Checks what serde cannot; every problem is keyed `sensor[i].<key>`.
pub fn validate_sensors(sensors: &[SensorConfig], problems: &mut Vec<Problem>) {
    validate_sensors_for(sensors, problems, Files::Here)
}

/// Whether the files a sensor names (an http check's `ca_file`) can be looked at where the
/// validation runs: on the hub they must exist; the cloud that manages a hub's sensors cannot
/// see the hub's disk, and the hub checks them when the document arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    Here,
    Elsewhere,
}

/// [`validate_sensors`], with the files the sensors name checked only when they are `Here`.
pub fn validate_sensors_for(sensors: &[SensorConfig], problems: &mut Vec<Problem>, files: Files) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, s) in sensors.iter().enumerate() {
        let at = |key: &str| format!("sensor[{i}].{key}");
        let mut problem = |key: &str, message: String| problems.push(Problem::new(at(key), message));
        let kind = s.kind;

        for key in s.present_keys() {
            if !kind.keys().contains(&key) {
                let owners: Vec<&str> =
                    SensorKind::ALL.iter().filter(|k| k.keys().contains(&key)).map(|k| k.as_str()).collect();
                problem(
                    key,
                    format!("`{key}` does not apply to kind `{kind}`; it is a key of: {}", owners.join(", ")),
                );
            }
        }

        match &s.name {
            Some(name) if !valid_name(name) => problem(
                "name",
                format!(
                    "`{name}` is not a usable name: use letters, digits, `-` and `_` (no dots or spaces)"
                ),
            ),
            None if kind.needs_name() => {
                problem("name", format!("a `{kind}` sensor needs a `name`; it names its readings"))
            }
            _ => {}
        }

        let interval = s.interval();
        // 100 ms lets a test or a fast process loop sample quickly; below that the sampling
        // itself would dominate the machine.
        if interval < Duration::from_millis(100) {
            problem(
                "interval",
                format!("{} is too short; the minimum is 100ms", humantime::format_duration(interval)),
            );
        }
        if let Some(t) = s.timeout {
            if t.is_zero() {
                problem("timeout", "must be more than zero".into());
            }
        }

        // Thresholds.
        if let Some(m) = s.metric {
            // Kinds without metrics already got "does not apply" above.
            if !kind.metrics().is_empty() && !kind.metrics().contains(&m) {
                let allowed: Vec<&str> = kind.metrics().iter().map(|m| m.as_str()).collect();
                problem(
                    "metric",
                    format!(
                        "`{}` is not a metric of kind `{kind}`; use one of: {}",
                        m.as_str(),
                        allowed.join(", ")
                    ),
                );
            }
        }
        let unit = s.main_unit();
        for (key, v) in [("warn", s.warn), ("error", s.error)] {
            let Some(v) = v else { continue };
            if !v.is_finite() {
                problem(key, "must be a finite number".into());
            } else if unit == Unit::Percent && !(0.0..=100.0).contains(&v) {
                problem(key, format!("{v} is not a percentage; use a number from 0 to 100"));
            } else if v < 0.0 {
                problem(key, format!("{v} is negative; this value never is"));
            }
        }
        let th = s.thresholds();
        if let (Some(w), Some(e)) = (th.warn, th.error) {
            if th.below && w < e {
                problem("warn", format!("warn ({w}) must not be below error ({e}) when thresholds count downwards (`below = true`)"));
            } else if !th.below && w > e {
                problem("warn", format!("warn ({w}) must not be above error ({e})"));
            }
        }

        // Keys each kind needs, and their values.
        let mut require = |set: bool, key: &str, what: &str| {
            if !set {
                problems.push(Problem::new(at(key), format!("a `{kind}` sensor needs `{key}` ({what})")));
            }
        };
        match kind {
            SensorKind::Process => require(s.process.is_some(), "process", "the process name to count"),
            SensorKind::Service => require(s.unit.is_some(), "unit", "the systemd unit or Windows service"),
            SensorKind::Tcp => {
                require(s.host.is_some(), "host", "the host to connect to");
                require(s.port.is_some(), "port", "the port to connect to");
            }
            SensorKind::Http => require(s.url.is_some(), "url", "the URL to check"),
            SensorKind::Command => require(s.command.is_some(), "command", "the plugin command line"),
            SensorKind::File => require(s.path.is_some(), "path", "the file to watch"),
            SensorKind::Perfcounter => require(
                s.counter.is_some(),
                "counter",
                r"the counter path, e.g. \Processor(_Total)\% Processor Time",
            ),
            _ => {}
        }
        let mut problem = |key: &str, message: String| problems.push(Problem::new(at(key), message));
        for (key, list) in [("mounts", &s.mounts), ("devices", &s.devices), ("interfaces", &s.interfaces)] {
            if let Some(list) = list {
                if list.is_empty() || list.iter().any(|x| x.trim().is_empty()) {
                    problem(
                        key,
                        "must list at least one entry and no empty ones (leave it out to watch all)".into(),
                    );
                }
            }
        }
        if s.process.as_deref().is_some_and(|p| p.trim().is_empty()) {
            problem("process", "must not be empty".into());
        }
        if let Some(unit) = &s.unit {
            if unit.trim().is_empty() || unit.starts_with('-') || unit.chars().any(char::is_whitespace) {
                problem("unit", format!("`{unit}` is not a unit or service name"));
            }
        }
        if s.host.as_deref().is_some_and(|h| h.trim().is_empty()) {
            problem("host", "must not be empty".into());
        }
        if s.port == Some(0) {
            problem("port", "port 0 cannot be connected to".into());
        }
        if let Some(url) = &s.url {
            match reqwest::Url::parse(url) {
                Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                    problem("url", format!("`{url}`: only http and https URLs can be checked"))
                }
                Ok(u) if u.host_str().is_none() => problem("url", format!("`{url}` has no host")),
                Ok(u) if s.ca_file.is_some() && u.scheme() != "https" => {
                    problem("ca_file", "a CA file only makes sense for an https URL".into())
                }
                Ok(_) => {}
                Err(e) => problem("url", format!("`{url}` is not a URL: {e}")),
            }
        }
        if let Some(codes) = &s.expect_status {
            if codes.is_empty() || codes.iter().any(|c| !(100..=599).contains(c)) {
                problem("expect_status", "list HTTP status codes from 100 to 599".into());
            }
        }
        if s.expect_text.as_deref() == Some("") {
            problem("expect_text", "must not be empty".into());
        }
        if let Some(ca) = s.ca_file.as_ref().filter(|_| files == Files::Here) {
            if !ca.is_file() {
                problem("ca_file", format!("{} does not exist or is not a file", ca.display()));
            }
        }
        if s.password.is_some() && s.username.is_none() {
            problem("password", "a password needs a `username`".into());
        }
        if kind == SensorKind::Http {
            let ct = s.cert_thresholds();
            for (key, v) in [("cert_warn_days", s.cert_warn_days), ("cert_error_days", s.cert_error_days)] {
                if v.is_some_and(|v| !v.is_finite()) {
                    problem(key, "must be a finite number".into());
                }
            }
            if let (Some(w), Some(e)) = (ct.warn, ct.error) {
                if w < e {
                    problem(
                        "cert_warn_days",
                        format!("cert_warn_days ({w}) must not be below cert_error_days ({e})"),
                    );
                }
            }
        }
        if s.command.as_ref().is_some_and(CommandLine::is_empty) {
            problem("command", "must not be empty".into());
        }
        if let Some(path) = &s.path {
            if !path.is_absolute() {
                problem("path", format!("{} is relative; give an absolute path", path.display()));
            }
        }

        validate_eventlog(s, &mut problem);
        if let Some(counter) = &s.counter {
            if let Err(why) = check_counter_path(counter) {
                problem("counter", why);
            }
        }

        let id = s.id();
        if let Some(first) = seen.get(&id) {
            problem(
                "name",
                format!("sensor `{id}` is already defined by sensor[{first}]; give one a different `name`"),
            );
        } else {
            seen.insert(id, i);
        }
    }
}

/// The `eventlog` keys: log and source names end up in Win32 calls and reading keys.
fn validate_eventlog(s: &SensorConfig, problem: &mut impl FnMut(&str, String)) {
    if let Some(logs) = &s.logs {
        if logs.is_empty() {
            problem(
                "logs",
                "must list at least one log, e.g. [\"System\"] (leave it out for System and Application)"
                    .into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for log in logs {
            // A log name becomes part of a reading key (dots separate its parts) and is looked up
            // in the registry (backslashes separate keys there).
            if log.trim().is_empty()
                || log.trim() != log
                || log.len() > 256
                || log.chars().any(|c| c.is_control() || matches!(c, '\\' | '/' | '.'))
            {
                problem(
                    "logs",
                    format!("`{log}` is not a classic event log name (such as System, Application, Security): no dots, slashes or surrounding spaces"),
                );
            } else if !seen.insert(log.to_ascii_lowercase()) {
                problem("logs", format!("`{log}` is listed twice"));
            }
        }
    }
    if let Some(sources) = &s.sources {
        if sources.is_empty() || sources.iter().any(|x| x.trim().is_empty() || x.len() > 256) {
            problem(
                "sources",
                "list event source names (at most 256 characters each), or leave it out to take every source"
                    .into(),
            );
        }
    }
    if let Some(levels) = &s.levels {
        if levels.is_empty() {
            problem(
                "levels",
                "must list at least one of: error, warning, information, audit_failure, audit_success".into(),
            );
        }
    }
    if let Some(m) = s.max_messages {
        if !(1..=MAX_MAX_MESSAGES).contains(&m) {
            problem("max_messages", format!("{m} is out of range; use 1 to {MAX_MAX_MESSAGES}"));
        }
    }
}

/// A PDH counter path as `PdhAddEnglishCounterW` takes it: `\Object\Counter` or
/// `\Object(Instance)\Counter`, one counter (no wildcard: a sensor reports one value).
pub fn check_counter_path(path: &str) -> Result<(), String> {
    let example = r"e.g. \Processor(_Total)\% Processor Time";
    if path.len() > 1024 || path.chars().any(char::is_control) {
        return Err("is not a counter path: too long or has control characters".into());
    }
    let Some(rest) = path.strip_prefix('\\') else {
        return Err(format!("`{path}` is not a counter path: it starts with a backslash, {example}"));
    };
    if rest.starts_with('\\') {
        return Err(format!(
            "`{path}`: counters of other machines (\\\\host\\…) are not read; give the local path, {example}"
        ));
    }
    match rest.rsplit_once('\\') {
        Some((object, counter)) if !object.trim().is_empty() && !counter.trim().is_empty() => {}
        _ => {
            return Err(format!(
                "`{path}` is not a counter path: it needs an object and a counter, {example}"
            ))
        }
    }
    if path.contains('*') || path.contains('?') {
        return Err(format!(
            "`{path}` has a wildcard; a sensor reads one counter: name the instance, {example}"
        ));
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '_')
}
