//! The limits every Outpost listener puts in front of its routes, as config (`[server]`).

use crate::config::Problem;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Timeouts and caps of one HTTPS listener. Each exists so that a client that is slow, silent or
/// hostile holds a bounded share of the server: a descriptor, a task and some memory for a bounded
/// time, never the server itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// A client must finish its TLS handshake within this time.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// A client must send a request's complete headers within this time, counted from when the
    /// connection is ready for its next request: a slowloris, or an idle keep-alive connection, is
    /// closed after it.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A request body must arrive completely within this time once the handler starts reading it.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A request must be answered within this time (408 otherwise). Longer than the longest
    /// command long-poll (30 s); live-event streams are not cut, as their answer starts at once.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Open connections at most; one more is closed at once (before its TLS handshake). The
    /// process' descriptor limit is raised to fit.
    pub max_connections: usize,
    /// Requests being handled at once at most; beyond it the server answers 503 + Retry-After at
    /// once (load shedding) instead of queueing without bound.
    pub max_requests: usize,
    /// Requests one source address may make to the unauthenticated routes (health, public key,
    /// dashboard page) per second, with bursts up to `per_source_burst`. Generous: many machines
    /// behind one NAT share an address.
    pub per_source_per_second: u32,
    pub per_source_burst: u32,
    /// Enrollment requests one source address may make per minute (each costs the server an RSA
    /// private-key operation), with bursts up to `enroll_burst`.
    pub enroll_per_minute: u32,
    pub enroll_burst: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_connections: 8192,
            max_requests: 1024,
            per_source_per_second: 50,
            per_source_burst: 200,
            enroll_per_minute: 60,
            enroll_burst: 30,
        }
    }
}

impl ServerLimits {
    /// The per-source limiters every listener puts in front of enrollment (each costs the cloud an
    /// RSA private-key operation and a database write) and of the routes that need no credentials,
    /// named `enroll` and `public` in the log.
    pub fn source_limits(
        &self,
        enroll: &'static str,
        public: &'static str,
    ) -> (super::PerSource, super::PerSource) {
        (
            super::PerSource::new(enroll, f64::from(self.enroll_per_minute) / 60.0, self.enroll_burst),
            super::PerSource::new(public, f64::from(self.per_source_per_second), self.per_source_burst),
        )
    }

    /// Collects what is wrong, with keys prefixed by `section` (e.g. `server`).
    pub fn check(&self, section: &str, problems: &mut Vec<Problem>) {
        let key = |k: &str| format!("{section}.{k}");
        for (k, v) in [
            ("tls_handshake_timeout", self.tls_handshake_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if v < Duration::from_millis(100) || v > Duration::from_secs(600) {
                problems.push(Problem::new(key(k), "must be between 100ms and 10m"));
            }
        }
        if self.request_timeout < Duration::from_secs(35) {
            problems.push(Problem::new(
                key("request_timeout"),
                "must be at least 35s: command long-polls wait up to 30s",
            ));
        }
        if !(16..=1_000_000).contains(&self.max_connections) {
            problems.push(Problem::new(key("max_connections"), "must be between 16 and 1000000"));
        }
        if self.max_requests == 0 || self.max_requests > self.max_connections * 8 {
            problems
                .push(Problem::new(key("max_requests"), "must be above 0 and at most 8 × max_connections"));
        }
        for (k, v) in [
            ("per_source_per_second", self.per_source_per_second),
            ("per_source_burst", self.per_source_burst),
            ("enroll_per_minute", self.enroll_per_minute),
            ("enroll_burst", self.enroll_burst),
        ] {
            if v == 0 {
                problems.push(Problem::new(key(k), "must be above 0"));
            }
        }
    }
}
