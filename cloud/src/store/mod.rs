//! Everything the cloud keeps, behind small traits with two engines each: [`sled`] (embedded,
//! the default) and [`postgres`] (a PostgreSQL server, for large sites, for a cloud that must
//! outlive one server, and for several cloud nodes on one database). The rest of the cloud holds
//! the trait objects gathered in [`Engines`] and never knows which engine answers.
//!
//! | area | trait | sled | PostgreSQL |
//! |---|---|---|---|
//! | readings, latest values, roll-ups, machines, unattached hubs | [`ReadingStore`] | `sled/mod.rs` | `postgres/mod.rs` |
//! | machine keys, tokens, revocations, mail grants | [`trust::TrustStore`] | `sled/trust.rs` | `postgres/trust.rs` |
//! | commands, their results, the audit trail | [`commands::CommandStore`] | `sled/commands.rs` | `postgres/commands.rs` |
//! | mail outbox, report runs | [`mail::MailStore`], [`mail::ReportRuns`] | shared `Outbox`, `sled/mail.rs` | `postgres/mail.rs` |
//! | sensors managed from the cloud: per machine, templates, versions | [`managed::ManagedStore`] | `sled/managed.rs` | `postgres/managed.rs` |
//! | people: users, sessions, customers, API tokens | [`people::PeopleStore`] | `sled/people.rs` | `postgres/people.rs` |
//! | acknowledgements, maintenance windows | [`silences::SilenceStore`] | `sled/silences.rs` | `postgres/silences.rs` |
//!
//! The cloud's signing key and TLS certificate are files in the data directory on every engine,
//! never in a database: a copy of the database alone must not be able to command a hub.
//!
//! # Adding a store for another area (the guide)
//!
//! 1. **The trait**: `store/<area>.rs` holds the record types (serde, as the API needs them) and
//!    one `#[async_trait]` trait, `Send + Sync + 'static`, whose module docs say exactly when a
//!    write is durable. The rule here: **durable when the call returns `Ok`** (sled: after
//!    `GroupFlush::flush().await`; PostgreSQL: after COMMIT), except [`ReadingStore`], whose
//!    ingest is made durable by [`ReadingStore::commit`] so many batches share one flush. Keep
//!    decisions (validation, permissions, what is due) in the service that uses the trait; the
//!    trait keeps records. Where a decision must be atomic with its writes, pass it in as a
//!    pure closure (see [`trust::TrustStore::enroll`]): sled may run it again on conflict.
//! 2. **sled engine**: `store/sled/<area>.rs`, its own trees opened from the one `sled::Db`
//!    (`SledStore::db`), and the database's one flusher (`SledStore::flusher`): never call
//!    `flush` on the database yourself (sled #1308 deadlocks with two flushes in flight).
//!    Atomic writes over several trees are one sled transaction.
//! 3. **PostgreSQL engine**: `store/postgres/<area>.rs` on the shared pool (`PgStore::pool`).
//!    Tables come from a new migration file `postgres/migrations/00NN_<area>.sql`, added to
//!    `MIGRATIONS` in `postgres/schema.rs` under the block of numbers your area was given (never
//!    edit a migration that shipped). Every primary key starts with the machine where the record
//!    has one (Citus distributes by it); keep records as `jsonb` beside the columns you filter
//!    on. Map errors with `db_err`/`connect::pool_err`: a lost connection is
//!    [`CloudError::Unavailable`], which the API answers with 503 + Retry-After. A multi-row
//!    write is one transaction.
//! 4. **Wire it**: a field in [`Engines`], filled in both arms of [`Engines::open`].
//! 5. **Test it once for both engines**: cases are `async fn(Engines)` (or of your trait object)
//!    run by an `every_engine!`-style macro on sled and on a fresh database of the throwaway
//!    PostgreSQL server (`postgres::throwaway`); no PostgreSQL means the tests fail, never skip.
//!
//! # Readings
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

pub mod commands;
pub mod mail;
pub mod managed;
#[cfg(all(test, unix))]
mod managed_tests;
pub mod people;
pub mod postgres;
pub mod silences;
pub mod sled;
#[cfg(all(test, unix))]
pub(crate) mod testing;
#[cfg(all(test, unix))]
pub(crate) mod tests;
pub mod trust;

use crate::error::CloudError;
use chrono::{DateTime, Utc};
use outpost_shared::model::{
    Batch, HourlyPoint, MachineInfo, ReadingPoint, SensorLatest, State, UnattachedHub, Value,
};
use std::sync::Arc;
use std::time::Duration;

/// The handle the cloud passes around: cheap to clone, either engine behind it.
pub type Store = Arc<dyn ReadingStore>;

/// Every store of the cloud, on one engine. Cheap to clone.
#[derive(Clone)]
pub struct Engines {
    pub readings: Store,
    pub trust: trust::Trusts,
    pub commands: commands::CommandStores,
    pub reports: mail::Reports,
    /// The mail outbox; on sled opened only when `[mail]` is configured (its own database).
    pub outbox: Option<mail::Outbox>,
    /// The PostgreSQL engine's pool, for what needs the database itself (several nodes).
    pub postgres: Option<postgres::PgStore>,
    /// The PostgreSQL outbox itself, so another node's "mail queued" can wake its sender.
    pub pg_outbox: Option<postgres::mail::PgOutbox>,
    pub managed: managed::Managed,
    pub people: people::PeopleDb,
    pub silences: silences::SilenceDb,
}

impl Engines {
    /// Opens the engine `[storage]` chooses: PostgreSQL when `postgres` is set (migrating its
    /// schema), else sled in `data_dir/db` (and the outbox in `data_dir/mail-outbox`).
    pub async fn open(config: &crate::CloudConfig) -> Result<Engines, CloudError> {
        match &config.storage.postgres {
            Some(url) => {
                let pg = match postgres::PgStore::open(url, &config.storage.postgres_options()).await {
                    Ok(pg) => pg.with_latest_ahead(config.ingest.max_future),
                    Err(CloudError::Unavailable(e)) => {
                        return Err(CloudError::Unavailable(format!(
                            "cannot reach [storage] postgres = {url} ({e}); is the server running, \
                             and are host, port, user and database right?"
                        )))
                    }
                    Err(e) => return Err(e),
                };
                Ok(Engines::on_postgres(pg))
            }
            None => {
                let sled = sled::SledStore::open(&config.data_dir.join("db"))?
                    .with_latest_ahead(config.ingest.max_future);
                let outbox = match &config.mail {
                    Some(_) => Some(
                        outpost_shared::mail::Outbox::open(&config.data_dir.join("mail-outbox"))
                            .map_err(|e| CloudError::Mail(e.to_string()))?,
                    ),
                    None => None,
                };
                Engines::on_sled(sled, outbox)
            }
        }
    }

    /// Every store on one sled database (the outbox is its own database, if any).
    pub fn on_sled(
        sled: sled::SledStore,
        outbox: Option<outpost_shared::mail::Outbox>,
    ) -> Result<Engines, CloudError> {
        Ok(Engines {
            trust: Arc::new(sled::trust::SledTrust::open(sled.db(), sled.flusher())?),
            commands: Arc::new(sled::commands::SledCommands::open(sled.db(), sled.flusher())?),
            reports: Arc::new(sled::mail::SledReportRuns::open(sled.db(), sled.flusher())?),
            managed: Arc::new(sled::managed::SledManaged::open(sled.db(), sled.flusher())?),
            people: Arc::new(sled::people::SledPeople::open(&sled)?),
            silences: Arc::new(sled::silences::SledSilences::open(sled.db(), sled.flusher())?),
            outbox: outbox.map(|o| mail::Outbox(Arc::new(o))),
            readings: Arc::new(sled),
            postgres: None,
            pg_outbox: None,
        })
    }

    /// Every store on one PostgreSQL database (migrated by [`postgres::PgStore::open`]).
    pub fn on_postgres(pg: postgres::PgStore) -> Engines {
        let pool = pg.pool();
        let outbox = postgres::mail::PgOutbox::new(pool.clone());
        Engines {
            trust: Arc::new(postgres::trust::PgTrust::new(pool.clone())),
            commands: Arc::new(postgres::commands::PgCommands::new(pool.clone())),
            reports: Arc::new(postgres::mail::PgReportRuns::new(pool.clone())),
            managed: Arc::new(postgres::managed::PgManaged::new(pool.clone())),
            silences: Arc::new(postgres::silences::PgSilences::new(pool)),
            people: Arc::new(postgres::people::PgPeople::new(&pg)),
            outbox: Some(mail::Outbox(Arc::new(outbox.clone()))),
            readings: Arc::new(pg.clone()),
            postgres: Some(pg),
            pg_outbox: Some(outbox),
        }
    }
}

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
        features: batch.features.clone(),
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
