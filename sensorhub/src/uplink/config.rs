use outpost_shared::config::Problem;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[uplink]`: where readings go and how hard to push.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Base URL of the cloud, e.g. `https://cloud.example.net`: the direct path.
    pub cloud: Option<String>,
    /// A connector to use first, e.g. `https://192.168.1.10:8444`; otherwise the remembered one,
    /// then whatever SSDP finds.
    pub connector: Option<String>,
    /// Search the LAN for connectors by SSDP (UDP 1900 multicast).
    pub discover: bool,
    /// Announce this hub by SSDP so connectors can list it while it is not attached.
    pub advertise: bool,
    /// How long one SSDP search listens for answers.
    #[serde(with = "humantime_serde")]
    pub discover_wait: Duration,
    /// Go to the cloud directly when no connector answers for `fallback_after`.
    pub allow_direct: bool,
    #[serde(with = "humantime_serde")]
    pub fallback_after: Duration,
    /// While on the direct path, look for a connector this often and switch back when one answers.
    #[serde(with = "humantime_serde")]
    pub reprobe_every: Duration,
    /// While sending through a connector, ask the cloud this often whether it still authorises
    /// that connector; a revoked one is left at once.
    #[serde(with = "humantime_serde")]
    pub recheck_every: Duration,
    /// CA certificate that signed the cloud's certificate; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// One-time enrollment token for the first start (from the dashboard); otherwise the file
    /// `enroll-token` in the data directory, which the installer writes. Not needed once enrolled.
    pub enroll_token: Option<String>,
    /// Most readings in one upload.
    pub batch_max: usize,
    /// Most of those that may be live readings; the rest of the batch drains the backlog.
    pub live_max: usize,
    /// After new readings arrive, wait this long for more before sending (fewer, fuller batches).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retry delays while the cloud is unreachable: jittered, doubling from min to max.
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            cloud: None,
            connector: None,
            discover: true,
            advertise: true,
            discover_wait: Duration::from_secs(1),
            allow_direct: true,
            fallback_after: Duration::from_secs(60),
            reprobe_every: Duration::from_secs(300),
            recheck_every: Duration::from_secs(600),
            ca_file: None,
            enroll_token: None,
            batch_max: 5000,
            live_max: 1000,
            linger: Duration::from_millis(250),
            timeout: Duration::from_secs(30),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

impl UplinkConfig {
    pub fn validate(&self, problems: &mut Vec<Problem>) {
        if let Some(url) = &self.cloud {
            if !url.starts_with("https://") {
                problems.push(Problem::new(
                    "uplink.cloud",
                    "must be an https:// URL: readings never travel in the clear",
                ));
            }
        }
        if let Some(url) = &self.connector {
            if !url.starts_with("https://") {
                problems.push(Problem::new("uplink.connector", "must be an https:// URL"));
            }
        }
        if self.discover_wait < Duration::from_millis(100) || self.discover_wait > Duration::from_secs(10) {
            problems.push(Problem::new("uplink.discover_wait", "must be between 100ms and 10s"));
        }
        if self.reprobe_every < Duration::from_secs(1) {
            problems.push(Problem::new("uplink.reprobe_every", "must be at least 1s"));
        }
        if self.recheck_every < Duration::from_secs(1) {
            problems.push(Problem::new("uplink.recheck_every", "must be at least 1s"));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.exists() {
                problems
                    .push(Problem::new("uplink.ca_file", format!("file {} does not exist", ca.display())));
            }
        }
        if let Some(t) = &self.enroll_token {
            // Format only: once enrolled, an expired token in the file does no harm.
            if let Err(e) =
                outpost_shared::keys::EnrollmentToken::parse_at(t, chrono::DateTime::<chrono::Utc>::MIN_UTC)
            {
                problems.push(Problem::new("uplink.enroll_token", e.to_string()));
            }
        }
        if self.batch_max == 0 || self.batch_max > 50_000 {
            problems.push(Problem::new("uplink.batch_max", "must be between 1 and 50000"));
        }
        if self.live_max == 0 || self.live_max > self.batch_max {
            problems.push(Problem::new("uplink.live_max", "must be between 1 and batch_max"));
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            problems.push(Problem::new(
                "uplink.retry_max",
                "retry_min must be above 0 and retry_max not below it",
            ));
        }
        if self.timeout < Duration::from_secs(1) {
            problems.push(Problem::new("uplink.timeout", "must be at least 1s"));
        }
    }
}
