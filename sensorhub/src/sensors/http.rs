//! HTTP(S) check: status, latency, optional text in the body, and for https the days left on the
//! server's certificate.

use super::config::{Secret, SensorConfig};
use super::threshold::{Thresholds, Unit};
use outpost_shared::model::{Sample, State};
use std::path::Path;
use std::time::{Duration, Instant};

/// How much of a body is searched for `expect_text`: enough for any status page, bounded so a
/// huge download cannot blow the hub's memory budget.
const BODY_LIMIT: usize = 1 << 20;

/// A client trusting `ca_file`, or the system roots. Checks do not share connections: each
/// check makes a fresh one, so latency and certificate are those a new visitor gets. Proxies
/// from the environment are ignored: the check is about this machine's own path to the server.
pub(crate) fn client(ca_file: Option<&Path>, https: bool) -> Result<reqwest::Client, ClientError> {
    outpost_shared::install_crypto_provider();
    let roots = match outpost_shared::tls::root_store(ca_file) {
        Ok(r) => r,
        // Plain-http checks need no roots; a machine without a trust store can still run them.
        Err(_) if ca_file.is_none() && !https => rustls::RootCertStore::empty(),
        Err(e) => return Err(ClientError::Tls(e)),
    };
    let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .tls_info(true)
        .no_proxy()
        .pool_max_idle_per_host(0)
        .user_agent(concat!("outpost-sensorhub/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ClientError::Build)
}

pub(crate) enum ClientError {
    Tls(outpost_shared::tls::TlsError),
    Build(reqwest::Error),
}

pub(crate) struct Http {
    prefix: String,
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as messages show it: no credentials, no query string (it may hold tokens).
    shown: String,
    timeout: Duration,
    expect_status: Option<Vec<u16>>,
    expect_text: Option<String>,
    username: Option<String>,
    password: Option<Secret>,
    thresholds: Thresholds,
    cert_thresholds: Thresholds,
}

struct Outcome {
    status: reqwest::StatusCode,
    latency_ms: f64,
    cert_days: Option<Result<f64, String>>,
    text_found: Option<bool>,
}

impl Http {
    /// `url` was checked by validation; `client` is shared by all checks with the same CA.
    pub fn new(cfg: &SensorConfig, client: reqwest::Client, url: reqwest::Url) -> Self {
        let shown = format!("{}{}", url.origin().ascii_serialization(), url.path());
        Http {
            prefix: cfg.id(),
            client,
            url,
            shown,
            timeout: cfg.timeout(),
            expect_status: cfg.expect_status.clone(),
            expect_text: cfg.expect_text.clone(),
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            thresholds: cfg.thresholds(),
            cert_thresholds: cfg.cert_thresholds(),
        }
    }

    async fn fetch(&self) -> Result<Outcome, reqwest::Error> {
        let mut req = self.client.get(self.url.clone());
        if let Some(user) = &self.username {
            req = req.basic_auth(user, self.password.as_ref().map(Secret::expose));
        }
        let started = Instant::now();
        let mut resp = req.send().await?;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let cert_days = resp
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|t| t.peer_certificate())
            .map(days_left);
        let text_found = match &self.expect_text {
            None => None,
            Some(text) => {
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await? {
                    let room = BODY_LIMIT - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= BODY_LIMIT {
                        break;
                    }
                }
                Some(String::from_utf8_lossy(&body).contains(text.as_str()))
            }
        };
        Ok(Outcome { status: resp.status(), latency_ms, cert_days, text_found })
    }

    pub async fn sample(&mut self, out: &mut Vec<Sample>) {
        let p = &self.prefix;
        let u = &self.shown;
        let outcome = match tokio::time::timeout(self.timeout, self.fetch()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                let word = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "unreachable"
                } else {
                    "error"
                };
                out.push(
                    Sample::new(format!("{p}.status"), word.to_string(), State::Error)
                        .message(format!("GET {u}: {}", error_chain(&e))),
                );
                return;
            }
            Err(_) => {
                out.push(Sample::new(format!("{p}.status"), "timeout".to_string(), State::Error).message(
                    format!(
                        "GET {u}: no complete answer within {}",
                        humantime::format_duration(self.timeout)
                    ),
                ));
                return;
            }
        };

        let code = outcome.status.as_u16();
        let reason = outcome.status.canonical_reason().unwrap_or("");
        let status_ok = match &self.expect_status {
            Some(codes) => codes.contains(&code),
            None => code < 400,
        };
        let (state, msg) = if !status_ok {
            let expected = match &self.expect_status {
                Some(codes) => codes.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" or "),
                None => "below 400".to_string(),
            };
            (State::Error, format!("GET {u}: {code} {reason} (expected {expected})"))
        } else if outcome.text_found == Some(false) {
            let text = self.expect_text.as_deref().unwrap_or("");
            (State::Error, format!("GET {u}: {code} {reason}, but `{text}` is not in the body"))
        } else {
            (State::Ok, format!("GET {u}: {code} {reason}"))
        };
        out.push(Sample::new(format!("{p}.status"), code as f64, state).message(msg));

        let ms = (outcome.latency_ms * 100.0).round() / 100.0;
        let (state, msg) =
            self.thresholds.judge(ms, Unit::Millis, format!("GET {u} answered in {}", Unit::Millis.show(ms)));
        out.push(
            Sample::new(format!("{p}.latency_ms"), ms, state)
                .unit("ms")
                .message(msg)
                .limits(self.thresholds.limits()),
        );

        match outcome.cert_days {
            Some(Ok(days)) => {
                let days = (days * 10.0).round() / 10.0;
                let what = format!("certificate of {u} expires in {}", Unit::Days.show(days));
                let (state, msg) = self.cert_thresholds.judge(days, Unit::Days, what);
                out.push(
                    Sample::new(format!("{p}.cert_days"), days, state)
                        .unit("d")
                        .message(msg)
                        .limits(self.cert_thresholds.limits()),
                );
            }
            Some(Err(why)) => out.push(
                Sample::new(format!("{p}.cert_days"), "unreadable".to_string(), State::Unknown)
                    .message(format!("certificate of {u}: {why}")),
            ),
            None => {}
        }
    }
}

/// Days until the DER certificate's `notAfter`, negative once it has passed.
pub(crate) fn days_left(der: &[u8]) -> Result<f64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("cannot parse: {e}"))?;
    let not_after = cert.validity().not_after.timestamp();
    let now = chrono::Utc::now().timestamp();
    Ok((not_after - now) as f64 / 86_400.0)
}

/// An error with its causes: reqwest's own message alone ("error sending request") hides the
/// part that says what to fix ("certificate expired", "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}
