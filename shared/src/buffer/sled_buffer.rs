use super::{record_cost, BufferError, BufferStats, Storage, WhenFull};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const META_NEXT_SEQ: &[u8] = b"next_seq";
const META_DROPPED: &[u8] = b"dropped";

/// sled's page cache defaults to 1 GiB and RAM use grows toward the database size; an agent that
/// promises a small footprint keeps it to a few MiB. Reads are mostly sequential anyway.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// Seqs are reserved in blocks in a small file beside the database, so that even a buffer that sled
/// had to truncate, or that was moved aside as corrupt, never hands out a `seq` again: a reused
/// `seq` would be taken for a duplicate by the cloud and silently discarded.
const SEQ_BLOCK: u64 = 1 << 16;

/// How [`SledBuffer::open`] found the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutcome {
    /// Opened what was there (possibly nothing yet).
    Opened,
    /// The old buffer was unreadable: it was moved aside to `moved_to` and a fresh one started.
    /// The caller must report this loss; the old directory stays for inspection.
    Recovered { moved_to: PathBuf, reason: String },
}

/// The durable buffer on sled. Records live in tree `records` under their big-endian `seq`, so
/// key order is `seq` order; counters live in tree `meta`.
pub struct SledBuffer {
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
    quota: u64,
    when_full: WhenFull,
    state: Mutex<Counters>,
    /// Records with `seq` below this have been flushed; readers see only those.
    durable_next: AtomicU64,
    /// The file holding the seq reservation, and the reservation itself: no `seq` at or above it
    /// has been handed out.
    floor_file: PathBuf,
    reserved: AtomicU64,
}

struct Counters {
    len: u64,
    bytes: u64,
    dropped: u64,
    next_seq: u64,
}

impl SledBuffer {
    /// Opens (or creates) the buffer at `path`. A corrupt buffer is never a crash loop: it is moved
    /// aside, a fresh one starts, and [`OpenOutcome::Recovered`] says so.
    pub fn open(path: &Path, quota: u64, when_full: WhenFull) -> Result<(Self, OpenOutcome), BufferError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|source| BufferError::Io { path: parent.to_path_buf(), source })?;
        }
        match Self::open_existing(path, quota, when_full) {
            Ok(buffer) => Ok((buffer, OpenOutcome::Opened)),
            Err(BufferError::Storage(e)) if is_corruption(&e) => {
                let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
                let moved_to = path.with_extension(format!("corrupt-{stamp}"));
                std::fs::rename(path, &moved_to)
                    .map_err(|source| BufferError::Io { path: path.to_path_buf(), source })?;
                tracing::error!(path = %path.display(), moved_to = %moved_to.display(), error = %e,
                    "buffer unreadable; moved aside, starting a fresh one");
                let buffer = Self::open_existing(path, quota, when_full)?;
                Ok((buffer, OpenOutcome::Recovered { moved_to, reason: e.to_string() }))
            }
            Err(e) => Err(e),
        }
    }

    fn open_existing(path: &Path, quota: u64, when_full: WhenFull) -> Result<Self, BufferError> {
        let db =
            sled::Config::new().path(path).cache_capacity(CACHE_BYTES).flush_every_ms(Some(1000)).open()?;
        let records = db.open_tree("records")?;
        let meta = db.open_tree("meta")?;
        let mut len = 0u64;
        let mut bytes = 0u64;
        let mut last = 0u64;
        // One pass over the records at start: it both rebuilds the counters and proves every page
        // is readable, so corruption shows here and not in the middle of an upload.
        for item in records.iter() {
            let (k, v) = item?;
            len += 1;
            bytes += record_cost(&v);
            last = decode_seq(&k);
        }
        let floor_file = seq_floor_path(path);
        let reserved = read_floor(&floor_file);
        let next_seq = match meta.get(META_NEXT_SEQ)? {
            Some(v) => decode_seq(&v).max(last + 1).max(1),
            // The database lost its own counter (fresh start after corruption, or sled dropped
            // more than an unflushed tail): continue above everything ever handed out.
            None => {
                if reserved > 1 {
                    tracing::warn!(path = %path.display(), floor = reserved,
                        "buffer lost its sequence counter; continuing above the reserved floor");
                }
                reserved.max(last + 1).max(1)
            }
        };
        let dropped = meta.get(META_DROPPED)?.map(|v| decode_seq(&v)).unwrap_or(0);
        Ok(SledBuffer {
            db,
            records,
            meta,
            quota,
            when_full,
            state: Mutex::new(Counters { len, bytes, dropped, next_seq }),
            durable_next: AtomicU64::new(next_seq),
            floor_file,
            reserved: AtomicU64::new(reserved),
        })
    }

    fn visible(&self, seq: u64) -> bool {
        seq < self.durable_next.load(Ordering::Acquire)
    }

    fn collect(
        &self,
        iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
        n: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, BufferError> {
        let mut out = Vec::with_capacity(n.min(4096));
        for item in iter {
            if out.len() >= n {
                break;
            }
            let (k, v) = item?;
            let seq = decode_seq(&k);
            if self.visible(seq) {
                out.push((seq, v.to_vec()));
            }
        }
        Ok(out)
    }
}

impl Storage for SledBuffer {
    fn append(&self, records: &[Vec<u8>]) -> Result<Range<u64>, BufferError> {
        let range = {
            let mut c = self.state.lock().unwrap();
            let needed: u64 = records.iter().map(|r| record_cost(r)).sum();
            let mut batch = sled::Batch::default();
            if c.bytes + needed > self.quota {
                match self.when_full {
                    WhenFull::Reject => {
                        return Err(BufferError::Full { bytes: c.bytes, quota: self.quota, needed });
                    }
                    WhenFull::DropOldest => {
                        let mut freed = 0u64;
                        let mut count = 0u64;
                        for item in self.records.iter() {
                            if c.bytes - freed + needed <= self.quota {
                                break;
                            }
                            let (k, v) = item?;
                            freed += record_cost(&v);
                            count += 1;
                            batch.remove(k);
                        }
                        c.bytes -= freed;
                        c.len -= count;
                        c.dropped += count;
                        if count > 0 {
                            tracing::warn!(
                                dropped = count,
                                total_dropped = c.dropped,
                                "buffer quota full: dropped oldest readings"
                            );
                        }
                    }
                }
            }
            let start = c.next_seq;
            // A single append larger than the whole quota keeps only its newest records.
            let mut skip = 0usize;
            if self.when_full == WhenFull::DropOldest && c.bytes + needed > self.quota {
                let mut excess = c.bytes + needed - self.quota;
                while skip < records.len() && excess > 0 {
                    excess = excess.saturating_sub(record_cost(&records[skip]));
                    skip += 1;
                }
                c.dropped += skip as u64;
            }
            for (i, r) in records.iter().enumerate() {
                if i >= skip {
                    batch.insert(&(start + i as u64).to_be_bytes(), r.as_slice());
                    c.bytes += record_cost(r);
                    c.len += 1;
                }
            }
            c.next_seq = start + records.len() as u64;
            if c.next_seq > self.reserved.load(Ordering::Acquire) {
                let reserve = c.next_seq + SEQ_BLOCK;
                write_floor(&self.floor_file, reserve)?;
                self.reserved.store(reserve, Ordering::Release);
            }
            self.records.apply_batch(batch)?;
            self.meta.insert(META_NEXT_SEQ, &c.next_seq.to_be_bytes())?;
            self.meta.insert(META_DROPPED, &c.dropped.to_be_bytes())?;
            start..c.next_seq
        };
        // Flush outside the lock: appends that arrive meanwhile ride along with the next flush.
        self.db.flush()?;
        self.durable_next.fetch_max(range.end, Ordering::AcqRel);
        Ok(range)
    }

    fn oldest(&self, n: usize) -> Result<Vec<(u64, Vec<u8>)>, BufferError> {
        self.collect(self.records.iter(), n)
    }

    fn newest(&self, n: usize) -> Result<Vec<(u64, Vec<u8>)>, BufferError> {
        self.collect(self.records.iter().rev(), n)
    }

    /// Removal is made durable by the next flush, not awaited here: after a crash a removed record
    /// may come back and be sent again, which the next hop's exactly-once storage absorbs. That
    /// trade keeps acknowledgements free of an fsync each.
    fn remove(&self, seqs: &[u64]) -> Result<(), BufferError> {
        let mut c = self.state.lock().unwrap();
        for seq in seqs {
            if let Some(v) = self.records.remove(seq.to_be_bytes())? {
                c.bytes -= record_cost(&v);
                c.len -= 1;
            }
        }
        Ok(())
    }

    fn delete_through(&self, through: u64) -> Result<u64, BufferError> {
        let mut c = self.state.lock().unwrap();
        let mut batch = sled::Batch::default();
        let mut count = 0u64;
        for item in self.records.range(..=through.to_be_bytes()) {
            let (k, v) = item?;
            c.bytes -= record_cost(&v);
            c.len -= 1;
            count += 1;
            batch.remove(k);
        }
        self.records.apply_batch(batch)?;
        Ok(count)
    }

    fn stats(&self) -> BufferStats {
        let c = self.state.lock().unwrap();
        BufferStats {
            len: c.len,
            bytes: c.bytes,
            quota: self.quota,
            dropped: c.dropped,
            next_seq: c.next_seq,
        }
    }
}

impl Drop for SledBuffer {
    fn drop(&mut self) {
        // Make removals durable on a clean stop so a restart does not resend acknowledged records.
        let _ = self.db.flush();
    }
}

fn seq_floor_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".seq-floor");
    db.with_file_name(name)
}

fn read_floor(path: &Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1)
}

/// Write, fsync, rename: the floor is either the old or the new value, never a torn one.
fn write_floor(path: &Path, value: u64) -> Result<(), BufferError> {
    use std::io::Write;
    let io = |source| BufferError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(value.to_string().as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

fn decode_seq(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[8 - n..].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(b)
}

fn is_corruption(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) | sled::Error::Unsupported(_))
}
