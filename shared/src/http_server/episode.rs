//! Overload is logged once per episode (when it starts and when it ends, with how many requests it
//! turned away), never once per request: a flood must not also flood the log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// An episode ends after this long without a refusal. Without the quiet period, refusals mixed
/// with successes (one abusive source among many good ones) would log a start and an end per
/// request.
const QUIET: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One kind of overload, e.g. "connection cap reached".
#[derive(Debug)]
pub struct Episode {
    what: &'static str,
    active: AtomicBool,
    refused: AtomicU64,
    last_hit_ms: AtomicU64,
}

impl Episode {
    pub const fn new(what: &'static str) -> Episode {
        Episode {
            what,
            active: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            last_hit_ms: AtomicU64::new(0),
        }
    }

    /// Something was turned away; logs if this starts an episode. Returns whether it did, so a
    /// caller can log the first reason too.
    pub fn hit(&self) -> bool {
        let now = now_ms();
        let last = self.last_hit_ms.swap(now, Ordering::Relaxed);
        // A long quiet spell ends an episode even if nothing went through meanwhile.
        if self.active.load(Ordering::Relaxed) && now.saturating_sub(last) >= QUIET.as_millis() as u64 {
            self.end();
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        let started = !self.active.swap(true, Ordering::AcqRel);
        if started {
            tracing::warn!(limit = self.what, "limit reached; turning requests away until it clears");
        }
        started
    }

    /// Something went through; logs the end of the episode if one ran and has been quiet.
    pub fn clear(&self) {
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        let quiet_for = now_ms().saturating_sub(self.last_hit_ms.load(Ordering::Relaxed));
        if quiet_for >= QUIET.as_millis() as u64 {
            self.end();
        }
    }

    fn end(&self) {
        if self.active.swap(false, Ordering::AcqRel) {
            let refused = self.refused.swap(0, Ordering::Relaxed);
            tracing::info!(limit = self.what, refused, "limit cleared");
        }
    }

    /// Requests turned away in the current episode.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}
