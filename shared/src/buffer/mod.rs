//! The durable buffer every hop keeps records in until the next hop has acknowledged them.
//!
//! Records are opaque bytes (a hub stores encoded [`crate::model::Sample`]s, a connector stores
//! whole hub batches); the buffer gives each one the next `seq`, which rises strictly and survives
//! restarts. [`SledBuffer`] is the real one, [`MemoryBuffer`] its in-memory twin for unit tests.
//! Both are bounded by a byte quota with an explicit [`WhenFull`] policy.
//!
//! Beside the records each buffer keeps a *quarantine*: records the next hop refused for good
//! (an explicit `Refused` verdict) or that cannot be read back. They leave the send queue but are
//! kept, counted durably ([`BufferStats::quarantined`]), listable and can be put back
//! ([`Storage::requeue`]). The quarantine is bounded too, by [`QUARANTINE_SHARE`] of the quota.

mod error;
mod memory;
mod sled_buffer;
mod sled_threads;
#[cfg(test)]
mod tests;

pub use error::BufferError;
pub use memory::MemoryBuffer;
pub use sled_buffer::{OpenOutcome, SledBuffer};

use std::ops::Range;

/// What a buffer does when an append would take it over its byte quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop the oldest records to make room and count them in [`BufferStats::dropped`]. For hubs:
    /// the newest data matters most, and the drop count is uploaded so the loss is never silent.
    DropOldest,
    /// Refuse the whole append with [`BufferError::Full`] and keep everything already accepted. For
    /// connectors: the refusal becomes HTTP 503 + Retry-After, so the data waits on the hubs.
    Reject,
}

/// The quarantine holds at most `quota / QUARANTINE_SHARE` bytes. When it is full the oldest
/// quarantined records are dropped and counted in [`BufferStats::dropped`] (policy
/// [`WhenFull::DropOldest`]): refused data must not crowd out the data that can still be delivered.
pub const QUARANTINE_SHARE: u64 = 4;

/// A record put aside for good, with the reason the next hop gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The `seq` it had (and gets back on [`Storage::requeue`]).
    pub seq: u64,
    /// Why it was put aside, in words (the hop's error text, or why it could not be read).
    pub reason: String,
    pub record: Vec<u8>,
}

/// Where a buffer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BufferStats {
    /// Records held.
    pub len: u64,
    /// Bytes held, as counted against the quota (key and value).
    pub bytes: u64,
    /// The quota.
    pub quota: u64,
    /// Records dropped by [`WhenFull::DropOldest`] since the buffer was created (the quarantine's
    /// overflow included). Durable: it survives restarts and even a corrupt buffer moved aside.
    pub dropped: u64,
    /// Records put into the quarantine since the buffer was created. Durable like `dropped`; it does
    /// not go down when records are requeued, so a loss once reported is never unreported.
    pub quarantined: u64,
    /// Records in the quarantine now.
    pub quarantine_len: u64,
    /// Bytes in the quarantine now, as counted against its share of the quota.
    pub quarantine_bytes: u64,
    /// The `seq` the next appended record gets.
    pub next_seq: u64,
}

/// A durable, ordered, bounded store of records keyed by `seq`.
///
/// Durability: a record is durable when [`Storage::append`] has returned `Ok` — the append
/// flushed it (and everything appended before it) to disk. Readers ([`Storage::oldest`],
/// [`Storage::newest`]) only ever see durable records, so nothing can be sent onward, acknowledged
/// upstream and then lost with its `seq` reused after a crash. Group commit: pass many records to
/// one `append`; they share one flush.
///
/// All methods block on disk I/O; call them from a blocking thread, not a runtime worker.
pub trait Storage: Send + Sync {
    /// Appends `records` in order and returns the `seq` range they got.
    fn append(&self, records: &[Vec<u8>]) -> Result<Range<u64>, BufferError>;
    /// Up to `n` records with the lowest `seq`, ascending.
    fn oldest(&self, n: usize) -> Result<Vec<(u64, Vec<u8>)>, BufferError>;
    /// Up to `n` records with the highest `seq`, descending (newest first).
    fn newest(&self, n: usize) -> Result<Vec<(u64, Vec<u8>)>, BufferError>;
    /// Removes exactly these records (acknowledged by the next hop). Unknown `seq`s are ignored.
    /// Durable on return.
    fn remove(&self, seqs: &[u64]) -> Result<(), BufferError>;
    /// Removes every record with `seq <= through`; returns how many. Durable on return.
    fn delete_through(&self, through: u64) -> Result<u64, BufferError>;
    /// Counters; cheap (kept in memory).
    fn stats(&self) -> BufferStats;
    /// Moves these records, each with its reason, from the send queue into the quarantine and
    /// counts them; returns how many moved (unknown `seq`s are ignored). Durable on return.
    fn quarantine(&self, items: &[(u64, String)]) -> Result<u64, BufferError>;
    /// Up to `n` quarantined records, lowest `seq` first.
    fn quarantined(&self, n: usize) -> Result<Vec<Quarantined>, BufferError>;
    /// Puts every quarantined record back into the send queue under its own `seq` (it was never
    /// stored by the next hop, so it keeps its identity); returns how many. Durable on return.
    fn requeue(&self) -> Result<u64, BufferError>;
    /// Bytes free for an unprivileged writer on the disk holding the buffer, where that can be
    /// told: a write that keeps failing while there is plenty of room is not a full disk.
    fn free_space(&self) -> Option<u64> {
        None
    }
}

/// Bytes a record counts against the quota: its 8-byte key and its value.
pub(crate) fn record_cost(value: &[u8]) -> u64 {
    8 + value.len() as u64
}
