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

/// Most records in one chunk: large enough to amortise sled's per-operation cost, small enough
/// that acknowledging a few live readings rewrites little.
const CHUNK_ITEMS: usize = 512;

/// A chunk on disk: `(seq u64 BE, len u32 BE, bytes)` per record, ascending `seq`.
fn encode_chunk<'a>(items: impl Iterator<Item = (u64, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (seq, bytes) in items {
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn decode_chunk(v: &[u8]) -> Result<Vec<(u64, &[u8])>, BufferError> {
    let mut items = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(BufferError::Malformed("truncated record in chunk".into()));
        }
        let seq = decode_seq(&rest[..8]);
        let len = u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
        if rest.len() < 12 + len {
            return Err(BufferError::Malformed("truncated record in chunk".into()));
        }
        items.push((seq, &rest[12..12 + len]));
        rest = &rest[12 + len..];
    }
    Ok(items)
}

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

/// The durable buffer on sled. Records are stored in chunks: one sled value holds up to
/// [`CHUNK_ITEMS`] records of one append, keyed by the big-endian `seq` of its first record, so key
/// order is `seq` order. One sled operation per chunk instead of per record is what makes a
/// group commit of thousands of readings cheap. Counters live in tree `meta`.
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
    /// Appends from many hubs at once share flushes, one at a time (see `group_flush`).
    flusher: crate::group_flush::GroupFlush,
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
            Err(e) if is_corruption(&e) => {
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
            let (_, v) = item?;
            for (seq, rec) in decode_chunk(&v)? {
                len += 1;
                bytes += record_cost(rec);
                last = seq;
            }
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
            records,
            meta,
            quota,
            when_full,
            state: Mutex::new(Counters { len, bytes, dropped, next_seq }),
            durable_next: AtomicU64::new(next_seq),
            floor_file,
            reserved: AtomicU64::new(reserved),
            flusher: crate::group_flush::GroupFlush::new(db.clone()),
            db,
        })
    }

    fn visible(&self, seq: u64) -> bool {
        seq < self.durable_next.load(Ordering::Acquire)
    }

    /// Up to `n` visible records from chunks in the order `chunks` yields them; `rev` reverses
    /// the records inside each chunk too (newest first).
    fn collect(
        &self,
        chunks: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
        n: usize,
        rev: bool,
    ) -> Result<Vec<(u64, Vec<u8>)>, BufferError> {
        let mut out = Vec::with_capacity(n.min(4096));
        for item in chunks {
            if out.len() >= n {
                break;
            }
            let (_, v) = item?;
            let mut items = decode_chunk(&v)?;
            if rev {
                items.reverse();
            }
            for (seq, rec) in items {
                if out.len() >= n {
                    break;
                }
                if self.visible(seq) {
                    out.push((seq, rec.to_vec()));
                }
            }
        }
        Ok(out)
    }

    /// Removes the records of one chunk for which `gone` holds; rewrites or deletes the chunk.
    /// Returns the number and cost of the removed records.
    fn prune_chunk(
        &self,
        key: &[u8],
        value: &[u8],
        gone: impl Fn(u64) -> bool,
    ) -> Result<(u64, u64), BufferError> {
        let items = decode_chunk(value)?;
        let (drop, keep): (Vec<_>, Vec<_>) = items.into_iter().partition(|(seq, _)| gone(*seq));
        if drop.is_empty() {
            return Ok((0, 0));
        }
        if keep.is_empty() {
            self.records.remove(key)?;
        } else {
            self.records.insert(key, encode_chunk(keep.into_iter()))?;
        }
        Ok((drop.len() as u64, drop.iter().map(|(_, r)| record_cost(r)).sum()))
    }
}

impl Storage for SledBuffer {
    fn append(&self, records: &[Vec<u8>]) -> Result<Range<u64>, BufferError> {
        let range = {
            let mut c = self.state.lock().unwrap();
            let needed: u64 = records.iter().map(|r| record_cost(r)).sum();
            if c.bytes + needed > self.quota {
                match self.when_full {
                    WhenFull::Reject => {
                        return Err(BufferError::Full { bytes: c.bytes, quota: self.quota, needed });
                    }
                    WhenFull::DropOldest => {
                        let (count, freed) = self.drop_oldest(c.bytes + needed - self.quota)?;
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
            let kept: Vec<(u64, &[u8])> = records
                .iter()
                .enumerate()
                .skip(skip)
                .map(|(i, r)| (start + i as u64, r.as_slice()))
                .collect();
            for part in kept.chunks(CHUNK_ITEMS) {
                self.records.insert(part[0].0.to_be_bytes(), encode_chunk(part.iter().copied()))?;
                c.len += part.len() as u64;
                c.bytes += part.iter().map(|(_, r)| record_cost(r)).sum::<u64>();
            }
            c.next_seq = start + records.len() as u64;
            if c.next_seq > self.reserved.load(Ordering::Acquire) {
                let reserve = c.next_seq + SEQ_BLOCK;
                write_floor(&self.floor_file, reserve)?;
                self.reserved.store(reserve, Ordering::Release);
            }
            self.meta.insert(META_NEXT_SEQ, &c.next_seq.to_be_bytes())?;
            self.meta.insert(META_DROPPED, &c.dropped.to_be_bytes())?;
            start..c.next_seq
        };
        // Flush outside the lock: appends that arrive meanwhile ride along with the next flush.
        self.flusher.flush_blocking()?;
        self.durable_next.fetch_max(range.end, Ordering::AcqRel);
        Ok(range)
    }

    fn oldest(&self, n: usize) -> Result<Vec<(u64, Vec<u8>)>, BufferError> {
        self.collect(self.records.iter(), n, false)
    }

    fn newest(&self, n: usize) -> Result<Vec<(u64, Vec<u8>)>, BufferError> {
        self.collect(self.records.iter().rev(), n, true)
    }

    /// Removal is made durable by the next flush, not awaited here: after a crash a removed record
    /// may come back and be sent again, which the next hop's exactly-once storage absorbs. That
    /// trade keeps acknowledgements free of an fsync each.
    fn remove(&self, seqs: &[u64]) -> Result<(), BufferError> {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut c = self.state.lock().unwrap();
        let mut i = 0;
        while i < sorted.len() {
            let Some(item) = self.records.range(..=sorted[i].to_be_bytes()).next_back() else {
                i += 1; // older than every chunk: already gone
                continue;
            };
            let (k, v) = item?;
            let next_chunk =
                self.records.range((std::ops::Bound::Excluded(k.clone()), std::ops::Bound::Unbounded)).next();
            let end = match next_chunk {
                Some(n) => decode_seq(&n?.0),
                None => u64::MAX,
            };
            let j = i + sorted[i..].partition_point(|s| *s < end);
            let set = &sorted[i..j];
            let (count, freed) = self.prune_chunk(&k, &v, |s| set.binary_search(&s).is_ok())?;
            c.len -= count;
            c.bytes -= freed;
            i = j;
        }
        Ok(())
    }

    fn delete_through(&self, through: u64) -> Result<u64, BufferError> {
        let mut c = self.state.lock().unwrap();
        let mut total = 0;
        for item in self.records.range(..=through.to_be_bytes()) {
            let (k, v) = item?;
            let (count, freed) = self.prune_chunk(&k, &v, |s| s <= through)?;
            c.len -= count;
            c.bytes -= freed;
            total += count;
        }
        Ok(total)
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

impl SledBuffer {
    /// Drops the oldest records until at least `need` bytes are free; whole chunks where possible.
    fn drop_oldest(&self, need: u64) -> Result<(u64, u64), BufferError> {
        let (mut count, mut freed) = (0u64, 0u64);
        while freed < need {
            let Some(item) = self.records.iter().next() else { break };
            let (k, v) = item?;
            let items = decode_chunk(&v)?;
            if items.is_empty() {
                self.records.remove(&k)?;
                continue;
            }
            let mut cut = 0usize;
            let mut f = 0u64;
            while cut < items.len() && freed + f < need {
                f += record_cost(items[cut].1);
                cut += 1;
            }
            let last_dropped = items[cut - 1].0;
            let (n, b) = self.prune_chunk(&k, &v, |s| s <= last_dropped)?;
            count += n;
            freed += b;
        }
        Ok((count, freed))
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

fn is_corruption(e: &BufferError) -> bool {
    match e {
        BufferError::Storage(e) => {
            matches!(
                e,
                sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) | sled::Error::Unsupported(_)
            )
        }
        BufferError::Malformed(_) => true,
        _ => false,
    }
}
