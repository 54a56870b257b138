//! The embedded engine: everything in one sled database in the data directory. A raw reading is
//! stored under `(machine, sensor, seq)` with insert-if-absent, so a resent reading lands on the
//! same key and is counted as a duplicate. Writes reach sled's page cache; the database's one
//! group-commit flusher makes them durable ([`ReadingStore::commit`]).
//!
//! Trees:
//! - `raw`: `machine \0 sensor \0 seq(be64)` → `ts_ms(be64) ++ json(RawValue)`; the timestamp in
//!   front lets range queries and retention filter without parsing JSON.
//! - `latest`: `machine \0 sensor` → json(SensorLatest), the newest reading by timestamp.
//! - `machines`: `machine` → json(MachineInfo).
//! - `hourly`: `machine \0 sensor \0 hour_ms(be64)` → json(HourlyAgg), what retention leaves.

pub mod commands;
pub mod mail;
pub mod managed;
pub mod people;
pub mod silences;
pub mod trust;

use super::{
    machine_info, replaces_latest, still_unattached, CompactOutcome, IngestOutcome, PeriodReading,
    ReadingStore, COMPACT_STEP, LATEST_AHEAD,
};
use crate::error::CloudError;
use chrono::{DateTime, TimeZone, Utc};
use outpost_shared::model::{
    Batch, HourlyPoint, MachineInfo, ReadingPoint, SensorLatest, State, UnattachedHub, Value,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Page cache: the hot tail of every sensor of a small site, not the 1 GiB default. sled counts
/// a page by its size on disk, and its tree nodes take several times that in memory: at 64 MiB a
/// backlog of five million readings written in a minute took the cloud to 825 MB resident, at
/// 16 MiB to 627 MB (BENCHMARKS.md), with ingest no slower.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    /// The database's one flusher: acknowledgements and commands share its flushes.
    flusher: outpost_shared::group_flush::GroupFlush,
    raw: sled::Tree,
    latest: sled::Tree,
    machines: sled::Tree,
    hourly: sled::Tree,
    unattached: sled::Tree,
    /// `hub \0 connector` → be64 readings that connector put aside of that hub's data (its
    /// latest total): added to the hub's own count in [`MachineInfo::quarantined`].
    relay_quarantine: sled::Tree,
    /// A latest value stamped further than this ahead of the ingest clock cannot be right: any
    /// reading may replace it, so one bad clock cannot freeze a sensor's latest value.
    latest_ahead: chrono::Duration,
    /// Batches written at once: one per core. Every admitted upload used to be written side by
    /// side (64 at once when a site catches up after an outage), and sled, which copies a tree
    /// node for each change and frees the old copy only when no writer can still read it, held
    /// the more memory the more writers overlapped: 507 MB peak against 351 MB with one per core
    /// for a backlog of five million readings, which drained 12 % slower (BENCHMARKS.md). A
    /// queued batch waits without a thread.
    writers: Arc<tokio::sync::Semaphore>,
    /// For tests: the batches being written at once, seen from inside the write.
    #[cfg(test)]
    pub(crate) writes: Arc<WriteWatch>,
}

/// For tests: how many batches are being written at this moment and at most so far. A write can
/// be held open for a while, so that writers that are allowed to overlap surely do.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct WriteWatch {
    now: std::sync::atomic::AtomicUsize,
    pub peak: std::sync::atomic::AtomicUsize,
    pub hold_ms: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl WriteWatch {
    fn enter(self: &Arc<Self>) -> impl Drop {
        use std::sync::atomic::Ordering::SeqCst;
        struct Leave(Arc<WriteWatch>);
        impl Drop for Leave {
            fn drop(&mut self) {
                self.0.now.fetch_sub(1, SeqCst);
            }
        }
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(self.hold_ms.load(SeqCst)));
        Leave(self.clone())
    }
}

#[derive(Serialize, Deserialize)]
struct RawValue {
    v: Value,
    s: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
struct HourlyAgg {
    min: f64,
    max: f64,
    sum: f64,
    count: u64,
}

impl HourlyAgg {
    fn merge(&mut self, o: HourlyAgg) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        self.count += o.count;
    }
}

/// Removes the entries of `tree` for which `dead(key, value)` holds, in steps of at most
/// [`COMPACT_STEP`]; returns how many.
fn remove_where(tree: &sled::Tree, dead: impl Fn(&[u8], &[u8]) -> bool) -> Result<u64, CloudError> {
    let mut removed = 0;
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    for item in tree.iter() {
        let (k, v) = item?;
        if dead(&k, &v) {
            batch.remove(k);
            removed += 1;
            pending += 1;
            if pending == COMPACT_STEP {
                tree.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
    }
    tree.apply_batch(batch)?;
    Ok(removed)
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn key3(a: &str, b: &str, n: u64) -> Vec<u8> {
    let mut k = key2(a, b);
    k.push(0);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn ts_ms(ts: DateTime<Utc>) -> u64 {
    ts.timestamp_millis().max(0) as u64
}

fn from_ms(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms as i64).single().unwrap_or_default()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> CloudError {
    CloudError::Corrupt(format!("{what}: {e}"))
}

impl SledStore {
    pub fn open(path: &Path) -> Result<SledStore, CloudError> {
        let db =
            sled::Config::new().path(path).cache_capacity(CACHE_BYTES).flush_every_ms(Some(1000)).open()?;
        Ok(SledStore {
            raw: db.open_tree("raw")?,
            latest: db.open_tree("latest")?,
            machines: db.open_tree("machines")?,
            hourly: db.open_tree("hourly")?,
            unattached: db.open_tree("unattached")?,
            relay_quarantine: db.open_tree("relay_quarantine")?,
            latest_ahead: LATEST_AHEAD,
            writers: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            )),
            flusher: outpost_shared::group_flush::GroupFlush::new(db.clone()),
            db,
            #[cfg(test)]
            writes: Arc::default(),
        })
    }

    /// How far ahead of the ingest clock a stored latest value is still believed (the cloud's
    /// `ingest.max_future`): beyond it, it came from a wrong clock and is replaced.
    pub fn with_latest_ahead(mut self, ahead: Duration) -> SledStore {
        self.latest_ahead = chrono::Duration::from_std(ahead).unwrap_or(LATEST_AHEAD);
        self
    }

    /// Records the totals of readings `connector` put aside per hub (each replaces that
    /// connector's previous total for the hub). Durable with the next flush.
    pub fn note_relay_quarantine(&self, connector: &str, counts: &[(String, u64)]) -> Result<(), CloudError> {
        for (hub, n) in counts {
            self.relay_quarantine.insert(key2(hub, connector), &n.to_be_bytes())?;
        }
        Ok(())
    }

    /// What connectors put aside of `machine`'s data, over all of them.
    fn relay_quarantined(&self, machine: &str) -> Result<u64, CloudError> {
        let mut prefix = machine.as_bytes().to_vec();
        prefix.push(0);
        let mut total = 0u64;
        for item in self.relay_quarantine.scan_prefix(prefix) {
            let (_, v) = item?;
            if v.len() == 8 {
                total = total.saturating_add(be64(&v));
            }
        }
        Ok(total)
    }

    /// A stored machine row, with what connectors put aside of its data added.
    fn machine_row(&self, v: &[u8]) -> Result<MachineInfo, CloudError> {
        let mut m: MachineInfo = serde_json::from_slice(v).map_err(|e| corrupt("machine record", e))?;
        m.quarantined = m.quarantined.saturating_add(self.relay_quarantined(&m.id)?);
        Ok(m)
    }

    /// Stores a validated batch and makes it durable. Blocking: call from a blocking thread.
    pub fn ingest(&self, batch: &Batch, now: DateTime<Utc>) -> Result<IngestOutcome, CloudError> {
        let mut out = IngestOutcome::default();
        let mut newest: HashMap<&str, usize> = HashMap::new();
        let mut val = Vec::with_capacity(128);
        for (i, r) in batch.readings.iter().enumerate() {
            let s = &r.sample;
            val.clear();
            val.extend_from_slice(&ts_ms(s.ts).to_be_bytes());
            serde_json::to_writer(
                &mut val,
                &RawValue { v: s.value.clone(), s: s.state, u: s.unit.clone(), m: s.message.clone() },
            )
            .map_err(|e| corrupt("encode", e))?;
            // Insert only if absent: what is stored is history and never replaced, so a resend
            // (or a hub that reused a seq) cannot rewrite it.
            let key = key3(&batch.machine_id, &s.sensor, r.seq);
            match self.raw.compare_and_swap(key, None as Option<&[u8]>, Some(val.as_slice()))? {
                Err(held) => {
                    out.duplicates += 1;
                    if held.current.as_deref() != Some(val.as_slice()) {
                        // A true resend is byte-identical; different content under a stored
                        // `(machine, sensor, seq)` means a sender reused a seq. The first stays.
                        tracing::warn!(machine = %batch.machine_id, sensor = %s.sensor, seq = r.seq,
                            "duplicate reading with different content; kept the stored one");
                    }
                }
                Ok(()) => {
                    out.stored += 1;
                    let e = newest.entry(&s.sensor).or_insert(i);
                    if batch.readings[*e].sample.ts <= s.ts {
                        *e = i;
                    }
                }
            }
        }
        for (sensor, i) in newest {
            let s = &batch.readings[i].sample;
            let key = key2(&batch.machine_id, sensor);
            let current: Option<SensorLatest> = match self.latest.get(&key)? {
                Some(v) => serde_json::from_slice(&v).ok(),
                None => None,
            };
            if !replaces_latest(current.as_ref(), s.ts, now, self.latest_ahead) {
                continue;
            }
            let l = SensorLatest {
                sensor: sensor.to_string(),
                state: s.state,
                value: s.value.clone(),
                unit: s.unit.clone(),
                ts: s.ts,
                message: s.message.clone(),
                limits: s.limits.filter(outpost_shared::model::Limits::is_valid),
            };
            self.latest.insert(key, serde_json::to_vec(&l).map_err(|e| corrupt("encode", e))?)?;
            let old = current.as_ref().map(|c| c.state).unwrap_or(State::Unknown);
            if old != l.state {
                out.transitions.push((old, l.clone()));
            }
            out.changed.push(l);
        }
        let info = machine_info(batch, now);
        self.machines.insert(
            batch.machine_id.as_bytes(),
            serde_json::to_vec(&info).map_err(|e| corrupt("encode", e))?,
        )?;
        let mut info = info;
        info.quarantined = info.quarantined.saturating_add(self.relay_quarantined(&info.id)?);
        out.machine = Some(info);
        Ok(out)
    }

    /// The database's flusher, for the other services that write to the same database.
    /// Concurrent acknowledgements share one flush (group commit); never more than one runs,
    /// which is what keeps sled's flush from deadlocking under load.
    pub fn flusher(&self) -> outpost_shared::group_flush::GroupFlush {
        self.flusher.clone()
    }

    pub fn machines(&self) -> Result<Vec<MachineInfo>, CloudError> {
        self.machines
            .iter()
            .map(|item| {
                let (_, v) = item?;
                self.machine_row(&v)
            })
            .collect()
    }

    pub fn machine(&self, id: &str) -> Result<Option<MachineInfo>, CloudError> {
        match self.machines.get(id.as_bytes())? {
            Some(v) => Ok(Some(self.machine_row(&v)?)),
            None => Ok(None),
        }
    }

    pub fn sensors(&self, machine: &str) -> Result<Vec<SensorLatest>, CloudError> {
        let mut prefix = machine.as_bytes().to_vec();
        prefix.push(0);
        self.latest
            .scan_prefix(prefix)
            .map(|item| {
                let (_, v) = item?;
                serde_json::from_slice(&v).map_err(|e| corrupt("latest record", e))
            })
            .collect()
    }

    /// Raw readings of one sensor at or after `since`, oldest first, at most `limit`.
    pub fn readings(
        &self,
        machine: &str,
        sensor: &str,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<ReadingPoint>, CloudError> {
        let mut prefix = key2(machine, sensor);
        prefix.push(0);
        let since_ms = since.map(ts_ms).unwrap_or(0);
        let rows = self.raw_between(&prefix, since_ms, u64::MAX, limit)?;
        Ok(rows
            .into_iter()
            .map(|(k, ts, raw)| ReadingPoint {
                seq: be64(&k[k.len() - 8..]),
                ts: from_ms(ts),
                value: raw.v,
                state: raw.s,
            })
            .collect())
    }

    /// Raw rows under `prefix` with a reading time in `[lo, hi)` ms, in key order, at most `limit`.
    fn raw_between(
        &self,
        prefix: &[u8],
        lo: u64,
        hi: u64,
        limit: usize,
    ) -> Result<Vec<(sled::IVec, u64, RawValue)>, CloudError> {
        let mut out = Vec::new();
        for item in self.raw.scan_prefix(prefix) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let ts = be64(&v);
            if ts < lo || ts >= hi {
                continue;
            }
            let raw: RawValue = serde_json::from_slice(&v[8..]).map_err(|e| corrupt("raw reading", e))?;
            out.push((k, ts, raw));
        }
        Ok(out)
    }

    /// Every raw reading of one machine taken in `[from, until)`, all sensors, by sensor then seq,
    /// at most `limit` (for the periodic report's CSV). Blocking.
    pub fn period(
        &self,
        machine: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<PeriodReading>, CloudError> {
        let mut prefix = machine.as_bytes().to_vec();
        prefix.push(0);
        let rows = self.raw_between(&prefix, ts_ms(from), ts_ms(until), limit)?;
        Ok(rows
            .into_iter()
            .map(|(k, ts, raw)| PeriodReading {
                // key: machine \0 sensor \0 seq(8)
                sensor: String::from_utf8_lossy(&k[prefix.len()..k.len() - 9]).into_owned(),
                ts: from_ms(ts),
                value: raw.v,
                unit: raw.u,
                state: raw.s,
            })
            .collect())
    }

    /// Hourly aggregates of one sensor at or after `since`, oldest first.
    pub fn hourly(
        &self,
        machine: &str,
        sensor: &str,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<HourlyPoint>, CloudError> {
        let mut prefix = key2(machine, sensor);
        prefix.push(0);
        let mut start = prefix.clone();
        start.extend_from_slice(&since.map(ts_ms).unwrap_or(0).to_be_bytes());
        let mut out = Vec::new();
        for item in self.hourly.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let a: HourlyAgg = serde_json::from_slice(&v).map_err(|e| corrupt("hourly record", e))?;
            out.push(HourlyPoint {
                ts: from_ms(be64(&k[k.len() - 8..])),
                min: a.min,
                avg: a.sum / a.count.max(1) as f64,
                max: a.max,
                count: a.count,
            });
        }
        Ok(out)
    }

    /// Folds raw readings older than `raw` into hourly aggregates and drops hourly aggregates
    /// older than `hourly`. Text values have nothing to average and are simply dropped. Latest
    /// values older than `raw` expire (a sensor that went away, such as a container's virtual
    /// interface, leaves the dashboard), and so do unattached hubs not seen for a day.
    ///
    /// Works in steps of at most [`COMPACT_STEP`] rows, each folded and written on its own, so
    /// memory stays bounded whatever the database holds and ingest is never held up for a whole
    /// pass.
    pub fn compact(
        &self,
        now: DateTime<Utc>,
        raw: Duration,
        hourly: Duration,
    ) -> Result<CompactOutcome, CloudError> {
        let raw_cut = ts_ms(now).saturating_sub(raw.as_millis() as u64);
        let hourly_cut = ts_ms(now).saturating_sub(hourly.as_millis() as u64);
        let mut out = CompactOutcome::default();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let mut aggs: HashMap<Vec<u8>, HourlyAgg> = HashMap::new();
            let mut batch = sled::Batch::default();
            let mut seen = 0;
            let mut last = None;
            for item in self.raw.range(from.clone()..) {
                let (k, v) = item?;
                seen += 1;
                last = Some(k.clone());
                if seen >= COMPACT_STEP {
                    break;
                }
                let ts = be64(&v);
                if ts >= raw_cut {
                    continue;
                }
                batch.remove(k.clone());
                out.folded += 1;
                let Ok(rv) = serde_json::from_slice::<RawValue>(&v[8..]) else { continue };
                let Some(x) = rv.v.as_f64() else { continue };
                let hour = ts - ts % 3_600_000;
                let mut hk = k[..k.len() - 8].to_vec();
                hk.extend_from_slice(&hour.to_be_bytes());
                let a = HourlyAgg { min: x, max: x, sum: x, count: 1 };
                aggs.entry(hk).and_modify(|e| e.merge(a)).or_insert(a);
            }
            for (hk, mut a) in aggs {
                if let Some(old) = self.hourly.get(&hk)? {
                    if let Ok(o) = serde_json::from_slice::<HourlyAgg>(&old) {
                        a.merge(o);
                    }
                }
                self.hourly.insert(hk, serde_json::to_vec(&a).map_err(|e| corrupt("encode", e))?)?;
            }
            self.raw.apply_batch(batch)?;
            match last {
                // The step stopped at `k` without folding it: the next one starts there.
                Some(k) if seen >= COMPACT_STEP => from = k.to_vec(),
                _ => break,
            }
        }
        out.hourly_expired = remove_where(&self.hourly, |k, _| be64(&k[k.len() - 8..]) < hourly_cut)?;
        let stale = chrono::Duration::from_std(raw).unwrap_or(chrono::Duration::MAX);
        out.latest_expired = remove_where(&self.latest, |_, v| {
            serde_json::from_slice::<SensorLatest>(v).is_ok_and(|l| now - l.ts > stale)
        })?;
        out.unattached_expired = remove_where(&self.unattached, |_, v| {
            serde_json::from_slice::<UnattachedHub>(v)
                .is_ok_and(|h| now - h.seen_at > chrono::Duration::days(1))
        })?;
        self.flusher.flush_blocking()?;
        Ok(out)
    }

    /// Remembers hubs a connector found that do not send through it (the latest sighting wins).
    pub fn note_unattached(&self, hubs: &[UnattachedHub]) -> Result<(), CloudError> {
        for h in hubs {
            self.unattached
                .insert(h.machine_id.as_bytes(), serde_json::to_vec(h).map_err(|e| corrupt("encode", e))?)?;
        }
        Ok(())
    }

    /// Hubs seen by a connector within the last day that do not send through a connector: silent
    /// ones and those sending directly alike. A hub that starts sending through a connector drops
    /// off this list by itself.
    pub fn unattached(&self, now: DateTime<Utc>) -> Result<Vec<UnattachedHub>, CloudError> {
        let mut out = Vec::new();
        for item in self.unattached.iter() {
            let (_, v) = item?;
            let h: UnattachedHub = serde_json::from_slice(&v).map_err(|e| corrupt("unattached record", e))?;
            if still_unattached(&h, self.machine(&h.machine_id)?.as_ref(), now) {
                out.push(h);
            }
        }
        Ok(out)
    }

    /// The database, for the other parts of the cloud that keep state in it.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Total raw readings stored; for tests and the status page.
    pub fn raw_count(&self) -> usize {
        self.raw.len()
    }

    /// Runs blocking sled work on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SledStore) -> Result<T, CloudError> + Send + 'static,
    ) -> Result<T, CloudError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| CloudError::Unavailable(format!("storage task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl ReadingStore for SledStore {
    async fn ingest(&self, batch: Batch, now: DateTime<Utc>) -> Result<IngestOutcome, CloudError> {
        // The permit goes with the work: a caller that gives up does not free it while the batch
        // is still being written.
        let writing =
            self.writers.clone().acquire_owned().await.expect("the writers' semaphore is never closed");
        self.blocking(move |s| {
            let _writing = writing;
            #[cfg(test)]
            let _watched = s.writes.enter();
            s.ingest(&batch, now)
        })
        .await
    }

    async fn commit(&self) -> Result<(), CloudError> {
        self.flusher.flush().await?;
        Ok(())
    }

    async fn note_relay_quarantine(
        &self,
        connector: &str,
        counts: &[(String, u64)],
    ) -> Result<(), CloudError> {
        let (connector, counts) = (connector.to_string(), counts.to_vec());
        self.blocking(move |s| s.note_relay_quarantine(&connector, &counts)).await
    }

    async fn machines(&self) -> Result<Vec<MachineInfo>, CloudError> {
        self.blocking(|s| s.machines()).await
    }

    async fn machine(&self, id: &str) -> Result<Option<MachineInfo>, CloudError> {
        let id = id.to_string();
        self.blocking(move |s| s.machine(&id)).await
    }

    async fn sensors(&self, machine: &str) -> Result<Vec<SensorLatest>, CloudError> {
        let machine = machine.to_string();
        self.blocking(move |s| s.sensors(&machine)).await
    }

    async fn readings(
        &self,
        machine: &str,
        sensor: &str,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<ReadingPoint>, CloudError> {
        let (machine, sensor) = (machine.to_string(), sensor.to_string());
        self.blocking(move |s| s.readings(&machine, &sensor, since, limit)).await
    }

    async fn period(
        &self,
        machine: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<PeriodReading>, CloudError> {
        let machine = machine.to_string();
        self.blocking(move |s| s.period(&machine, from, until, limit)).await
    }

    async fn hourly(
        &self,
        machine: &str,
        sensor: &str,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<HourlyPoint>, CloudError> {
        let (machine, sensor) = (machine.to_string(), sensor.to_string());
        self.blocking(move |s| s.hourly(&machine, &sensor, since, limit)).await
    }

    async fn compact(
        &self,
        now: DateTime<Utc>,
        raw: Duration,
        hourly: Duration,
    ) -> Result<CompactOutcome, CloudError> {
        self.blocking(move |s| s.compact(now, raw, hourly)).await
    }

    async fn note_unattached(&self, hubs: &[UnattachedHub]) -> Result<(), CloudError> {
        let hubs = hubs.to_vec();
        self.blocking(move |s| s.note_unattached(&hubs)).await
    }

    async fn unattached(&self, now: DateTime<Utc>) -> Result<Vec<UnattachedHub>, CloudError> {
        self.blocking(move |s| s.unattached(now)).await
    }

    async fn raw_count(&self) -> Result<u64, CloudError> {
        Ok(self.raw.len() as u64)
    }
}

impl From<SledStore> for super::Store {
    fn from(s: SledStore) -> super::Store {
        Arc::new(s)
    }
}
