//! The uplink: takes batches out of the durable buffer and sends them on, live readings first and
//! the backlog behind them, and deletes only what the receiver acknowledged. While the receiver
//! is unreachable it keeps the data and retries with the shared jittered backoff.
//!
//! The receiver sits behind [`Transport`] (HTTP in production, a fake in unit tests), so the
//! buffer logic here is the same whatever the hub talks to.

mod config;
mod error;
mod http;
mod path;
#[cfg(test)]
mod tests;

pub use config::UplinkConfig;
pub use error::{SendError, UplinkError};
pub use http::HttpTransport;
pub use path::{PathTransport, REMEMBERED_FILE};

use chrono::{DateTime, Utc};
use outpost_shared::backoff::Backoff;
use outpost_shared::buffer::Storage;
use outpost_shared::model::{Batch, BatchAck, Reading, Role, Sample};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

impl<T: Transport> Transport for Arc<T> {
    fn send(&self, batch: &mut Batch) -> impl Future<Output = Result<BatchAck, SendError>> + Send {
        (**self).send(batch)
    }
    fn path(&self) -> String {
        (**self).path()
    }
}

/// Something that takes a batch and acknowledges it once it is durable on its side.
pub trait Transport: Send + Sync + 'static {
    /// Sends `batch`; the transport sets `batch.uplink` to the path it actually takes.
    fn send(&self, batch: &mut Batch) -> impl Future<Output = Result<BatchAck, SendError>> + Send;
    /// The path of the last successful send: `direct` or `connector:<id>`.
    fn path(&self) -> String;
}

/// Who the hub is, repeated in every batch.
#[derive(Debug, Clone)]
pub struct Identity {
    pub machine_id: String,
    pub hostname: String,
    pub role: Role,
    pub version: String,
}

/// What the uplink is doing, for `outpost status`, the logs and tests.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UplinkStatus {
    /// `direct`, `connector:<id>` or `offline`.
    pub path: String,
    pub buffered: u64,
    pub last_upload: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Uploads refused by the receiver for good (a reading it will never take); counted as loss.
    pub rejected: u64,
}

/// Signals between the writer (which fills the buffer) and the uplink (which empties it).
#[derive(Default)]
pub struct Feed {
    /// Woken whenever the writer appended something.
    pub appended: Notify,
    /// First `seq` of the writer's latest append: the readings that are "live" right now.
    pub newest_group: AtomicU64,
    /// The latest append holds news (a state change, a relay switched): send it without lingering
    /// for company, so an alert or a switch reaches the cloud in milliseconds.
    pub urgent: AtomicBool,
}

pub struct Uplink<T: Transport> {
    buffer: Arc<dyn Storage>,
    transport: T,
    cfg: UplinkConfig,
    identity: Identity,
    feed: Arc<Feed>,
    status: watch::Sender<UplinkStatus>,
    /// Readings at or above this `seq` go first; below it is backlog, drained oldest first.
    live_mark: u64,
    /// Current batch size; shrinks to isolate a reading the receiver refuses, grows back after.
    cap: usize,
    rejected: u64,
}

/// What one send attempt did.
enum Sent {
    Nothing,
    Some(usize),
}

impl<T: Transport> Uplink<T> {
    pub fn new(
        buffer: Arc<dyn Storage>,
        transport: T,
        cfg: UplinkConfig,
        identity: Identity,
        feed: Arc<Feed>,
    ) -> (Self, watch::Receiver<UplinkStatus>) {
        let (status, rx) = watch::channel(UplinkStatus { path: "offline".into(), ..Default::default() });
        (Self::with_status(buffer, transport, cfg, identity, feed, status), rx)
    }

    /// Like [`Uplink::new`], reporting to a status channel made beforehand.
    pub fn with_status(
        buffer: Arc<dyn Storage>,
        transport: T,
        cfg: UplinkConfig,
        identity: Identity,
        feed: Arc<Feed>,
        status: watch::Sender<UplinkStatus>,
    ) -> Self {
        // Whatever is in the buffer at start is backlog; what the sensors take from now on is live.
        let live_mark = buffer.stats().next_seq;
        let cap = cfg.batch_max;
        Uplink { buffer, transport, cfg, identity, feed, status, live_mark, cap, rejected: 0 }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.cfg.retry_min, self.cfg.retry_max, 0.5)
            .expect("uplink retry settings are validated with the config");
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let mut lingering = true;
            let delay = match self.send_one(backoff.attempts() > 0).await {
                Ok(Sent::Nothing) => {
                    backoff.reset();
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = self.feed.appended.notified() => {}
                    }
                    // Let a burst of readings gather into one batch, unless it carries news.
                    self.linger()
                }
                Ok(Sent::Some(n)) => {
                    backoff.reset();
                    if n >= self.cap {
                        Duration::ZERO
                    } else {
                        self.linger()
                    }
                }
                Err(e) => {
                    lingering = false;
                    match e {
                        SendError::Busy(d) => d,
                        SendError::Refused { .. } => Duration::ZERO,
                        SendError::Unreachable(_) | SendError::Unauthorised { .. } => backoff.next_delay(),
                    }
                }
            };
            if !delay.is_zero() {
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = &mut sleep => break,
                        // News cuts a linger short; a backoff it does not (the receiver is away).
                        _ = self.feed.appended.notified(), if lingering => {
                            if self.feed.urgent.swap(false, Ordering::AcqRel) {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    /// How long to wait for more readings before the next batch: none when news is waiting.
    fn linger(&self) -> Duration {
        if self.feed.urgent.swap(false, Ordering::AcqRel) {
            Duration::ZERO
        } else {
            self.cfg.linger
        }
    }

    /// Builds and sends one batch. `recovering`: the last attempt failed, so the newest readings
    /// are re-marked live and ride at the front of this one.
    async fn send_one(&mut self, recovering: bool) -> Result<Sent, SendError> {
        if recovering {
            self.live_mark = self.feed.newest_group.load(Ordering::Acquire).max(1);
        }
        let (seqs, readings) = match self.collect().await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the buffer");
                return Err(SendError::Unreachable(e.to_string()));
            }
        };
        let stats = self.buffer.stats();
        if readings.is_empty() {
            self.publish(|s| s.buffered = stats.len);
            return Ok(Sent::Nothing);
        }
        let n = readings.len();
        let mut batch = Batch {
            machine_id: self.identity.machine_id.clone(),
            hostname: self.identity.hostname.clone(),
            role: self.identity.role,
            uplink: String::new(),
            buffered: stats.len.saturating_sub(n as u64),
            dropped: stats.dropped + self.rejected,
            version: self.identity.version.clone(),
            quarantined: 0,
            clock_problem: None,
            readings,
        };
        match self.transport.send(&mut batch).await {
            Ok(ack) => {
                self.remove(seqs).await;
                self.cap = (self.cap * 2).min(self.cfg.batch_max);
                let path = self.transport.path();
                let buffered = self.buffer.stats().len;
                tracing::debug!(
                    sent = n,
                    stored = ack.stored,
                    duplicates = ack.duplicates,
                    buffered,
                    "batch acknowledged"
                );
                self.publish(|s| {
                    if s.path != path {
                        tracing::info!(from = %s.path, to = %path, "uplink path changed");
                    }
                    s.path = path;
                    s.buffered = buffered;
                    s.last_upload = Some(Utc::now());
                    s.last_error = None;
                });
                Ok(Sent::Some(n))
            }
            Err(SendError::Refused { status, message }) => {
                if n > 1 {
                    self.cap = (n / 2).max(1);
                    tracing::warn!(status, %message, next_batch = self.cap, "batch refused; retrying in smaller parts to isolate the cause");
                } else {
                    // One reading the receiver will never take: keeping it would block everything
                    // behind it. Drop it, count it (the count is uploaded) and say why.
                    tracing::error!(status, %message, seq = seqs[0], "receiver refuses this reading for good; dropped and counted");
                    self.rejected += 1;
                    self.remove(seqs).await;
                    self.publish(|s| s.rejected += 1);
                }
                Err(SendError::Refused { status, message })
            }
            Err(e) => {
                let msg = e.to_string();
                let was = self.status.borrow().last_error.is_none();
                if was {
                    tracing::warn!(error = %msg, buffered = stats.len, "upload failed; buffering and retrying");
                }
                self.publish(|s| {
                    if !matches!(e, SendError::Busy(_)) {
                        s.path = "offline".into();
                    }
                    s.buffered = stats.len;
                    s.last_error = Some(msg);
                });
                Err(e)
            }
        }
    }

    /// Live readings (newest first, then put in order) and the oldest backlog behind them.
    async fn collect(&self) -> Result<(Vec<u64>, Vec<Reading>), outpost_shared::buffer::BufferError> {
        let buffer = self.buffer.clone();
        let (cap, live_max, mark) = (self.cap, self.cfg.live_max.min(self.cap), self.live_mark);
        let (live, old) =
            tokio::task::spawn_blocking(move || -> Result<_, outpost_shared::buffer::BufferError> {
                let mut live: Vec<_> =
                    buffer.newest(live_max)?.into_iter().filter(|(s, _)| *s >= mark).collect();
                live.reverse();
                let old = buffer.oldest(cap)?;
                Ok((live, old))
            })
            .await
            .expect("buffer read does not panic")?;
        let mut seen = HashSet::with_capacity(cap);
        let mut seqs = Vec::with_capacity(cap);
        let mut readings = Vec::with_capacity(cap);
        for (seq, bytes) in live.into_iter().chain(old) {
            if readings.len() >= cap || !seen.insert(seq) {
                continue;
            }
            seqs.push(seq);
            match serde_json::from_slice::<Sample>(&bytes) {
                Ok(sample) => {
                    readings.push(Reading { machine_id: self.identity.machine_id.clone(), seq, sample })
                }
                // Unreadable record: sending it is impossible and keeping it blocks the queue.
                Err(e) => {
                    tracing::error!(seq, error = %e, "unreadable record in buffer; skipped and removed")
                }
            }
        }
        Ok((seqs, readings))
    }

    async fn remove(&self, seqs: Vec<u64>) {
        let buffer = self.buffer.clone();
        let r = tokio::task::spawn_blocking(move || buffer.remove(&seqs)).await;
        if let Ok(Err(e)) = r {
            // The receiver has them; if they come back after a restart it stores them once.
            tracing::error!(error = %e, "could not remove acknowledged readings from the buffer");
        }
    }

    fn publish(&self, f: impl FnOnce(&mut UplinkStatus)) {
        self.status.send_modify(f);
    }
}
