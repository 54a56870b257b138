//! What the cloud keeps about readings, behind one trait ([`ReadingStore`]) with two engines:
//! [`sled`] (embedded, the default) and [`postgres`] (a PostgreSQL server, for large sites and
//! for a cloud that must outlive one server). The rest of the cloud holds a [`Store`]
//! (`Arc<dyn ReadingStore>`) and never knows which engine answers.
//!
//! Exactly-once is a property of the key in both engines: a raw reading is stored under
//! `(machine, sensor, seq)`, so a resent reading is counted as a duplicate instead of stored
//! twice, and what is stored is never replaced.
//!
//! **Durability.** A batch may be acknowledged only after [`ReadingStore::commit`] returned `Ok`
//! following its [`ReadingStore::ingest`]. On sled, `ingest` writes to the page cache and
//! `commit` waits for the database's one group-commit flush; on PostgreSQL, `ingest` runs one
//! transaction (readings, latest values and machine status together) and returns after its
//! COMMIT, so `commit` has nothing left to do. The other writes (`note_*`, `compact`) follow the
//! same rule: durable once `commit` returned after them (sled), or on return (PostgreSQL).
//!
//! Errors: [`CloudError::Unavailable`] means the engine cannot be reached right now (PostgreSQL
//! restarting, connections lost); callers answer "retry later" and keep nothing half-done.
//!
//! People (users, sessions, customers, API tokens) have their own trait, [`people::PeopleStore`],
//! with both engines. The cloud's other records (keys, tokens, revocations, commands, audit, mail
//! outbox, report runs) are still kept in the sled database only; see `start` in `lib.rs`, which refuses a
//! PostgreSQL configuration for that reason.

pub mod managed;
#[cfg(all(test, unix))]
mod managed_tests;
pub mod people;
pub mod postgres;
pub mod sled;
#[cfg(test)]
pub(crate) mod tests;

use crate::error::CloudError;
use chrono::{DateTime, Utc};
use outpost_shared::model::{
    Batch, HourlyPoint, MachineInfo, ReadingPoint, SensorLatest, State, UnattachedHub, Value,
};
use std::sync::Arc;
use std::time::Duration;

/// The handle the cloud passes around: cheap to clone, either engine behind it.
pub type Store = Arc<dyn ReadingStore>;

/// Readings, latest values, hourly roll-ups, machines, unattached hubs and what connectors put
/// aside. See the module docs for when each write is durable.
#[async_trait::async_trait]
pub trait ReadingStore: Send + Sync + 'static {
    /// Stores a validated batch: each reading at most once, the newest value per sensor, the
    /// machine's status. Durable only once [`ReadingStore::commit`] returned after it.
    async fn ingest(&self, batch: Batch, now: DateTime<Utc>) -> Result<IngestOutcome, CloudError>;

    /// Waits until every write that returned before this call is durable. Only then may a batch
    /// be acknowledged. Concurrent callers share one flush (group commit) on sled.
    async fn commit(&self) -> Result<(), CloudError>;

    /// Records the totals of readings `connector` put aside per hub (each replaces that
    /// connector's previous total for the hub).
    async fn note_relay_quarantine(
        &self,
        connector: &str,
        counts: &[(String, u64)],
    ) -> Result<(), CloudError>;

    /// Every machine that ever sent, with what connectors put aside of its data added in.
    async fn machines(&self) -> Result<Vec<MachineInfo>, CloudError>;

    async fn machine(&self, id: &str) -> Result<Option<MachineInfo>, CloudError>;

    /// The latest value of each sensor of one machine, by sensor name.
    async fn sensors(&self, machine: &str) -> Result<Vec<SensorLatest>, CloudError>;

    /// Raw readings of one sensor at or after `since`, by seq, at most `limit`.
    async fn readings(
        &self,
        machine: &str,
        sensor: &str,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<ReadingPoint>, CloudError>;

    /// Every raw reading of one machine taken in `[from, until)`, all sensors, by sensor then
    /// seq, at most `limit` (the periodic report's CSV).
    async fn period(
        &self,
        machine: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<PeriodReading>, CloudError>;

    /// Hourly aggregates of one sensor at or after `since`, oldest first, at most `limit`.
    async fn hourly(
        &self,
        machine: &str,
        sensor: &str,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<HourlyPoint>, CloudError>;

    /// Folds raw readings older than `raw` into hourly aggregates and drops hourly aggregates
    /// older than `hourly`. Text values have nothing to average and are simply dropped. Latest
    /// values older than `raw` expire (a sensor that went away leaves the dashboard), and so do
    /// unattached hubs not seen for a day. Durable on return.
    async fn compact(
        &self,
        now: DateTime<Utc>,
        raw: Duration,
        hourly: Duration,
    ) -> Result<CompactOutcome, CloudError>;

    /// Remembers hubs a connector found that do not send through it (the latest sighting wins).
    async fn note_unattached(&self, hubs: &[UnattachedHub]) -> Result<(), CloudError>;

    /// Hubs seen by a connector within the last day that do not send through a connector:
    /// silent ones and those sending directly alike.
    async fn unattached(&self, now: DateTime<Utc>) -> Result<Vec<UnattachedHub>, CloudError>;

    /// Total raw readings stored (tests and the status page).
    async fn raw_count(&self) -> Result<u64, CloudError>;
}

/// What one batch did to the store, for the acknowledgement and the live feed.
#[derive(Debug, Default)]
pub struct IngestOutcome {
    pub stored: u64,
    pub duplicates: u64,
    /// Sensors whose latest reading changed, for live updates.
    pub changed: Vec<SensorLatest>,
    /// Latest readings whose state differs from the one before, with that previous state: what
    /// alerts are made of.
    pub transitions: Vec<(State, SensorLatest)>,
    pub machine: Option<MachineInfo>,
}

/// One raw reading of a period, for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodReading {
    pub sensor: String,
    pub ts: DateTime<Utc>,
    pub value: Value,
    pub unit: Option<String>,
    pub state: State,
}

/// What one retention pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CompactOutcome {
    pub folded: u64,
    pub hourly_expired: u64,
    /// Latest values of sensors silent longer than raw retention.
    pub latest_expired: u64,
    pub unattached_expired: u64,
}

/// Rows one compaction step reads at most.
pub const COMPACT_STEP: usize = 50_000;

/// Default of the engines' `with_latest_ahead`: the cloud's default `ingest.max_future`.
pub const LATEST_AHEAD: chrono::Duration = chrono::Duration::minutes(5);

/// Whether a newly stored reading stamped `ts` becomes the sensor's latest value. A replayed
/// backlog reading must not hide a newer live one; but a latest value from a clock far ahead
/// (stored before the window check, or with a wider window then) must not freeze the sensor
/// until that time comes. Both engines decide with this one rule.
pub(crate) fn replaces_latest(
    current: Option<&SensorLatest>,
    ts: DateTime<Utc>,
    now: DateTime<Utc>,
    ahead: chrono::Duration,
) -> bool {
    !current.is_some_and(|c| c.ts > ts && c.ts <= now + ahead)
}

/// The machine status a batch reports, as stored (before relay quarantine is added in).
pub(crate) fn machine_info(batch: &Batch, now: DateTime<Utc>) -> MachineInfo {
    MachineInfo {
        id: batch.machine_id.clone(),
        hostname: batch.hostname.clone(),
        role: batch.role,
        uplink: batch.uplink.clone(),
        last_seen: now,
        buffered: batch.buffered,
        dropped: batch.dropped,
        version: batch.version.clone(),
        quarantined: batch.quarantined,
        clock_problem: batch.clock_problem.clone(),
    }
}

/// Whether a hub sighting is still listed as unattached: seen within a day, and not sending
/// through a connector since (shortly before) it was seen.
pub(crate) fn still_unattached(h: &UnattachedHub, m: Option<&MachineInfo>, now: DateTime<Utc>) -> bool {
    if now - h.seen_at > chrono::Duration::days(1) {
        return false;
    }
    !m.is_some_and(|m| {
        m.uplink.starts_with("connector:") && m.last_seen >= h.seen_at - chrono::Duration::minutes(2)
    })
}
