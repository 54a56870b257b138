//! `[mail]`: the SMTP server, how the link is secured, who gets which alert, and the alert timing.
//! A role embeds [`MailConfig`] as `mail: Option<MailConfig>`; without the table no mail is sent.

use crate::config::{Problem, Validate};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Implicit TLS from the first byte (RFC 8314 "submissions").
pub const SMTPS_PORT: u16 = 465;

/// How the link to the mail server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain connect, then STARTTLS; a server that does not offer it gets no mail and no password.
    Starttls,
    /// TLS from the first byte (port 465).
    Smtps,
    /// No encryption at all, password included: only when written explicitly, for a relay on the
    /// same host or a trusted segment.
    None,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Starttls => "starttls",
            TlsMode::Smtps => "smtps",
            TlsMode::None => "none",
        }
    }
}

/// Mail settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    /// Host name of the mail server; also the name its certificate must carry.
    pub server: String,
    /// 587 (submission with STARTTLS) unless set; 465 means implicit TLS.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Left out: `smtps` on port 465, `starttls` on any other port. `none` is never a default.
    #[serde(default)]
    pub tls: Option<TlsMode>,
    /// PEM file of the authority that signed the server's certificate; without it the system's
    /// trust store is used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Login for AUTH PLAIN/LOGIN; no login means the server takes mail without AUTH.
    #[serde(default)]
    pub username: Option<String>,
    /// The password, in clear or sealed to this machine's key (`sealed:v1:...`, see
    /// `outpost_shared::keys::seal`); never logged.
    #[serde(default)]
    pub password: Option<String>,
    /// Sender address, e.g. `Outpost <outpost@example.org>`.
    pub from: String,
    /// Limit for one SMTP conversation (connect, TLS, AUTH, DATA).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Recipients of alerts no route claims, and of reports.
    #[serde(default)]
    pub to: Vec<String>,
    /// Alerts for some machines or sensors go to other people; see [`Route`].
    #[serde(default)]
    pub route: Vec<Route>,
    #[serde(default)]
    pub alerts: AlertTiming,
    /// Time of day (UTC, `HH:MM`) the status reports to `mail.to` are anchored at; `"off"` for
    /// none. Only the cloud sends reports.
    #[serde(default = "default_report_at")]
    pub report_at: String,
    /// How often the report goes out (one per network), counted from `report_at`: `1d` is daily
    /// at that time, `1h` hourly at its minute, `7d` weekly (on Thursdays: periods are counted from
    /// 1970-01-01, a Thursday). Each report covers the period that just ended.
    #[serde(default = "default_report_every", with = "humantime_serde")]
    pub report_every: Duration,
    /// Report recipients per network (`[mail.report_to]`, `plant-7 = ["ops@plant7.example"]`);
    /// a network not named here sends its report to `mail.to`.
    #[serde(default)]
    pub report_to: std::collections::BTreeMap<String, Vec<String>>,
}

impl std::fmt::Debug for MailConfig {
    // Hand-written so the password, sealed or not, never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailConfig")
            .field("server", &self.server)
            .field("port", &self.port)
            .field("tls", &self.tls_mode())
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .field("to", &self.to)
            .field("route", &self.route)
            .field("alerts", &self.alerts)
            .field("report_at", &self.report_at)
            .field("report_every", &self.report_every)
            .field("report_to", &self.report_to)
            .finish()
    }
}

/// Where alerts about some machines or sensors go. An alert matching one or more routes goes to
/// the union of their `to` lists *instead of* the default `mail.to`; an alert matching none goes to
/// `mail.to`. Patterns are globs (`*` any run of characters, `?` one character), matched against
/// the machine id or the host name, and against the sensor key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Empty: every machine.
    #[serde(default)]
    pub machines: Vec<String>,
    /// Empty: every sensor.
    #[serde(default)]
    pub sensors: Vec<String>,
    pub to: Vec<String>,
}

/// When alerts are sent; see `mail::alerts` for the exact rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertTiming {
    /// Changes arriving within this time of the first one go out in one mail.
    #[serde(with = "humantime_serde")]
    pub group_window: Duration,
    /// After a sensor was mailed about, its further changes wait this long and are then summed
    /// up in one alert (only if its state is then different from the one last mailed).
    #[serde(with = "humantime_serde")]
    pub quiet_period: Duration,
    /// Readings older than this when they arrive (a replayed backlog) raise no alert.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// A sensor still in warn or error this long after its last mail is mailed about again,
    /// unless acknowledged or in maintenance. `0s` turns reminders off.
    #[serde(with = "humantime_serde")]
    pub remind_every: Duration,
}

impl Default for AlertTiming {
    fn default() -> Self {
        AlertTiming {
            group_window: Duration::from_secs(30),
            quiet_period: Duration::from_secs(600),
            max_age: Duration::from_secs(600),
            remind_every: Duration::from_secs(4 * 3600),
        }
    }
}

fn default_port() -> u16 {
    587
}

fn default_report_at() -> String {
    "07:00".into()
}

fn default_report_every() -> Duration {
    Duration::from_secs(86400)
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl MailConfig {
    /// A minimal config (tests and callers that build one in code).
    pub fn new(server: impl Into<String>, port: u16, from: impl Into<String>) -> MailConfig {
        MailConfig {
            server: server.into(),
            port,
            tls: None,
            ca_file: None,
            username: None,
            password: None,
            from: from.into(),
            timeout: default_timeout(),
            to: Vec::new(),
            route: Vec::new(),
            alerts: AlertTiming::default(),
            report_at: default_report_at(),
            report_every: default_report_every(),
            report_to: Default::default(),
        }
    }

    /// Who gets the status report of `network`.
    pub fn report_recipients(&self, network: &str) -> Vec<String> {
        self.report_to.get(network).cloned().unwrap_or_else(|| self.to.clone())
    }

    /// The time of day reports are anchored at (UTC), or `None` when `report_at = "off"` (or
    /// malformed, which validation reports).
    pub fn daily_report_at(&self) -> Option<chrono::NaiveTime> {
        chrono::NaiveTime::parse_from_str(self.report_at.trim(), "%H:%M").ok()
    }

    /// The mode in force: the configured one, else derived from the port.
    pub fn tls_mode(&self) -> TlsMode {
        self.tls.unwrap_or(if self.port == SMTPS_PORT { TlsMode::Smtps } else { TlsMode::Starttls })
    }

    /// Checks every field; keys are reported under `prefix` (normally `mail`).
    pub fn check(&self, prefix: &str, problems: &mut Vec<Problem>) {
        let key = |k: &str| format!("{prefix}.{k}");
        if self.server.trim().is_empty() || self.server.contains(char::is_whitespace) {
            problems.push(Problem::new(key("server"), "must be the mail server's host name"));
        }
        if self.port == 0 {
            problems.push(Problem::new(key("port"), "must be between 1 and 65535"));
        }
        // Implicit TLS on another port is fine when written out; STARTTLS on 465 cannot work.
        if self.tls == Some(TlsMode::Starttls) && self.port == SMTPS_PORT {
            problems.push(Problem::new(
                key("tls"),
                "port 465 speaks TLS from the first byte; use tls = \"smtps\" or another port",
            ));
        }
        if self.tls_mode() == TlsMode::None && self.ca_file.is_some() {
            problems.push(Problem::new(key("ca_file"), "has no use with tls = \"none\""));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                problems
                    .push(Problem::new(key("ca_file"), format!("{} is not a readable file", ca.display())));
            }
        }
        match (&self.username, &self.password) {
            (Some(_), None) => problems.push(Problem::new(key("password"), "is needed with `username`")),
            (None, Some(_)) => problems.push(Problem::new(key("username"), "is needed with `password`")),
            _ => {}
        }
        if let Err(e) = self.from.parse::<lettre::message::Mailbox>() {
            problems.push(Problem::new(key("from"), format!("not a mail address: {e}")));
        }
        if self.timeout < Duration::from_secs(1) {
            problems.push(Problem::new(key("timeout"), "must be at least 1s"));
        }
        check_addresses(&self.to, &key("to"), problems);
        if self.to.is_empty() && self.route.is_empty() {
            problems.push(Problem::new(key("to"), "give at least one recipient (or a [[mail.route]])"));
        }
        for (i, r) in self.route.iter().enumerate() {
            let rk = key(&format!("route[{i}]"));
            if r.to.is_empty() {
                problems.push(Problem::new(format!("{rk}.to"), "give at least one recipient"));
            }
            check_addresses(&r.to, &format!("{rk}.to"), problems);
            for (field, list) in [("machines", &r.machines), ("sensors", &r.sensors)] {
                if list.iter().any(|p| p.trim().is_empty()) {
                    problems.push(Problem::new(format!("{rk}.{field}"), "patterns must not be empty"));
                }
            }
        }
        if self.report_at.trim() != "off" && self.daily_report_at().is_none() {
            problems.push(Problem::new(key("report_at"), "must be a UTC time of day as HH:MM, or \"off\""));
        }
        if self.report_at.trim() != "off" && self.to.is_empty() && !self.route.is_empty() {
            problems.push(Problem::new(
                key("to"),
                "the status report goes to mail.to: give a recipient or set report_at = \"off\"",
            ));
        }
        for (network, to) in &self.report_to {
            let rk = key(&format!("report_to.{network}"));
            if to.is_empty() {
                problems
                    .push(Problem::new(rk.clone(), "give at least one recipient (or leave the network out)"));
            }
            check_addresses(to, &rk, problems);
        }
        if self.report_every < Duration::from_secs(1) || self.report_every > Duration::from_secs(366 * 86400)
        {
            problems.push(Problem::new(key("report_every"), "must be between 1s and 366days"));
        }
        let a = &self.alerts;
        if a.group_window > Duration::from_secs(3600) {
            problems.push(Problem::new(key("alerts.group_window"), "must be at most 1h"));
        }
        if a.max_age < Duration::from_secs(10) {
            problems.push(Problem::new(key("alerts.max_age"), "must be at least 10s"));
        }
    }
}

fn check_addresses(list: &[String], key: &str, problems: &mut Vec<Problem>) {
    for a in list {
        if let Err(e) = check_address(a) {
            problems.push(Problem::new(key, format!("`{a}` is not a mail address: {e}")));
        }
    }
}

/// Whether `a` is a mail address (`name <local@domain>` or `local@domain`); the reason if not.
pub fn check_address(a: &str) -> Result<(), String> {
    a.parse::<lettre::message::Mailbox>().map(|_| ()).map_err(|e| e.to_string())
}

impl Validate for MailConfig {
    fn validate(&self, problems: &mut Vec<Problem>) {
        self.check("mail", problems);
    }
}
