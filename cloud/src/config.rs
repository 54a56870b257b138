//! The cloud's configuration (`cloud.toml`): where it listens, where it keeps data, its
//! certificate, retention and ingest limits. Parsed, then validated, then built.

use outpost_shared::config::{Problem, Validate};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The embedded default configuration, printed by `outpost config default --role cloud`.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// Address of the HTTPS listener: API, ingest and dashboard.
    pub listen: SocketAddr,
    /// Keys, tokens, certificates and the database live here.
    pub data_dir: PathBuf,
    /// Host names and addresses the self-signed certificate is made for when no `tls` is given.
    pub names: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// Where machines reach this cloud, `https://host[:port]`: what the enrollment commands the
    /// dashboard offers name. Absent: the address the dashboard was loaded from, which is wrong
    /// when the operator's browser reaches the cloud another way (a tunnel, an inside name).
    pub public_url: Option<String>,
    pub retention: Retention,
    pub ingest: IngestLimits,
    /// Timeouts, connection and request caps, per-source rate limits of the HTTPS listener.
    pub server: outpost_shared::http_server::ServerLimits,
    /// A machine silent for this long is shown with uplink `offline`.
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// How long a machine session lives before the machine logs in again (RSA once per this).
    #[serde(with = "humantime_serde")]
    pub machine_session: Duration,
    /// Alert mails on sensor state changes (`[mail]`); none when absent.
    pub mail: Option<outpost_shared::mail::MailConfig>,
    /// Where everything but the key files is kept: the embedded database in `data_dir` unless
    /// `postgres` is set.
    pub storage: Storage,
    /// Sign-in, sessions, lockout and API tokens of people (`[people]`).
    pub people: PeopleConfig,
}

/// `[people]`: how long sessions last, when wrong passwords slow down and lock an account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PeopleConfig {
    /// A session unused this long ends.
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    /// A session ends this long after sign-in, however busy.
    #[serde(with = "humantime_serde")]
    pub session_max: Duration,
    /// Wrong passwords in a row that lock the account.
    pub lock_after: u32,
    /// How long a locked account refuses every sign-in, even with the right password.
    #[serde(with = "humantime_serde")]
    pub lock_for: Duration,
    /// Wrong passwords in a row after which each further attempt must wait.
    pub slow_after: u32,
    /// The first wait; it doubles with each further wrong password, up to 30 s.
    #[serde(with = "humantime_serde")]
    pub slow_delay: Duration,
    /// How long the one-time setup link printed at first start (no user yet) is valid.
    #[serde(with = "humantime_serde")]
    pub setup_valid: Duration,
    /// Longest validity of an API token.
    #[serde(with = "humantime_serde")]
    pub api_token_max: Duration,
    /// Owners and admins must have a TOTP second factor: until they set one up, their sessions
    /// can do nothing but set it up.
    pub require_totp_for_admins: bool,
}

impl Default for PeopleConfig {
    fn default() -> Self {
        PeopleConfig {
            session_idle: Duration::from_secs(3600),
            session_max: Duration::from_secs(12 * 3600),
            lock_after: 10,
            lock_for: Duration::from_secs(15 * 60),
            slow_after: 3,
            slow_delay: Duration::from_secs(1),
            setup_valid: Duration::from_secs(15 * 60),
            api_token_max: Duration::from_secs(366 * 86400),
            require_totp_for_admins: false,
        }
    }
}

impl PeopleConfig {
    fn check(&self, problems: &mut Vec<Problem>) {
        if self.session_idle < Duration::from_secs(60) || self.session_idle > self.session_max {
            problems.push(Problem::new("people.session_idle", "must be at least 1m and at most session_max"));
        }
        if self.session_max > Duration::from_secs(30 * 86400) {
            problems.push(Problem::new("people.session_max", "must be at most 30days"));
        }
        if self.lock_after == 0 || self.slow_after > self.lock_after {
            problems
                .push(Problem::new("people.lock_after", "must be above 0 and not below people.slow_after"));
        }
        if self.lock_for < Duration::from_secs(1) {
            problems.push(Problem::new("people.lock_for", "must be at least 1s"));
        }
        if self.setup_valid < Duration::from_secs(60) || self.setup_valid > Duration::from_secs(86400) {
            problems.push(Problem::new("people.setup_valid", "must be between 1m and 1day"));
        }
        if self.api_token_max < Duration::from_secs(3600) {
            problems.push(Problem::new("people.api_token_max", "must be at least 1h"));
        }
    }
}

/// `[storage]`: the engine behind everything the cloud keeps (see `store`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// A PostgreSQL connection URL; absent: the embedded sled database in `data_dir`.
    pub postgres: Option<crate::store::postgres::PostgresUrl>,
    /// Most connections to PostgreSQL at once.
    pub pool_size: usize,
    /// Longest wait for a PostgreSQL connection before a request is answered "retry later".
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The authority of the database server's certificate (with `sslmode=require`); the
    /// system's trust store when absent.
    pub ca_file: Option<PathBuf>,
}

impl Default for Storage {
    fn default() -> Self {
        let d = crate::store::postgres::PostgresOptions::default();
        Storage { postgres: None, pool_size: d.pool_size, timeout: d.timeout, ca_file: d.ca_file }
    }
}

impl Storage {
    pub fn postgres_options(&self) -> crate::store::postgres::PostgresOptions {
        crate::store::postgres::PostgresOptions {
            pool_size: self.pool_size,
            timeout: self.timeout,
            ca_file: self.ca_file.clone(),
        }
    }

    fn check(&self, problems: &mut Vec<Problem>) {
        if let Some(url) = &self.postgres {
            if let Err(e) = url.parse() {
                problems.push(Problem::new(
                    "storage.postgres",
                    format!(
                        "{e}; e.g. postgresql://outpost:PASSWORD@db.example:5432/outpost?sslmode=require"
                    ),
                ));
            }
        }
        if self.pool_size == 0 || self.pool_size > 1000 {
            problems.push(Problem::new("storage.pool_size", "must be between 1 and 1000"));
        }
        if self.timeout < Duration::from_millis(100) {
            problems.push(Problem::new("storage.timeout", "must be at least 100ms"));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.exists() {
                problems
                    .push(Problem::new("storage.ca_file", format!("file {} does not exist", ca.display())));
            }
        }
    }
}

/// A certificate from config, e.g. one bought or issued by the company CA.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Raw readings are kept this long, then folded into hourly min/avg/max.
    #[serde(with = "humantime_serde")]
    pub raw: Duration,
    /// Hourly aggregates are kept this long.
    #[serde(with = "humantime_serde")]
    pub hourly: Duration,
    /// How often the fold runs.
    #[serde(with = "humantime_serde")]
    pub compact_every: Duration,
    /// Finished and expired commands are kept this long, then deleted.
    #[serde(with = "humantime_serde")]
    pub commands: Duration,
    /// The audit trail is kept this long.
    #[serde(with = "humantime_serde")]
    pub audit: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestLimits {
    /// Largest request body on the wire (compressed), bytes or e.g. "8MiB".
    #[serde(with = "outpost_shared::config::size")]
    pub max_body: u64,
    /// Largest body once decompressed: the cap that defeats gzip bombs.
    #[serde(with = "outpost_shared::config::size")]
    pub max_decompressed: u64,
    /// Most readings in one batch.
    pub max_readings: usize,
    /// How far ahead of the cloud's clock a reading may be stamped. Later ones (a hub clock set
    /// to 2100) are refused with verdict `Clock`, as are readings older than `retention.raw`:
    /// stored, either would pin or skip a sensor's latest value and its alerts.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Batches and forwards being read, parsed and written at once; more get 503 + Retry-After
    /// (retry later). Worst case memory is about `max_in_flight × max_body` read plus
    /// `max_inflating × max_decompressed` being inflated. Written ones that only wait for their
    /// flush give their place back; up to four times as many may wait so, each holding the
    /// latest values its batch changed.
    pub max_in_flight: usize,
    /// Bodies being decompressed at once (CPU work, on blocking threads); more wait their turn.
    pub max_inflating: usize,
    /// Batches and forwards that may wait for a place among `max_in_flight`, their bodies not
    /// read yet (a waiting request costs a connection and at most what of its body the
    /// connection's flow-control window holds, 1 MiB on HTTP/2); beyond them the answer is 503
    /// at once. 0: refuse as soon as `max_in_flight` is reached.
    pub max_queued: usize,
    /// How long a queued request waits for its place before it gets 503 + Retry-After.
    #[serde(with = "humantime_serde")]
    pub queue_wait: Duration,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            listen: "127.0.0.1:8443".parse().expect("valid literal"),
            data_dir: PathBuf::from("outpost-data/cloud"),
            names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            tls: None,
            public_url: None,
            retention: Retention::default(),
            ingest: IngestLimits::default(),
            server: Default::default(),
            offline_after: Duration::from_secs(120),
            machine_session: outpost_shared::keys::session::DEFAULT_LIFETIME,
            mail: None,
            storage: Storage::default(),
            people: PeopleConfig::default(),
        }
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw: Duration::from_secs(7 * 86400),
            hourly: Duration::from_secs(400 * 86400),
            compact_every: Duration::from_secs(3600),
            commands: Duration::from_secs(90 * 86400),
            audit: Duration::from_secs(400 * 86400),
        }
    }
}

/// The longest `ingest.queue_wait` taken.
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(10);

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_body: 8 << 20,
            max_decompressed: 64 << 20,
            max_readings: 50_000,
            max_future: Duration::from_secs(300),
            max_in_flight: 64,
            max_inflating: 2,
            max_queued: 256,
            queue_wait: Duration::from_secs(5),
        }
    }
}

impl CloudConfig {
    /// The authority machines must trust to reach this cloud: the self-signed one made in
    /// `data_dir`, or with a certificate of one's own, that certificate's file (its chain).
    pub fn ca_file(&self) -> PathBuf {
        match &self.tls {
            Some(t) => t.cert.clone(),
            None => outpost_shared::tls::CertPaths::in_dir(&self.data_dir.join("tls")).ca,
        }
    }

    /// `public_url` without a trailing slash, as commands use it.
    pub fn public_url(&self) -> Option<&str> {
        self.public_url.as_deref().map(|u| u.trim_end_matches('/'))
    }
}

/// Why `url` cannot be the cloud's public URL, if it cannot. It is pasted into a shell on other
/// machines, so only characters a URL of a host, port and path needs are allowed: nothing a shell
/// would read as more than a word.
pub fn public_url_problem(url: &str) -> Option<String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Some("must start with https:// (machines talk to the cloud over TLS only)".into());
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Some("names no host, e.g. https://outpost.example.com".into());
    }
    if url.len() > 200 {
        return Some("is longer than 200 characters".into());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-:[]/_~".contains(c);
    if let Some(c) = rest.chars().find(|&c| !allowed(c)) {
        return Some(format!("contains `{c}`: only letters, digits and . - : [ ] / _ ~ may appear"));
    }
    None
}

impl Validate for CloudConfig {
    fn validate(&self, problems: &mut Vec<Problem>) {
        if let Some(why) = self.public_url.as_deref().and_then(public_url_problem) {
            problems.push(Problem::new("public_url", why));
        }
        if self.retention.raw < Duration::from_secs(3600) {
            problems.push(Problem::new(
                "retention.raw",
                "must be at least 1h: hourly aggregates are made from raw readings",
            ));
        }
        if self.retention.hourly < self.retention.raw {
            problems.push(Problem::new("retention.hourly", "must not be shorter than retention.raw"));
        }
        if self.retention.compact_every < Duration::from_secs(1) {
            problems.push(Problem::new("retention.compact_every", "must be at least 1s"));
        }
        if self.ingest.max_body < 1024 {
            problems.push(Problem::new("ingest.max_body", "must be at least 1KiB"));
        }
        if self.ingest.max_decompressed < self.ingest.max_body {
            problems.push(Problem::new("ingest.max_decompressed", "must not be below ingest.max_body"));
        }
        if self.ingest.max_future < Duration::from_secs(1) {
            problems.push(Problem::new(
                "ingest.max_future",
                "must be at least 1s: clocks are never exactly equal",
            ));
        }
        if self.ingest.max_readings == 0 {
            problems.push(Problem::new("ingest.max_readings", "must be above 0"));
        }
        if self.ingest.max_in_flight == 0 || self.ingest.max_in_flight > self.server.max_requests {
            problems.push(Problem::new(
                "ingest.max_in_flight",
                "must be above 0 and at most server.max_requests",
            ));
        } else if self.ingest.max_in_flight.saturating_add(self.ingest.max_queued)
            > self.server.max_requests / 2
        {
            // Admission comes before a signature is verified: whoever names an enrolled machine
            // can hold these places, and must not be able to hold the long-polls' and the
            // dashboard's as well.
            problems.push(Problem::new(
                "ingest.max_queued",
                format!(
                    "ingest.max_in_flight + ingest.max_queued ({}) must be at most half of server.max_requests \
                     ({}): lower them or raise server.max_requests",
                    self.ingest.max_in_flight.saturating_add(self.ingest.max_queued),
                    self.server.max_requests
                ),
            ));
        }
        if self.ingest.max_inflating == 0 || self.ingest.max_inflating > self.ingest.max_in_flight {
            problems.push(Problem::new(
                "ingest.max_inflating",
                "must be above 0 and at most ingest.max_in_flight",
            ));
        }
        if self.ingest.queue_wait > MAX_QUEUE_WAIT {
            problems.push(Problem::new(
                "ingest.queue_wait",
                "must be at most 10s: a sender gives up on a request after 30 s, and the wait is only \
                 the start of it",
            ));
        }
        self.server.check("server", problems);
        if self.tls.is_none() && self.names.is_empty() {
            problems.push(Problem::new(
                "names",
                "give at least one host name for the self-signed certificate, or a [tls] cert and key",
            ));
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !path.exists() {
                    problems.push(Problem::new(key, format!("file {} does not exist", path.display())));
                }
            }
        }
        if let Some(m) = &self.mail {
            m.check("mail", problems);
        }
        self.storage.check(problems);
        self.people.check(problems);
        if self.offline_after < Duration::from_secs(5) {
            problems.push(Problem::new("offline_after", "must be at least 5s"));
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(86_400)).contains(&self.machine_session) {
            problems.push(Problem::new("machine_session", "must be between 1m and 24h"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_url_that_a_shell_would_split_or_run_is_refused() {
        for good in ["https://outpost.example.com", "https://10.0.0.5:8443/", "https://[::1]:8443/outpost"] {
            assert_eq!(public_url_problem(good), None, "{good}");
        }
        for (bad, why) in [
            ("http://outpost.example.com", "https://"),
            ("https://", "no host"),
            ("https://x.example;rm -rf ~", "`;`"),
            ("https://x.example/$(id)", "`$`"),
            ("https://x.example/a b", "` `"),
            ("https://x.example/`id`", "`"),
        ] {
            let problem = public_url_problem(bad).unwrap_or_default();
            assert!(problem.contains(why), "{bad}: {problem}");
        }
        let c = CloudConfig { public_url: Some("https://o.example/".into()), ..Default::default() };
        assert_eq!(c.public_url(), Some("https://o.example"), "commands append paths to it");
    }

    #[test]
    fn the_embedded_default_parses_and_equals_the_built_in_defaults() {
        let parsed: CloudConfig =
            outpost_shared::config::parse(DEFAULT_CONFIG, std::path::Path::new("default.toml")).unwrap();
        assert_eq!(parsed, CloudConfig::default());
    }

    #[test]
    fn a_queue_wait_a_sender_would_not_outlast_is_refused() {
        let mut c = CloudConfig::default();
        let mut problems = Vec::new();
        c.validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        c.ingest.queue_wait = Duration::from_secs(30);
        c.validate(&mut problems);
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(text.iter().any(|p| p.contains("ingest.queue_wait") && p.contains("10s")), "{text:?}");
    }

    #[test]
    fn ingest_may_not_take_more_than_half_the_servers_request_places() {
        let mut c = CloudConfig::default();
        c.server.max_requests = 600;
        let mut problems = Vec::new();
        c.validate(&mut problems);
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(text.iter().any(|p| p.contains("ingest.max_queued") && p.contains("(320)")), "{text:?}");
        c.ingest.max_queued = 236;
        problems.clear();
        c.validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_bad_postgres_url_is_named_without_its_password() {
        let mut c = CloudConfig::default();
        c.storage.postgres =
            Some(crate::store::postgres::PostgresUrl::new("postgresql://u:s3cret@db/x?nonsense=1"));
        c.storage.pool_size = 0;
        let mut problems = Vec::new();
        c.validate(&mut problems);
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(text.iter().any(|p| p.contains("storage.postgres")), "{text:?}");
        assert!(text.iter().any(|p| p.contains("storage.pool_size")), "{text:?}");
        assert!(!text.iter().any(|p| p.contains("s3cret")), "{text:?}");
    }
}
