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
pub use path::{CommandPath, PathTransport, REMEMBERED_FILE};

use chrono::{DateTime, Utc};
use outpost_shared::backoff::Backoff;
use outpost_shared::buffer::Storage;
use outpost_shared::model::{Batch, BatchAck, Reading, RefusalCode, Role, Sample, TimeWindow};
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
    /// Readings put into the buffer's quarantine since install (refused for good by the receiver,
    /// or unreadable): kept, listable with `outpost buffer --quarantine`, counted as loss.
    pub quarantined: u64,
    /// Set while the receiver refuses readings for their timestamps (see [`Batch::clock_problem`]).
    pub clock_problem: Option<String>,
}

/// How a failed removal of acknowledged readings starts its line in [`Feed::storage_error`].
const REMOVE_FAILED: &str = "cannot remove acknowledged readings";

/// Signals between the writer (which fills the buffer) and the uplink (which empties it).
pub struct Feed {
    /// Woken whenever the writer appended something.
    pub appended: Notify,
    /// First `seq` of the writer's latest append: the readings that are "live" right now.
    pub newest_group: AtomicU64,
    /// The latest append holds news (a state change, a relay switched): send it without lingering
    /// for company, so an alert or a switch reaches the cloud in milliseconds.
    pub urgent: AtomicBool,
    /// The hub is stopping and the writer has written its last readings: hand everything over now.
    /// The uplink stops lingering, ends the wait it is in, and waits at most `retry_min` between
    /// attempts (even when the receiver asked for longer), so a clean stop does not spend its
    /// short grace asleep.
    pub stopping: CancellationToken,
    /// Why the buffer refused the latest write (an append or a removal), until one succeeds. Shown
    /// in the hub's status: an uplink that delivers while the buffer cannot forget what was
    /// delivered is not healthy.
    pub storage_error: watch::Sender<Option<String>>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            appended: Notify::new(),
            newest_group: AtomicU64::new(0),
            urgent: AtomicBool::new(false),
            stopping: CancellationToken::new(),
            storage_error: watch::Sender::new(None),
        }
    }
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
    /// Current batch size; shrinks to isolate a reading the receiver refuses or to fit a receiver
    /// that finds the batch too large, grows back after.
    cap: usize,
    /// Words for the dashboard while the receiver refuses our timestamps, and the first `seq`
    /// taken after that verdict: once a batch holding a reading at or above it is stored, the
    /// clock is fine again.
    clock_problem: Option<(String, u64)>,
    /// A clock verdict put every reading of its batch aside, so no batch carries the news: the
    /// next round sends one without readings (once) to tell the dashboard.
    clock_unreported: bool,
}

/// One batch taken from the buffer: the seqs of its readings, the readings, and the records that
/// cannot be read back, each with why.
struct Collected {
    seqs: Vec<u64>,
    readings: Vec<Reading>,
    unreadable: Vec<(u64, String)>,
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
        Uplink {
            buffer,
            transport,
            cfg,
            identity,
            feed,
            status,
            live_mark,
            cap,
            clock_problem: None,
            clock_unreported: false,
        }
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
                        // At least as long as asked, spread so a fleet refused together
                        // does not come back together.
                        SendError::Busy(d) => outpost_shared::backoff::spread(d),
                        // The verdict was obeyed (readings quarantined, or the batch halved):
                        // what is left goes at once.
                        SendError::Refused { .. } | SendError::TooLarge(_) => Duration::ZERO,
                        SendError::Unreachable(_)
                        | SendError::Unauthorised { .. }
                        | SendError::Storage(_) => backoff.next_delay(),
                    }
                }
            };
            // Stopping: one more try soon, whatever the wait would have been.
            let hurry = !self.feed.stopping.is_cancelled();
            let delay = if hurry { delay } else { delay.min(self.cfg.retry_min) };
            if !delay.is_zero() {
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = &mut sleep => break,
                        _ = self.feed.stopping.cancelled(), if hurry => break,
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
        if self.feed.urgent.swap(false, Ordering::AcqRel) || self.feed.stopping.is_cancelled() {
            Duration::ZERO
        } else {
            self.cfg.linger
        }
    }

    /// Builds and sends one batch and obeys the answer. `recovering`: the last attempt failed, so
    /// the newest readings are re-marked live and ride at the front of this one.
    async fn send_one(&mut self, recovering: bool) -> Result<Sent, SendError> {
        if recovering {
            self.live_mark = self.feed.newest_group.load(Ordering::Acquire).max(1);
        }
        let Collected { seqs, readings, unreadable } = match self.collect().await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the buffer");
                return Err(SendError::Unreachable(e.to_string()));
            }
        };
        if !unreadable.is_empty() {
            // Sending them is impossible and keeping them in the queue blocks it: put aside,
            // counted, listable.
            self.quarantine(unreadable).await;
        }
        let stats = self.buffer.stats();
        // One try only: a receiver that refuses an empty batch must not make this a busy loop.
        let report_clock = std::mem::take(&mut self.clock_unreported);
        if readings.is_empty() && !report_clock {
            self.publish(|s| {
                s.buffered = stats.len;
                s.quarantined = stats.quarantined;
            });
            return Ok(Sent::Nothing);
        }
        let n = readings.len();
        let mut batch = Batch {
            machine_id: self.identity.machine_id.clone(),
            hostname: self.identity.hostname.clone(),
            role: self.identity.role,
            uplink: String::new(),
            buffered: stats.len.saturating_sub(n as u64),
            dropped: stats.dropped,
            version: self.identity.version.clone(),
            quarantined: stats.quarantined,
            clock_problem: self.clock_problem.as_ref().map(|(words, _)| words.clone()),
            // This hub checks commands signed with the cloud's certified Ed25519 key.
            features: vec![outpost_shared::keys::command_key::FEATURE.to_string()],
            readings,
        };
        match self.transport.send(&mut batch).await {
            Ok(ack) => {
                let removed = self.remove(seqs).await;
                self.cap = (self.cap * 2).min(self.cfg.batch_max);
                if let Some((_, mark)) = &self.clock_problem {
                    if batch.readings.iter().any(|r| r.seq >= *mark) {
                        tracing::info!("readings taken after the clock verdict are accepted again");
                        self.clock_problem = None;
                    }
                }
                let path = self.transport.path();
                let buffered = self.buffer.stats().len;
                tracing::debug!(
                    sent = n,
                    stored = ack.stored,
                    duplicates = ack.duplicates,
                    buffered,
                    "batch acknowledged"
                );
                let clock = self.clock_problem.as_ref().map(|(w, _)| w.clone());
                self.publish(|s| {
                    if s.path != path {
                        tracing::info!(from = %s.path, to = %path, "uplink path changed");
                    }
                    s.path = path;
                    s.buffered = buffered;
                    s.last_upload = Some(Utc::now());
                    s.last_error = None;
                    s.quarantined = stats.quarantined;
                    s.clock_problem = clock;
                });
                // Sending the same readings again at once would only be answered "duplicates"
                // (many times a second): wait as after a failure until the buffer writes again.
                removed.map(|()| Sent::Some(n))
            }
            Err(SendError::TooLarge(message)) => {
                if n > 1 {
                    self.cap = (n / 2).max(1);
                    tracing::warn!(%message, next_batch = self.cap, "batch too large for the receiver; sending smaller ones");
                    return Err(SendError::TooLarge(message));
                }
                // Never dropped: it waits, and is offered again with backoff.
                tracing::error!(%message, seq = seqs[0], "a single reading is too large for the receiver; keeping it and retrying later");
                Err(SendError::Unreachable(format!(
                    "a single reading is too large for the receiver: {message}"
                )))
            }
            Err(SendError::Refused { status, message, code, accept }) => {
                self.obey_refusal(&batch.readings, status, &message, code, accept).await;
                Err(SendError::Refused { status, message, code, accept })
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

    /// A `Refused` verdict on `readings`. With a `Clock` code and the receiver's window, exactly
    /// the readings outside the window go to the quarantine and the rest are sent again. A
    /// refusal of a whole batch for what is in it (malformed, or a code this hub does not know)
    /// is narrowed down by halving the batch until the one reading at fault is alone, so one bad
    /// reading does not take thousands with it. A refusal of the sender (forged, revoked) puts the
    /// whole batch aside.
    async fn obey_refusal(
        &mut self,
        readings: &[Reading],
        status: u16,
        message: &str,
        code: Option<RefusalCode>,
        accept: Option<TimeWindow>,
    ) {
        let n = readings.len();
        if let (Some(RefusalCode::Clock), Some(window)) = (code, accept) {
            let outside: Vec<&Reading> =
                readings.iter().filter(|r| r.sample.ts < window.from || r.sample.ts > window.until).collect();
            if !outside.is_empty() {
                let words = clock_words(&outside, &window);
                self.clock_unreported = outside.len() == n;
                tracing::error!(status, %message, quarantined = outside.len(), kept = n - outside.len(),
                    problem = %words, "receiver refuses readings stamped outside its window; those are quarantined");
                let reason = format!("refused ({status}, clock): {message}");
                let items = outside.iter().map(|r| (r.seq, reason.clone())).collect();
                self.quarantine(items).await;
                let mark = self.buffer.stats().next_seq;
                self.clock_problem = Some((words.clone(), mark));
                self.publish(|s| s.clock_problem = Some(words));
                return;
            }
            // The window holds every reading: the refusal does not fit the batch. Narrow it down.
        }
        let about_content = matches!(
            code,
            None | Some(RefusalCode::Malformed) | Some(RefusalCode::Clock) | Some(RefusalCode::Other)
        );
        if about_content && n > 1 {
            self.cap = (n / 2).max(1);
            tracing::warn!(status, %message, next_batch = self.cap, "batch refused; retrying in smaller parts to isolate the cause");
            return;
        }
        tracing::error!(status, %message, ?code, readings = n,
            "receiver refuses these readings for good; moved to the quarantine (see `outpost buffer --quarantine`)");
        let reason = format!("refused ({status}, {code:?}): {message}");
        self.quarantine(readings.iter().map(|r| (r.seq, reason.clone())).collect()).await;
    }

    async fn quarantine(&self, items: Vec<(u64, String)>) {
        let buffer = self.buffer.clone();
        match tokio::task::spawn_blocking(move || buffer.quarantine(&items)).await {
            Ok(Ok(_)) => {}
            // They stay in the queue and are offered again: kept, not lost.
            Ok(Err(e)) => tracing::error!(error = %e, "cannot move readings to the quarantine"),
            Err(e) => tracing::error!(error = %e, "quarantine task failed"),
        }
        let quarantined = self.buffer.stats().quarantined;
        self.publish(|s| s.quarantined = quarantined);
    }

    /// Live readings (newest first, then put in order) and the oldest backlog behind them, their
    /// seqs, and the records that cannot be read back (with why).
    async fn collect(&self) -> Result<Collected, outpost_shared::buffer::BufferError> {
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
        let mut unreadable = Vec::new();
        for (seq, bytes) in live.into_iter().chain(old) {
            if readings.len() >= cap || !seen.insert(seq) {
                continue;
            }
            match serde_json::from_slice::<Sample>(&bytes) {
                Ok(sample) => {
                    seqs.push(seq);
                    readings.push(Reading { machine_id: self.identity.machine_id.clone(), seq, sample })
                }
                Err(e) => {
                    tracing::error!(seq, error = %e, "unreadable record in buffer; moved to the quarantine");
                    unreadable.push((seq, format!("unreadable: {e}")));
                }
            }
        }
        Ok(Collected { seqs, readings, unreadable })
    }

    /// Forgets readings the receiver acknowledged. On failure they stay and are sent again later;
    /// the receiver stores them once.
    async fn remove(&self, seqs: Vec<u64>) -> Result<(), SendError> {
        let buffer = self.buffer.clone();
        let r = tokio::task::spawn_blocking(move || buffer.remove(&seqs))
            .await
            .unwrap_or_else(|e| panic!("buffer removal panicked: {e}"));
        let failure = r.as_ref().err().map(|e| format!("{REMOVE_FAILED}: {e}"));
        let mut fresh = false;
        self.feed.storage_error.send_if_modified(|s| match &failure {
            Some(m) => {
                fresh = s.as_ref() != Some(m);
                *s = Some(m.clone());
                fresh
            }
            // A success clears only this side's complaint; the writer clears its own.
            None if s.as_deref().is_some_and(|s| s.starts_with(REMOVE_FAILED)) => {
                *s = None;
                true
            }
            None => false,
        });
        match failure {
            Some(msg) => {
                if fresh {
                    tracing::error!(error = %msg, "the buffer refuses writes; acknowledged readings stay and are sent again later");
                }
                Err(SendError::Storage(msg))
            }
            None => Ok(()),
        }
    }

    fn publish(&self, f: impl FnOnce(&mut UplinkStatus)) {
        self.status.send_modify(f);
    }
}

/// The dashboard's words for a clock verdict: which way the clock is off, and by at least how much
/// (the distance of the farthest reading from the window's edge).
fn clock_words(outside: &[&Reading], window: &TimeWindow) -> String {
    let ahead =
        outside.iter().filter(|r| r.sample.ts > window.until).map(|r| r.sample.ts - window.until).max();
    let behind =
        outside.iter().filter(|r| r.sample.ts < window.from).map(|r| window.from - r.sample.ts).max();
    let words = |d: chrono::TimeDelta| {
        // Whole minutes (seconds for less): the dashboard wants the size, not the precision.
        let secs = d.num_seconds().max(1) as u64;
        let rounded = if secs >= 60 { secs / 60 * 60 } else { secs };
        humantime::format_duration(Duration::from_secs(rounded)).to_string()
    };
    match (ahead, behind) {
        (Some(a), None) => format!("clock at least {} ahead of the cloud", words(a)),
        (None, Some(b)) => format!("clock at least {} behind the cloud", words(b)),
        (Some(a), Some(b)) => {
            format!("clock unsteady: readings up to {} ahead of and {} behind the cloud", words(a), words(b))
        }
        (None, None) => "readings stamped outside the time window the cloud accepts".to_string(),
    }
}
