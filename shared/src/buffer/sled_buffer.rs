use super::{record_cost, BufferError, BufferStats, Quarantined, Storage, WhenFull, QUARANTINE_SHARE};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const META_NEXT_SEQ: &[u8] = b"next_seq";
const META_DROPPED: &[u8] = b"dropped";
const META_QUARANTINED: &[u8] = b"quarantined";

/// sled's page cache defaults to 1 GiB and RAM use grows toward the database size; an agent that
/// promises a small footprint keeps it to a few MiB. Reads are mostly sequential anyway.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// Most records in one chunk: large enough to amortise sled's per-operation cost, small enough
/// that acknowledging a few live readings rewrites little.
const CHUNK_ITEMS: usize = 512;

/// Most bytes in one chunk (a single larger record is a chunk of its own). This bounds memory,
/// not disk: sled 0.34 keeps at least one leaf resident in each of its cache's 256 shards
/// whatever the cache's capacity, and a leaf holds up to 16 values, so the size of a value sets
/// what a large backlog keeps in memory. Measured with a million readings buffered: 57 MB
/// resident with 8 KiB chunks, 108 MB with chunks of 512 readings, about 57 KB each
/// (BENCHMARKS.md); appends of a sampling round's size are as fast as before.
const CHUNK_BYTES: usize = 8 * 1024;

/// Splits one append's records into chunks of at most [`CHUNK_ITEMS`] records and
/// [`CHUNK_BYTES`] bytes as encoded, in order.
fn chunks_of<'a, 'r>(kept: &'a [(u64, &'r [u8])]) -> Vec<&'a [(u64, &'r [u8])]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, r)) in kept.iter().enumerate() {
        let size = 12 + r.len();
        if i > start && (i - start == CHUNK_ITEMS || bytes + size > CHUNK_BYTES) {
            out.push(&kept[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < kept.len() {
        out.push(&kept[start..]);
    }
    out
}

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

// The seq floor: a small file beside the database holds the seq after the last one made visible,
// so that even a buffer that sled had to truncate, or that was moved aside as corrupt, never hands
// out a seq again: a reused seq would be taken for a duplicate by the cloud and discarded. It is
// exact, not a reservation of blocks, so seqs stay gap-free across restarts (a gap is how loss
// shows); it is written after the flush and before the records become visible, so no seq can be
// sent onward unless the floor already covers it.

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
/// [`CHUNK_ITEMS`] records (and [`CHUNK_BYTES`]) of one append, keyed by the big-endian `seq` of its first record, so key
/// order is `seq` order. One sled operation per chunk instead of per record is what makes a
/// group commit of thousands of readings cheap. Counters live in tree `meta`, and the loss
/// counters also in a small file beside the database (see [`LossCounters`]). Quarantined records
/// live in tree `quarantine`, one per key (big-endian `seq`), value `(reason len u16 BE, reason,
/// record)`.
pub struct SledBuffer {
    records: sled::Tree,
    meta: sled::Tree,
    quarantine_tree: sled::Tree,
    quota: u64,
    when_full: WhenFull,
    /// Held while the counters and the trees change together, which may be across disk I/O (a
    /// full disk can hold a write for a minute, or for good). Taken only through
    /// [`SledBuffer::counters`].
    state: Mutex<Counters>,
    /// A copy of the counters as of the last change, for [`Storage::stats`]: callers on async
    /// workers must never wait behind a write that waits for the disk (a hub whose runtime workers
    /// all wait there can no longer even notice that its disk stalled, and hangs instead of
    /// exiting).
    published: Mutex<BufferStats>,
    /// Records with `seq` below this have been flushed; readers see only those.
    durable_next: AtomicU64,
    /// The file holding the seq floor, and the floor itself: no `seq` at or above it has been
    /// made visible. A mutex, so that two appends finishing together never write it backwards.
    floor_file: PathBuf,
    reserved: Mutex<u64>,
    /// The file mirroring the loss counters, so they outlive a database moved aside as corrupt.
    counters_file: PathBuf,
    /// The database's directory, for [`Storage::free_space`].
    dir: PathBuf,
    #[cfg(test)]
    pub(super) fail_flushes: std::sync::atomic::AtomicBool,
    /// Appends from many hubs at once share flushes, one at a time (see `group_flush`).
    flusher: crate::group_flush::GroupFlush,
}

/// [`SledBuffer::counters`]: publishes the counters for [`Storage::stats`] when dropped.
pub(super) struct CountersGuard<'a> {
    c: std::sync::MutexGuard<'a, Counters>,
    buffer: &'a SledBuffer,
}

impl std::ops::Deref for CountersGuard<'_> {
    type Target = Counters;
    fn deref(&self) -> &Counters {
        &self.c
    }
}

impl std::ops::DerefMut for CountersGuard<'_> {
    fn deref_mut(&mut self) -> &mut Counters {
        &mut self.c
    }
}

impl Drop for CountersGuard<'_> {
    fn drop(&mut self) {
        let c = &self.c;
        let stats = BufferStats {
            len: c.len,
            bytes: c.bytes,
            quota: self.buffer.quota,
            dropped: c.dropped,
            next_seq: c.next_seq,
            quarantined: c.quarantined,
            quarantine_len: c.quarantine_len,
            quarantine_bytes: c.quarantine_bytes,
        };
        *self.buffer.published.lock().unwrap_or_else(|p| p.into_inner()) = stats;
    }
}

pub(super) struct Counters {
    len: u64,
    bytes: u64,
    dropped: u64,
    next_seq: u64,
    quarantined: u64,
    quarantine_len: u64,
    quarantine_bytes: u64,
}

/// The loss counters as mirrored beside the database (`<name>.counters`, JSON). Both only grow, so
/// on open the larger of the file's and the database's value is right. `held` is the number of
/// records at the last write: if the database must be moved aside as corrupt, that many (about)
/// were lost with it, and the loss is counted instead of forgotten.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct LossCounters {
    dropped: u64,
    quarantined: u64,
    held: u64,
}

impl SledBuffer {
    /// Opens (or creates) the buffer at `path`. A corrupt buffer is never a crash loop: it is moved
    /// aside, a fresh one starts, and [`OpenOutcome::Recovered`] says so.
    pub fn open(path: &Path, quota: u64, when_full: WhenFull) -> Result<(Self, OpenOutcome), BufferError> {
        super::sled_threads::with_idle_pool_slack(|| {
            let (buffer, outcome) = Self::open_or_recover(path, quota, when_full)?;
            // A first write, so that sled's I/O pool surely starts here, with the slack: a fresh
            // database has nothing to recover, which would start it otherwise.
            buffer.flush()?;
            Ok((buffer, outcome))
        })
    }

    fn open_or_recover(
        path: &Path,
        quota: u64,
        when_full: WhenFull,
    ) -> Result<(Self, OpenOutcome), BufferError> {
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
                // The records of the old database are lost to the send queue: count them as
                // dropped (the last count written beside it; the exact number died with it).
                let lost = read_counters(&buffer.counters_file).held;
                {
                    let mut c = buffer.counters();
                    c.dropped += lost;
                    buffer.meta.insert(META_DROPPED, &c.dropped.to_be_bytes())?;
                    buffer.save_counters(&c)?;
                }
                buffer.flush()?;
                tracing::error!(
                    lost_about = lost,
                    "readings lost with the unreadable buffer counted as dropped"
                );
                Ok((buffer, OpenOutcome::Recovered { moved_to, reason: e.to_string() }))
            }
            Err(e) => Err(e),
        }
    }

    fn open_existing(path: &Path, quota: u64, when_full: WhenFull) -> Result<Self, BufferError> {
        // No background flusher: every append (and quarantine) flushes before it returns, and a
        // removal rides on the next flush (see `remove`). sled's flusher thread woke every second
        // for nothing else and was a seventh of an idle hub's CPU time.
        let db = sled::Config::new().path(path).cache_capacity(CACHE_BYTES).flush_every_ms(None).open()?;
        let records = db.open_tree("records")?;
        let meta = db.open_tree("meta")?;
        let quarantine_tree = db.open_tree("quarantine")?;
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
        let (mut quarantine_len, mut quarantine_bytes) = (0u64, 0u64);
        for item in quarantine_tree.iter() {
            let (_, v) = item?;
            let (_, rec) = decode_quarantined(&v)?;
            quarantine_len += 1;
            quarantine_bytes += record_cost(rec);
        }
        let floor_file = seq_floor_path(path);
        let reserved = read_floor(&floor_file);
        let counter = meta.get(META_NEXT_SEQ)?.map(|v| decode_seq(&v));
        // sled's own counter can be behind what was handed out (it lost an unflushed tail, or the
        // database was replaced): the floor file is the promise that no seq at or above it was
        // used, so the next seq is above all three.
        let next_seq = counter.unwrap_or(1).max(last + 1).max(reserved).max(1);
        if counter.is_none_or(|c| c < reserved) && reserved > 1 {
            tracing::warn!(path = %path.display(), counter = ?counter, floor = reserved,
                "buffer sequence counter is behind the reserved floor; continuing above the floor");
        }
        let counters_file = counters_path(path);
        let side = read_counters(&counters_file);
        let dropped = meta.get(META_DROPPED)?.map(|v| decode_seq(&v)).unwrap_or(0).max(side.dropped);
        let quarantined =
            meta.get(META_QUARANTINED)?.map(|v| decode_seq(&v)).unwrap_or(0).max(side.quarantined);
        Ok(SledBuffer {
            records,
            meta,
            quarantine_tree,
            quota,
            when_full,
            published: Mutex::new(BufferStats {
                len,
                bytes,
                quota,
                dropped,
                next_seq,
                quarantined,
                quarantine_len,
                quarantine_bytes,
            }),
            state: Mutex::new(Counters {
                len,
                bytes,
                dropped,
                next_seq,
                quarantined,
                quarantine_len,
                quarantine_bytes,
            }),
            durable_next: AtomicU64::new(next_seq),
            floor_file,
            reserved: Mutex::new(reserved),
            counters_file,
            dir: path.to_path_buf(),
            #[cfg(test)]
            fail_flushes: std::sync::atomic::AtomicBool::new(false),
            flusher: crate::group_flush::GroupFlush::new(db),
        })
    }

    /// The counters, locked for a change; the copy [`Storage::stats`] reads is refreshed when the
    /// guard goes.
    pub(super) fn counters(&self) -> CountersGuard<'_> {
        CountersGuard { c: self.state.lock().unwrap_or_else(|p| p.into_inner()), buffer: self }
    }

    /// Makes every write so far durable. The one place the buffer waits for the disk, so that a
    /// group-commit flusher can take its place.
    fn flush(&self) -> Result<(), BufferError> {
        #[cfg(test)]
        if self.fail_flushes.load(Ordering::Acquire) {
            return Err(BufferError::Storage(sled::Error::Io(std::io::Error::other(
                "injected flush failure",
            ))));
        }
        self.flusher.flush_blocking().map_err(|e| {
            if self.flusher.stalled() {
                BufferError::Stalled(e.to_string())
            } else {
                BufferError::Storage(e)
            }
        })
    }

    /// Raises the seq floor to `end` before records below it become visible.
    fn raise_floor(&self, end: u64) -> Result<(), BufferError> {
        let mut floor = self.reserved.lock().unwrap();
        if end > *floor {
            write_floor(&self.floor_file, end)?;
            *floor = end;
        }
        Ok(())
    }

    /// Mirrors the loss counters beside the database (write, fsync, rename).
    fn save_counters(&self, c: &Counters) -> Result<(), BufferError> {
        let side = LossCounters { dropped: c.dropped, quarantined: c.quarantined, held: c.len };
        write_atomically(&self.counters_file, &serde_json::to_vec(&side).expect("counters serialise"))
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
    /// Atomic: the floor file first (so no seq handed out is ever below it), then every chunk and
    /// the counter in one sled transaction, then the flush. `next_seq` moves only when all of it
    /// worked; a failed append is rolled back and leaves no record and no seq behind, so the
    /// caller's retry gets the same seqs and nothing is stored twice.
    fn append(&self, records: &[Vec<u8>]) -> Result<Range<u64>, BufferError> {
        let mut c = self.counters();
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
                    if count > 0 {
                        c.dropped += count;
                        self.meta.insert(META_DROPPED, &c.dropped.to_be_bytes())?;
                        self.save_counters(&c)?;
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
        let end = start + records.len() as u64;
        // A single append larger than the whole quota keeps only its newest records.
        let mut skip = 0usize;
        if self.when_full == WhenFull::DropOldest && c.bytes + needed > self.quota {
            let mut excess = c.bytes + needed - self.quota;
            while skip < records.len() && excess > 0 {
                excess = excess.saturating_sub(record_cost(&records[skip]));
                skip += 1;
            }
        }
        let kept: Vec<(u64, &[u8])> =
            records.iter().enumerate().skip(skip).map(|(i, r)| (start + i as u64, r.as_slice())).collect();
        let dropped = c.dropped + skip as u64;
        let chunks: Vec<([u8; 8], Vec<u8>)> = chunks_of(&kept)
            .into_iter()
            .map(|part| (part[0].0.to_be_bytes(), encode_chunk(part.iter().copied())))
            .collect();
        (&self.records, &self.meta)
            .transaction(|(r, m)| {
                for (k, v) in &chunks {
                    r.insert(k, v.as_slice())?;
                }
                m.insert(META_NEXT_SEQ, &end.to_be_bytes())?;
                m.insert(META_DROPPED, &dropped.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(tx_error)?;
        let added_bytes: u64 = kept.iter().map(|(_, r)| record_cost(r)).sum();
        c.len += kept.len() as u64;
        c.bytes += added_bytes;
        c.next_seq = end;
        if skip > 0 {
            c.dropped = dropped;
            self.save_counters(&c)?;
        }
        drop(c);
        // Flush outside the lock: appends that arrive meanwhile ride along with the next flush.
        if let Err(e) = self.flush().and_then(|()| self.raise_floor(end)) {
            self.undo_append(start, end, &chunks, kept.len() as u64, added_bytes);
            return Err(e);
        }
        self.durable_next.fetch_max(end, Ordering::AcqRel);
        Ok(start..end)
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
        let mut c = self.counters();
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
        let mut c = self.counters();
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

    /// The copy published when the counters last changed: never waits for the disk.
    fn free_space(&self) -> Option<u64> {
        fs2::available_space(&self.dir).ok()
    }

    fn stats(&self) -> BufferStats {
        *self.published.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn quarantine(&self, items: &[(u64, String)]) -> Result<u64, BufferError> {
        let mut c = self.counters();
        let mut moved = 0u64;
        for (seq, reason) in items {
            let Some(item) = self.records.range(..=seq.to_be_bytes()).next_back() else { continue };
            let (k, v) = item?;
            let Some(rec) = decode_chunk(&v)?.into_iter().find(|(s, _)| s == seq).map(|(_, r)| r.to_vec())
            else {
                continue;
            };
            // The quarantined copy goes in before the send-queue copy goes out: a crash between
            // the two leaves the record twice (resent, stored once), never nowhere.
            if let Some(old) =
                self.quarantine_tree.insert(seq.to_be_bytes(), encode_quarantined(reason, &rec))?
            {
                let (_, old_rec) = decode_quarantined(&old)?;
                c.quarantine_bytes -= record_cost(old_rec);
                c.quarantine_len -= 1;
            }
            let (count, freed) = self.prune_chunk(&k, &v, |s| s == *seq)?;
            c.len -= count;
            c.bytes -= freed;
            c.quarantine_len += 1;
            c.quarantine_bytes += record_cost(&rec);
            moved += 1;
        }
        c.quarantined += moved;
        // Bounded: the oldest quarantined records give way, counted as dropped.
        let cap = self.quota / QUARANTINE_SHARE;
        let mut overflow = 0u64;
        while c.quarantine_bytes > cap {
            let Some(item) = self.quarantine_tree.iter().next() else { break };
            let (k, v) = item?;
            let (_, rec) = decode_quarantined(&v)?;
            c.quarantine_bytes -= record_cost(rec);
            c.quarantine_len -= 1;
            self.quarantine_tree.remove(k)?;
            overflow += 1;
        }
        if overflow > 0 {
            c.dropped += overflow;
            tracing::warn!(dropped = overflow, "quarantine full: dropped its oldest records");
        }
        self.meta.insert(META_QUARANTINED, &c.quarantined.to_be_bytes())?;
        self.meta.insert(META_DROPPED, &c.dropped.to_be_bytes())?;
        self.save_counters(&c)?;
        self.flush()?;
        Ok(moved)
    }

    fn quarantined(&self, n: usize) -> Result<Vec<Quarantined>, BufferError> {
        let mut out = Vec::new();
        for item in self.quarantine_tree.iter().take(n) {
            let (k, v) = item?;
            let (reason, rec) = decode_quarantined(&v)?;
            out.push(Quarantined { seq: decode_seq(&k), reason: reason.to_string(), record: rec.to_vec() });
        }
        Ok(out)
    }

    fn requeue(&self) -> Result<u64, BufferError> {
        let mut c = self.counters();
        let mut n = 0u64;
        for item in self.quarantine_tree.iter() {
            let (k, v) = item?;
            let seq = decode_seq(&k);
            let (_, rec) = decode_quarantined(&v)?;
            // Chunks cover disjoint seq ranges, each from its key to the next key: the record
            // joins the chunk whose range holds its seq, or starts one before the first.
            let (key, mut items): (Vec<u8>, Vec<(u64, Vec<u8>)>) =
                match self.records.range(..=seq.to_be_bytes()).next_back() {
                    Some(chunk) => {
                        let (ck, cv) = chunk?;
                        let items = decode_chunk(&cv)?.into_iter().map(|(s, r)| (s, r.to_vec())).collect();
                        (ck.to_vec(), items)
                    }
                    None => (seq.to_be_bytes().to_vec(), Vec::new()),
                };
            if items.iter().any(|(s, _)| *s == seq) {
                // Already back in the queue (a crash after a requeue): keep one copy.
                self.quarantine_tree.remove(&k)?;
            } else {
                items.push((seq, rec.to_vec()));
                items.sort_by_key(|(s, _)| *s);
                self.records.insert(key, encode_chunk(items.iter().map(|(s, r)| (*s, r.as_slice()))))?;
                self.quarantine_tree.remove(&k)?;
                c.len += 1;
                c.bytes += record_cost(rec);
            }
            c.quarantine_len -= 1;
            c.quarantine_bytes -= record_cost(rec);
            n += 1;
        }
        self.flush()?;
        Ok(n)
    }
}

impl SledBuffer {
    /// Takes back an append whose flush failed: its chunks go, and its seqs are given back when no
    /// append came behind it (else they stay a gap: a seq is never handed out twice).
    fn undo_append(&self, start: u64, end: u64, chunks: &[([u8; 8], Vec<u8>)], count: u64, bytes: u64) {
        let mut c = self.counters();
        let give_back = c.next_seq == end;
        let undo = (&self.records, &self.meta).transaction(|(r, m)| {
            for (k, _) in chunks {
                r.remove(k)?;
            }
            if give_back {
                m.insert(META_NEXT_SEQ, &start.to_be_bytes())?;
            }
            Ok::<_, ConflictableTransactionError<()>>(())
        });
        match undo {
            Ok(()) => {
                c.len -= count;
                c.bytes -= bytes;
                if give_back {
                    c.next_seq = start;
                }
            }
            // The records stay in the tree but invisible (at or above `durable_next` until a later
            // append's flush covers them); their seqs are not handed out again, so the caller's
            // retry cannot double them in the queue.
            Err(e) => tracing::error!(error = %tx_error(e), "cannot undo a failed append"),
        }
    }

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
        let _ = self.flusher.flush_blocking();
        let c = self.counters();
        let _ = self.save_counters(&c);
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

fn write_floor(path: &Path, value: u64) -> Result<(), BufferError> {
    write_atomically(path, value.to_string().as_bytes())
}

fn counters_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".counters");
    db.with_file_name(name)
}

fn read_counters(path: &Path) -> LossCounters {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Write, fsync, rename: the file holds either the old or the new value, never a torn one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BufferError> {
    use std::io::Write;
    let io = |source| BufferError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

fn encode_quarantined(reason: &str, record: &[u8]) -> Vec<u8> {
    // Reasons are short words; a longer one is cut at a character boundary, not refused.
    let mut cut = reason.len().min(u16::MAX as usize);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = Vec::with_capacity(2 + cut + record.len());
    out.extend_from_slice(&(cut as u16).to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..cut]);
    out.extend_from_slice(record);
    out
}

fn decode_quarantined(v: &[u8]) -> Result<(&str, &[u8]), BufferError> {
    let bad = || BufferError::Malformed("truncated quarantined record".into());
    if v.len() < 2 {
        return Err(bad());
    }
    let n = u16::from_be_bytes([v[0], v[1]]) as usize;
    if v.len() < 2 + n {
        return Err(bad());
    }
    let reason = std::str::from_utf8(&v[2..2 + n]).map_err(|_| bad())?;
    Ok((reason, &v[2 + n..]))
}

fn tx_error(e: TransactionError<()>) -> BufferError {
    match e {
        TransactionError::Storage(e) => BufferError::Storage(e),
        TransactionError::Abort(()) => BufferError::Malformed("buffer transaction aborted".into()),
    }
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

#[cfg(test)]
mod chunk_tests {
    use super::{chunks_of, CHUNK_BYTES, CHUNK_ITEMS};

    #[test]
    fn chunks_hold_at_most_their_count_and_bytes_and_a_larger_record_goes_alone() {
        let sizes = [100usize, 100, 20_000, 5, 7_000, 7_000, 9_000, 1, 1];
        let bodies: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![b'x'; n]).collect();
        let mut kept: Vec<(u64, &[u8])> =
            bodies.iter().enumerate().map(|(i, b)| (i as u64, &b[..])).collect();
        let small: Vec<Vec<u8>> = (0..2000).map(|_| vec![b'r'; 3]).collect();
        kept.extend(small.iter().enumerate().map(|(i, b)| (100 + i as u64, &b[..])));
        let chunks = chunks_of(&kept);
        // In order, nothing lost or repeated.
        let seqs: Vec<u64> = chunks.iter().flat_map(|c| c.iter().map(|(s, _)| *s)).collect();
        assert_eq!(seqs, kept.iter().map(|(s, _)| *s).collect::<Vec<_>>());
        for c in &chunks {
            let bytes: usize = c.iter().map(|(_, r)| 12 + r.len()).sum();
            assert!(c.len() <= CHUNK_ITEMS, "{} records in a chunk", c.len());
            assert!(bytes <= CHUNK_BYTES || c.len() == 1, "{bytes} bytes in a chunk of {}", c.len());
        }
        // The 20,000- and 9,000-byte records each alone; the 3-byte ones 512 at a time.
        assert!(chunks.iter().any(|c| c.len() == 1 && c[0].1.len() == 20_000));
        assert!(chunks.iter().any(|c| c.len() == 1 && c[0].1.len() == 9_000));
        assert_eq!(chunks.iter().filter(|c| c.len() == CHUNK_ITEMS).count(), 3);
        assert!(chunks_of(&[]).is_empty());
    }
}
