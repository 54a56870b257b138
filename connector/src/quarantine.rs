//! Where hub batches go that leave the forwarding buffer without reaching the cloud: those the
//! cloud refused for good (verdict `Refused`: forged, malformed, clock) and records that cannot be
//! framed or sent at all. Nothing goes here on any other answer (custody rule): they stay in the
//! buffer and are sent again.
//!
//! Bounded: a buffer of its own (`<data_dir>/quarantine`) with `buffer.quarantine_quota` and
//! [`WhenFull::DropOldest`]; the per-hub counts of readings put aside are kept apart in a small
//! file written (and renamed into place) before the batches leave the forwarding buffer, so the
//! count survives a crash and the oldest entries dropped for room. The counts go to the cloud with
//! the forwards (added to each hub's `quarantined` on the dashboard); `outpost buffer` lists the
//! entries and sends them back into the forwarding buffer once the cause is fixed.

use outpost_shared::buffer::{BufferError, SledBuffer, Storage, WhenFull};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const DIR: &str = "quarantine";
const COUNTS: &str = "quarantine-counts.json";
/// The count key for records whose hub cannot be read.
pub const UNKNOWN_HUB: &str = "unknown";

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged ({0}); move it aside to start counting again", path = .1.display())]
    Counts(String, PathBuf),
}

/// One batch put aside.
pub struct Entry {
    /// The record exactly as it sat in the forwarding buffer.
    pub record: Vec<u8>,
    pub hub: String,
    pub readings: u64,
    pub reason: String,
}

pub struct Quarantine {
    buffer: SledBuffer,
    counts_path: PathBuf,
    counts: Mutex<BTreeMap<String, u64>>,
    /// Rises with every change of the counts; the forwarder reports them while it differs from
    /// what the cloud acknowledged. Starts at 1 so the totals are sent once after a start.
    generation: AtomicU64,
    reported: AtomicU64,
}

fn encode(e: &Entry) -> Vec<u8> {
    // The reason is text the connector made; cut to what fits the length field.
    let mut reason = e.reason.as_bytes();
    if reason.len() > u16::MAX as usize {
        reason = &reason[..u16::MAX as usize];
    }
    let mut out = Vec::with_capacity(2 + reason.len() + e.record.len());
    out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    out.extend_from_slice(reason);
    out.extend_from_slice(&e.record);
    out
}

/// The reason and the record of an entry.
fn decode(bytes: &[u8]) -> Option<(String, &[u8])> {
    let n = u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
    let reason = String::from_utf8_lossy(bytes.get(2..2 + n)?).into_owned();
    Some((reason, bytes.get(2 + n..)?))
}

fn read_counts(path: &Path) -> Result<BTreeMap<String, u64>, QuarantineError> {
    match std::fs::read(path) {
        Ok(b) => {
            serde_json::from_slice(&b).map_err(|e| QuarantineError::Counts(e.to_string(), path.to_path_buf()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(QuarantineError::Io { path: path.to_path_buf(), source }),
    }
}

impl Quarantine {
    pub fn open(data_dir: &Path, quota: u64) -> Result<Quarantine, QuarantineError> {
        let (buffer, _) = SledBuffer::open(&data_dir.join(DIR), quota, WhenFull::DropOldest)?;
        let counts_path = data_dir.join(COUNTS);
        let counts = read_counts(&counts_path)?;
        Ok(Quarantine {
            buffer,
            counts_path,
            counts: Mutex::new(counts),
            generation: AtomicU64::new(1),
            reported: AtomicU64::new(0),
        })
    }

    /// Puts `entries` aside and counts them, durably, before the caller removes them from the
    /// forwarding buffer. Blocking.
    pub fn put(&self, entries: &[Entry]) -> Result<(), QuarantineError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut counts = self.counts.lock().unwrap();
        let mut next = counts.clone();
        for e in entries {
            *next.entry(e.hub.clone()).or_default() += e.readings;
            tracing::error!(hub = %e.hub, readings = e.readings, reason = %e.reason,
                "hub batch put aside in the connector's quarantine (`outpost buffer` lists it)");
        }
        // The count first: an entry may be dropped for room later, its count never.
        let tmp = self.counts_path.with_extension("tmp");
        let io = |source| QuarantineError::Io { path: self.counts_path.clone(), source };
        let file = std::fs::File::create(&tmp).map_err(io)?;
        serde_json::to_writer(&file, &next).expect("serialises");
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.counts_path).map_err(io)?;
        self.buffer.append(&entries.iter().map(encode).collect::<Vec<_>>())?;
        *counts = next;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Readings put aside per hub since install.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap().clone()
    }

    /// The counts to report with the next forward, if they changed since the cloud last took
    /// them, and the generation to pass to [`Quarantine::reported`] once it did.
    pub fn to_report(&self) -> Option<(u64, BTreeMap<String, u64>)> {
        let g = self.generation.load(Ordering::SeqCst);
        (g != self.reported.load(Ordering::SeqCst)).then(|| (g, self.counts()))
    }

    pub fn reported(&self, generation: u64) {
        self.reported.store(generation, Ordering::SeqCst);
    }
}

/// Whether `data_dir` is a connector's (it has a quarantine).
pub fn exists(data_dir: &Path) -> bool {
    data_dir.join(DIR).is_dir()
}

/// `outpost buffer` on a stopped connector: what its quarantine holds.
pub fn report(data_dir: &Path) -> Result<serde_json::Value, QuarantineError> {
    let (buffer, _) = SledBuffer::open(&data_dir.join(DIR), u64::MAX, WhenFull::Reject)?;
    let mut entries = Vec::new();
    for (seq, bytes) in buffer.oldest(usize::MAX)? {
        let (reason, record) = decode(&bytes).unwrap_or_else(|| ("unreadable entry".into(), &bytes[..]));
        let r = crate::record::decode(record);
        entries.push(serde_json::json!({
            "seq": seq,
            "hub": r.as_ref().map(|r| r.machine_id),
            "readings": r.as_ref().map(|r| r.readings),
            "bytes": record.len(),
            "reason": reason,
        }));
    }
    let st = buffer.stats();
    Ok(serde_json::json!({
        "counts": read_counts(&data_dir.join(COUNTS))?,
        "held": st.len,
        "dropped_for_room": st.dropped,
        "entries": entries,
    }))
}

/// `outpost buffer --resend-quarantine` on a stopped connector: moves every entry back into the
/// forwarding buffer, to be sent again at the next start (once the cause is fixed: a clock, a
/// revoked hub enrolled again). The counts stay: they count what was put aside, not what is
/// held. Returns how many batches moved.
pub fn resend(data_dir: &Path) -> Result<u64, QuarantineError> {
    let (q, _) = SledBuffer::open(&data_dir.join(DIR), u64::MAX, WhenFull::Reject)?;
    let (main, _) = SledBuffer::open(&data_dir.join("buffer"), u64::MAX, WhenFull::Reject)?;
    let held = q.oldest(usize::MAX)?;
    let mut moved = Vec::new();
    let mut records = Vec::new();
    for (seq, bytes) in &held {
        if let Some((_, record)) = decode(bytes) {
            if crate::record::decode(record).is_some() {
                records.push(record.to_vec());
                moved.push(*seq);
            }
        }
    }
    // Into the buffer first, then out of the quarantine: a crash between sends a batch twice,
    // which the cloud stores once.
    main.append(&records)?;
    q.remove(&moved)?;
    Ok(moved.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hub: &str, readings: u64) -> Entry {
        let record = crate::record::encode(&crate::record::Record {
            readings: readings as u32,
            fresh: false,
            machine_id: hub,
            timestamp: 0,
            signature: "c2ln",
            json: b"{}",
            packed: false,
        })
        .unwrap();
        Entry { record, hub: hub.into(), readings, reason: "refused: clock".into() }
    }

    #[test]
    fn counts_survive_a_restart_and_entries_can_be_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Quarantine::open(dir.path(), 1 << 20).unwrap();
            q.put(&[entry("a", 3), entry("b", 2)]).unwrap();
            q.put(&[entry("a", 4)]).unwrap();
            let (g, counts) = q.to_report().expect("changed counts are reported");
            assert_eq!(counts, BTreeMap::from([("a".into(), 7), ("b".into(), 2)]));
            q.reported(g);
            assert!(q.to_report().is_none(), "reported once, not with every forward");
        }
        let q = Quarantine::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(q.counts(), BTreeMap::from([("a".into(), 7), ("b".into(), 2)]));
        assert!(q.to_report().is_some(), "totals are sent again after a start");
        drop(q);
        let listed = report(dir.path()).unwrap();
        assert_eq!(listed["held"], 3);
        assert_eq!(listed["entries"][0]["hub"], "a");
        assert_eq!(listed["entries"][0]["reason"], "refused: clock");
        assert_eq!(resend(dir.path()).unwrap(), 3);
        let (main, _) = SledBuffer::open(&dir.path().join("buffer"), u64::MAX, WhenFull::Reject).unwrap();
        let back = main.oldest(10).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(crate::record::decode(&back[2].1).unwrap().readings, 4);
        drop(main);
        assert_eq!(report(dir.path()).unwrap()["held"], 0);
        assert_eq!(report(dir.path()).unwrap()["counts"]["a"], 7, "the count of what was put aside stays");
    }
}
