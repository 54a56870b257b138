//! The durable buffer every hop keeps records in until the next hop has acknowledged them.
//!
//! Records are opaque bytes (a hub stores encoded [`crate::model::Sample`]s, a connector stores
//! whole hub batches); the buffer gives each one the next `seq`, which rises strictly and survives
//! restarts. [`SledBuffer`] is the real one, [`MemoryBuffer`] its in-memory twin for unit tests.
//! Both are bounded by a byte quota with an explicit [`WhenFull`] policy.

mod error;
mod memory;
mod sled_buffer;
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

/// Where a buffer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BufferStats {
    /// Records held.
    pub len: u64,
    /// Bytes held, as counted against the quota (key and value).
    pub bytes: u64,
    /// The quota.
    pub quota: u64,
    /// Records dropped by [`WhenFull::DropOldest`] since the buffer was created.
    pub dropped: u64,
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
}

/// Bytes a record counts against the quota: its 8-byte key and its value.
pub(crate) fn record_cost(value: &[u8]) -> u64 {
    8 + value.len() as u64
}
