//! Reaching the database: the URL (whose password never reaches a log), the pool, TLS, and what
//! a failure means for the caller.

use crate::error::CloudError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;

/// `[storage] postgres`: a libpq-style URL (`postgresql://user:password@host:5432/outpost`,
/// `?sslmode=require`, `?host=/run/postgresql` for a unix socket) or key/value string.
/// Printed and logged with its password replaced.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    pub fn new(url: impl Into<String>) -> PostgresUrl {
        PostgresUrl(url.into())
    }

    /// The parsed connection settings, or what is wrong with the URL (never echoing it).
    pub fn parse(&self) -> Result<tokio_postgres::Config, String> {
        tokio_postgres::Config::from_str(&self.0).map_err(|e| format!("not a PostgreSQL connection URL: {e}"))
    }

    /// The URL with any password replaced, for messages.
    pub fn redacted(&self) -> String {
        let s = &self.0;
        if let Some(rest) = s.strip_prefix("postgresql://").or_else(|| s.strip_prefix("postgres://")) {
            let scheme = &s[..s.len() - rest.len()];
            // userinfo ends at the last '@' before the host part
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            if let Some(at) = rest[..authority_end].rfind('@') {
                let user = rest[..at].split(':').next().unwrap_or("");
                let masked = if rest[..at].contains(':') { format!("{user}:***") } else { user.to_string() };
                return format!("{scheme}{masked}@{}", mask_query(&rest[at + 1..]));
            }
            return format!("{scheme}{}", mask_query(rest));
        }
        // key=value form
        s.split_whitespace()
            .map(|kv| if kv.starts_with("password=") { "password=***".to_string() } else { kv.to_string() })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `password=` inside a URL's query string, masked.
fn mask_query(s: &str) -> String {
    match s.split_once('?') {
        None => s.to_string(),
        Some((head, q)) => {
            let q: Vec<String> = q
                .split('&')
                .map(|kv| if kv.starts_with("password=") { "password=***".into() } else { kv.to_string() })
                .collect();
            format!("{head}?{}", q.join("&"))
        }
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// How the pool behaves (the rest of `[storage]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresOptions {
    /// Connections open at most; more requests wait up to `timeout`.
    pub pool_size: usize,
    /// Longest wait for a connection (from the pool or a new one); then "retry later".
    pub timeout: Duration,
    /// Certificate authority of the server's certificate with `sslmode=require`; the system's
    /// trust store when absent.
    pub ca_file: Option<PathBuf>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions { pool_size: 16, timeout: Duration::from_secs(5), ca_file: None }
    }
}

/// The pool. Connections are made lazily; each is verified (a round trip) before it is handed
/// out again, so after a database restart dead ones are replaced instead of failing a request.
pub fn pool(url: &PostgresUrl, options: &PostgresOptions) -> Result<Pool, CloudError> {
    let mut config = url.parse().map_err(|e| CloudError::Config(format!("[storage] postgres: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.timeout);
    }
    let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Verified };
    let manager = match config.get_ssl_mode() {
        SslMode::Require => Manager::from_config(
            config,
            tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(options)?),
            manager_config,
        ),
        // `prefer` (libpq's default) would silently fall back to plain text: without
        // `sslmode=require` the connection is plain, as said, e.g. over a unix socket.
        _ => {
            config.ssl_mode(SslMode::Disable);
            Manager::from_config(config, tokio_postgres::NoTls, manager_config)
        }
    };
    Pool::builder(manager)
        .max_size(options.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.timeout))
        .create_timeout(Some(options.timeout))
        .recycle_timeout(Some(options.timeout))
        .build()
        .map_err(|e| CloudError::Config(format!("[storage] postgres: {e}")))
}

/// TLS 1.2/1.3 by rustls (ring), the server checked against `ca_file` or the system's roots.
pub(crate) fn tls_config(options: &PostgresOptions) -> Result<rustls::ClientConfig, CloudError> {
    let roots = outpost_shared::tls::root_store(options.ca_file.as_deref())?;
    Ok(rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CloudError::Config(format!("[storage] TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Whether a database error means "not reachable now" (retry later) or a real refusal.
pub(crate) fn classify(e: tokio_postgres::Error) -> CloudError {
    let transient = match e.code() {
        // No SQLSTATE: the connection broke, timed out or never came up.
        None => true,
        Some(code) => {
            let c = code.code();
            // 08: connection exception; 53: insufficient resources; 57P01-03: shutting down,
            // crash recovery, cannot connect now; 40001/40P01: serialization failure, deadlock.
            c.starts_with("08")
                || c.starts_with("53")
                || [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW]
                    .contains(code)
                || [SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED].contains(code)
        }
    };
    if transient {
        CloudError::Unavailable(format!("database: {e}"))
    } else {
        CloudError::Database(e.to_string())
    }
}

pub(crate) fn pool_err(e: PoolError) -> CloudError {
    match e {
        PoolError::Backend(e) => classify(e),
        other => CloudError::Unavailable(format!("database: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows() {
        for url in [
            "postgresql://outpost:s3cret@db.example:5432/outpost?sslmode=require",
            "postgres://outpost:s3cret@db/outpost",
            "postgresql://db/outpost?user=outpost&password=s3cret",
            "host=db user=outpost password=s3cret dbname=outpost",
        ] {
            let u = PostgresUrl::new(url);
            for shown in [u.redacted(), format!("{u:?}"), format!("{u}")] {
                assert!(!shown.contains("s3cret"), "{shown}");
                assert!(shown.contains("outpost"), "the rest stays readable: {shown}");
            }
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let e = PostgresUrl::new("postgresql://u:s3cret@db/x?bogus=1").parse().unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("not a PostgreSQL connection URL"), "{e}");
    }
}
