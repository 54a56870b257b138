//! TCP port check: can this machine open a connection, and how long does the handshake take.

use super::config::SensorConfig;
use super::threshold::{Thresholds, Unit};
use outpost_shared::model::{Sample, State};
use std::time::{Duration, Instant};

pub(crate) struct Tcp {
    key: String,
    host: String,
    port: u16,
    timeout: Duration,
    thresholds: Thresholds,
}

impl Tcp {
    pub fn new(cfg: &SensorConfig) -> Self {
        Tcp {
            key: cfg.id(),
            host: cfg.host.clone().unwrap_or_default(),
            port: cfg.port.unwrap_or(0),
            timeout: cfg.timeout(),
            thresholds: cfg.thresholds(),
        }
    }

    pub async fn sample(&mut self, out: &mut Vec<Sample>) {
        let target = format!("{}:{}", self.host, self.port);
        let result = tokio::time::timeout(self.timeout, connect(&self.host, self.port)).await;
        let sample = match result {
            Ok(Ok(ms)) => {
                let ms = (ms * 100.0).round() / 100.0;
                let (state, msg) = self.thresholds.judge(
                    ms,
                    Unit::Millis,
                    format!("{target} accepted a connection in {}", Unit::Millis.show(ms)),
                );
                Sample::new(self.key.clone(), ms, state)
                    .unit("ms")
                    .message(msg)
                    .limits(self.thresholds.limits())
            }
            Ok(Err((short, why))) => Sample::new(self.key.clone(), short.to_string(), State::Error)
                .message(format!("{target}: {why}")),
            Err(_) => Sample::new(self.key.clone(), "timeout".to_string(), State::Error).message(format!(
                "{target}: no connection within {}",
                humantime::format_duration(self.timeout)
            )),
        };
        out.push(sample);
    }
}

/// Resolves and connects, trying each address in turn; returns the handshake time in ms of the
/// first that accepts, or a one-word failure for the reading and a sentence for the message.
async fn connect(host: &str, port: u16) -> Result<f64, (&'static str, String)> {
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ("unresolved", format!("cannot resolve {host}: {e}")))?
        .collect();
    let mut last = ("unreachable", format!("{host} resolved to no address"));
    for addr in addrs {
        let started = Instant::now();
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                drop(stream);
                return Ok(ms);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = ("refused", format!("connection refused by {addr}"));
            }
            Err(e) => last = ("unreachable", format!("cannot connect to {addr}: {e}")),
        }
    }
    Err(last)
}
