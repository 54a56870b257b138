//! The connector's configuration (`connector.toml`). Parsed, then validated, then built.

use outpost_sensorhub::sensors::SensorConfig;
use outpost_shared::config::{Problem, Validate};
use outpost_shared::ssdp::ResponderConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The embedded default configuration, printed by `outpost config default --role connector`.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectorConfig {
    /// Buffer, certificate and identity live here.
    pub data_dir: PathBuf,
    /// The LAN API (HTTPS) hubs send to.
    pub listen: SocketAddr,
    /// The URL hubs are told (SSDP LOCATION); by default `https://<first LAN address>:<port>`.
    pub advertise_url: Option<String>,
    /// Names and addresses for the self-signed LAN certificate; the LAN addresses are added.
    pub names: Vec<String>,
    pub cloud: CloudLink,
    pub buffer: BufferConfig,
    /// `[ingest]`: which hub batches the connector takes.
    pub ingest: IngestConfig,
    pub ssdp: SsdpConfig,
    /// Sensors of the connector's own machine (its embedded hub); the defaults when empty.
    #[serde(rename = "sensor")]
    pub sensors: Vec<SensorConfig>,
    /// Run the embedded hub that monitors this machine.
    pub monitor_self: bool,
    /// `[managed]`: what the cloud may change of the embedded hub's sensors (as in a hub's own
    /// config: `enabled`, `protected`, `allow_commands`).
    pub managed: outpost_sensorhub::managed::ManagedConfig,
    /// The LAN mail server and who gets alerts (`[mail]`, as in the cloud); needed for alerts
    /// during a cloud outage and for answers to mail commands.
    pub mail: Option<outpost_shared::mail::MailConfig>,
    /// `[outage_alerts]`: when the connector mails alerts itself.
    pub outage_alerts: crate::mail::config::OutageAlerts,
    /// `[mail_commands]`: commands by mail (off by default).
    pub mail_commands: crate::mail::config::MailCommands,
}

/// `[cloud]`: where the connector forwards to, over outbound HTTPS only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CloudLink {
    pub url: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// One-time enrollment token for the first start; otherwise the file `enroll-token` in the
    /// data directory (the installer writes it). Not needed once enrolled.
    pub enroll_token: Option<String>,
    /// Most readings in one forward request (many hub batches together).
    pub max_readings: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// How often the list of this network's machine keys is fetched again (hubs enrolled or
    /// revoked since).
    #[serde(with = "humantime_serde")]
    pub keys_every: Duration,
    /// A batch from a machine not on the list fetches it at once, but at most once per this
    /// long: a flood of unknown ids cannot make the connector hammer the cloud.
    #[serde(with = "humantime_serde")]
    pub keys_refresh_min: Duration,
}

/// `[ingest]`: the timestamps the connector takes, as the cloud's `[ingest]` and `[retention]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Readings stamped further ahead of this machine's clock are refused (HTTP 422, code
    /// `clock`, with the accepted window), so the hub puts them aside instead of sending them on.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Readings older than this are refused the same way: the cloud's raw retention (same
    /// default), past which it would refuse them too.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// When the buffer holds this much, hubs get 503 + Retry-After and keep their data.
    #[serde(with = "outpost_shared::config::size")]
    pub quota: u64,
    /// What a refused hub is told to wait before trying again.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Bytes kept of batches put aside for good (the cloud refused them, or they cannot be
    /// framed). When full, the oldest are dropped; the per-hub counts stay (they are reported).
    #[serde(with = "outpost_shared::config::size")]
    pub quarantine_quota: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SsdpConfig {
    /// Answer hubs' searches and announce this connector (UDP 1900 multicast on LAN interfaces).
    pub advertise: bool,
    /// Search the LAN for hubs that are not attached, and report them to the cloud.
    pub search_hubs: bool,
    #[serde(with = "humantime_serde")]
    pub search_every: Duration,
    pub responder: ResponderConfig,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            data_dir: PathBuf::from("outpost-data/connector"),
            listen: "0.0.0.0:8444".parse().expect("valid literal"),
            advertise_url: None,
            names: vec!["localhost".into(), "127.0.0.1".into()],
            cloud: CloudLink::default(),
            buffer: BufferConfig::default(),
            ingest: IngestConfig::default(),
            ssdp: SsdpConfig::default(),
            sensors: Vec::new(),
            monitor_self: true,
            managed: Default::default(),
            mail: None,
            outage_alerts: Default::default(),
            mail_commands: Default::default(),
        }
    }
}

impl Default for CloudLink {
    fn default() -> Self {
        CloudLink {
            url: None,
            ca_file: None,
            enroll_token: None,
            max_readings: 20_000,
            timeout: Duration::from_secs(30),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            keys_every: Duration::from_secs(60),
            keys_refresh_min: Duration::from_secs(5),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig { max_future: Duration::from_secs(300), max_age: Duration::from_secs(7 * 86400) }
    }
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig { quota: 1 << 30, retry_after: Duration::from_secs(10), quarantine_quota: 256 << 20 }
    }
}

impl Default for SsdpConfig {
    fn default() -> Self {
        SsdpConfig {
            advertise: true,
            search_hubs: true,
            search_every: Duration::from_secs(300),
            responder: ResponderConfig::default(),
        }
    }
}

impl Validate for ConnectorConfig {
    fn validate(&self, problems: &mut Vec<Problem>) {
        match &self.cloud.url {
            Some(u) if !u.starts_with("https://") => problems.push(Problem::new(
                "cloud.url",
                "must be an https:// URL: the connector only speaks outbound HTTPS",
            )),
            None => problems.push(Problem::new("cloud.url", "the connector needs the cloud's URL")),
            _ => {}
        }
        for (key, path) in [("cloud.ca_file", &self.cloud.ca_file)] {
            if let Some(p) = path {
                if !p.exists() {
                    problems.push(Problem::new(key, format!("file {} does not exist", p.display())));
                }
            }
        }
        if self.cloud.max_readings == 0 || self.cloud.max_readings > 50_000 {
            problems.push(Problem::new("cloud.max_readings", "must be between 1 and 50000"));
        }
        if self.cloud.retry_min.is_zero() || self.cloud.retry_max < self.cloud.retry_min {
            problems.push(Problem::new(
                "cloud.retry_max",
                "retry_min must be above 0 and retry_max not below it",
            ));
        }
        if self.cloud.keys_every < Duration::from_secs(1) {
            problems.push(Problem::new("cloud.keys_every", "must be at least 1s"));
        }
        if self.cloud.keys_refresh_min < Duration::from_millis(100) {
            problems.push(Problem::new("cloud.keys_refresh_min", "must be at least 100ms"));
        }
        if self.ingest.max_future < Duration::from_secs(1) {
            problems.push(Problem::new(
                "ingest.max_future",
                "must be at least 1s: clocks are never exactly equal",
            ));
        }
        if self.ingest.max_age < Duration::from_secs(3600) {
            problems.push(Problem::new("ingest.max_age", "must be at least 1h"));
        }
        if self.buffer.quarantine_quota < 64 << 10 {
            problems.push(Problem::new("buffer.quarantine_quota", "must be at least 64KiB"));
        }
        if self.buffer.quota < 64 << 10 {
            problems.push(Problem::new("buffer.quota", "must be at least 64KiB"));
        }
        if self.ssdp.search_every < Duration::from_secs(5) {
            problems.push(Problem::new("ssdp.search_every", "must be at least 5s"));
        }
        if let Some(u) = &self.advertise_url {
            if !u.starts_with("https://") {
                problems.push(Problem::new("advertise_url", "must be an https:// URL"));
            }
        }
        self.ssdp.responder.check("ssdp.responder", problems);
        if let Some(m) = &self.mail {
            m.check("mail", problems);
        }
        self.outage_alerts.check(problems);
        self.mail_commands.check(self.mail.is_some(), problems);
        outpost_sensorhub::sensors::validate_sensors(&self.sensors, problems);
        self.managed.validate(problems);
    }
}
