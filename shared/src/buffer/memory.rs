use super::{record_cost, BufferError, BufferStats, Quarantined, Storage, WhenFull, QUARANTINE_SHARE};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

/// The in-memory twin of [`super::SledBuffer`], with the same quota rules, for unit tests. It keeps
/// nothing across restarts, so "durable" here only means "held".
pub struct MemoryBuffer {
    inner: Mutex<Inner>,
    quota: u64,
    when_full: WhenFull,
}

struct Inner {
    records: BTreeMap<u64, Vec<u8>>,
    bytes: u64,
    dropped: u64,
    next_seq: u64,
    quarantine: BTreeMap<u64, (String, Vec<u8>)>,
    quarantine_bytes: u64,
    quarantined: u64,
}

impl MemoryBuffer {
    pub fn new(quota: u64, when_full: WhenFull) -> Self {
        MemoryBuffer {
            inner: Mutex::new(Inner {
                records: BTreeMap::new(),
                bytes: 0,
                dropped: 0,
                next_seq: 1,
                quarantine: BTreeMap::new(),
                quarantine_bytes: 0,
                quarantined: 0,
            }),
            quota,
            when_full,
        }
    }
}

impl Storage for MemoryBuffer {
    fn append(&self, records: &[Vec<u8>]) -> Result<Range<u64>, BufferError> {
        let mut inner = self.inner.lock().unwrap();
        let needed: u64 = records.iter().map(|r| record_cost(r)).sum();
        if inner.bytes + needed > self.quota {
            match self.when_full {
                WhenFull::Reject => {
                    return Err(BufferError::Full { bytes: inner.bytes, quota: self.quota, needed })
                }
                WhenFull::DropOldest => {
                    while inner.bytes + needed > self.quota {
                        let Some((_, v)) = inner.records.pop_first() else { break };
                        inner.bytes -= record_cost(&v);
                        inner.dropped += 1;
                    }
                }
            }
        }
        let start = inner.next_seq;
        for r in records {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.bytes += record_cost(r);
            inner.records.insert(seq, r.clone());
        }
        // A single append larger than the whole quota keeps only its newest records.
        while inner.bytes > self.quota {
            let Some((_, v)) = inner.records.pop_first() else { break };
            inner.bytes -= record_cost(&v);
            inner.dropped += 1;
        }
        Ok(start..inner.next_seq)
    }

    fn oldest(&self, n: usize) -> Result<Vec<(u64, Vec<u8>)>, BufferError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner.records.iter().take(n).map(|(k, v)| (*k, v.clone())).collect())
    }

    fn newest(&self, n: usize) -> Result<Vec<(u64, Vec<u8>)>, BufferError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner.records.iter().rev().take(n).map(|(k, v)| (*k, v.clone())).collect())
    }

    fn remove(&self, seqs: &[u64]) -> Result<(), BufferError> {
        let mut inner = self.inner.lock().unwrap();
        for seq in seqs {
            if let Some(v) = inner.records.remove(seq) {
                inner.bytes -= record_cost(&v);
            }
        }
        Ok(())
    }

    fn delete_through(&self, through: u64) -> Result<u64, BufferError> {
        let mut inner = self.inner.lock().unwrap();
        let keep = inner.records.split_off(&(through + 1));
        let gone = std::mem::replace(&mut inner.records, keep);
        for v in gone.values() {
            inner.bytes -= record_cost(v);
        }
        Ok(gone.len() as u64)
    }

    fn stats(&self) -> BufferStats {
        let inner = self.inner.lock().unwrap();
        BufferStats {
            len: inner.records.len() as u64,
            bytes: inner.bytes,
            quota: self.quota,
            dropped: inner.dropped,
            next_seq: inner.next_seq,
            quarantined: inner.quarantined,
            quarantine_len: inner.quarantine.len() as u64,
            quarantine_bytes: inner.quarantine_bytes,
        }
    }

    fn quarantine(&self, items: &[(u64, String)]) -> Result<u64, BufferError> {
        let mut inner = self.inner.lock().unwrap();
        let mut moved = 0;
        for (seq, reason) in items {
            let Some(v) = inner.records.remove(seq) else { continue };
            inner.bytes -= record_cost(&v);
            inner.quarantine_bytes += record_cost(&v);
            if let Some((_, old)) = inner.quarantine.insert(*seq, (reason.clone(), v)) {
                inner.quarantine_bytes -= record_cost(&old);
            }
            moved += 1;
        }
        inner.quarantined += moved;
        while inner.quarantine_bytes > self.quota / QUARANTINE_SHARE {
            let Some((_, (_, v))) = inner.quarantine.pop_first() else { break };
            inner.quarantine_bytes -= record_cost(&v);
            inner.dropped += 1;
        }
        Ok(moved)
    }

    fn quarantined(&self, n: usize) -> Result<Vec<Quarantined>, BufferError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .quarantine
            .iter()
            .take(n)
            .map(|(seq, (reason, record))| Quarantined {
                seq: *seq,
                reason: reason.clone(),
                record: record.clone(),
            })
            .collect())
    }

    fn requeue(&self) -> Result<u64, BufferError> {
        let mut inner = self.inner.lock().unwrap();
        let all = std::mem::take(&mut inner.quarantine);
        inner.quarantine_bytes = 0;
        let n = all.len() as u64;
        for (seq, (_, v)) in all {
            inner.bytes += record_cost(&v);
            inner.records.insert(seq, v);
        }
        Ok(n)
    }
}
