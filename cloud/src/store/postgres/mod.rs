//! The PostgreSQL engine: the same [`ReadingStore`] on a database server, for large sites and
//! for a cloud that must outlive one machine.
//!
//! - [`connect`]: the pool (deadpool-postgres, connections verified before reuse so a restarted
//!   server is noticed), TLS with rustls (ring) when the URL says `sslmode=require`.
//! - [`schema`]: versioned migrations, run at start in one transaction under an advisory lock;
//!   daily range partitions of the raw readings, made before they are needed.
//! - this file: the queries. A batch is one transaction: the machine row first (its row lock
//!   orders concurrent batches of one machine), then the readings with one
//!   `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING` (a fixed number of bind
//!   parameters whatever the batch size; the returned rows are exactly what was stored), then the
//!   latest values. [`ReadingStore::ingest`] returns after COMMIT: durable on return.
//! - [`throwaway`]: a private PostgreSQL server in a temp dir, for tests and benches.
//!
//! A lost connection or a server that is restarting is [`CloudError::Unavailable`]: ingest
//! answers 503 + Retry-After and the sender keeps the batch; nothing half-written is committed.

pub mod commands;
pub mod connect;
pub mod listen;
pub mod mail;
pub mod managed;
pub mod people;
pub mod schema;
pub mod silences;
#[cfg(all(test, unix))]
mod tests;
#[cfg(unix)]
pub mod throwaway;
pub mod trust;

pub use connect::{PostgresOptions, PostgresUrl};

use super::{
    machine_info, replaces_latest, still_unattached, CompactOutcome, IngestOutcome, PeriodReading,
    ReadingStore, LATEST_AHEAD,
};
use crate::error::CloudError;
use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::Pool;
use outpost_shared::model::{
    Batch, HourlyPoint, MachineInfo, ReadingPoint, SensorLatest, State, UnattachedHub, Value,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::types::Json;

/// A reading's stored body: the same fields the sled engine keeps.
#[derive(Debug, Serialize, Deserialize)]
struct RawBody {
    v: Value,
    s: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<String>,
}

/// Readings of one batch that reached the table: `ON CONFLICT DO NOTHING` skips what is already
/// there under the same key, and `NOT EXISTS` what is there under the same `(machine, sensor,
/// seq)` on another day (a partitioned key must hold `ts`, so the key alone cannot).
const INSERT_RAW: &str = "
    INSERT INTO raw (machine, sensor, seq, ts, num, body)
    SELECT $1, u.sensor, u.seq, u.ts, u.num, u.body
    FROM unnest($2::text[], $3::bigint[], $4::timestamptz[], $5::float8[], $6::jsonb[])
        AS u(sensor, seq, ts, num, body)
    WHERE NOT EXISTS (
        SELECT 1 FROM raw r WHERE r.machine = $1 AND r.sensor = u.sensor AND r.seq = u.seq)
    ON CONFLICT DO NOTHING
    RETURNING sensor, seq";

const UPSERT_LATEST: &str = "
    INSERT INTO latest (machine, sensor, ts, body)
    SELECT $1, u.sensor, u.ts, u.body
    FROM unnest($2::text[], $3::timestamptz[], $4::jsonb[]) AS u(sensor, ts, body)
    ON CONFLICT (machine, sensor) DO UPDATE SET ts = EXCLUDED.ts, body = EXCLUDED.body";

/// Relay quarantine of one machine, summed over connectors.
const QUARANTINE_OF: &str =
    "(SELECT coalesce(sum(q.n), 0)::bigint FROM relay_quarantine q WHERE q.machine = m.machine)";

/// Folds the readings of `gone` into `hourly`, merging with what an hour already holds.
/// Text values (`num` NULL) have nothing to average and are left out.
const FOLD_INTO_HOURLY: &str = "
    INSERT INTO hourly (machine, sensor, hour, min, max, sum, count)
    SELECT machine, sensor, date_trunc('hour', ts, 'UTC'), min(num), max(num), sum(num), count(num)
    FROM gone WHERE num IS NOT NULL
    GROUP BY machine, sensor, date_trunc('hour', ts, 'UTC')
    ON CONFLICT (machine, sensor, hour) DO UPDATE SET
        min = least(hourly.min, EXCLUDED.min),
        max = greatest(hourly.max, EXCLUDED.max),
        sum = hourly.sum + EXCLUDED.sum,
        count = hourly.count + EXCLUDED.count";

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// Where the pool connects; sessions outside it ([`listen::Session`]) connect the same way.
    url: PostgresUrl,
    options: PostgresOptions,
    /// Days whose raw partition is known to exist, so ingest asks the database only for new ones.
    days: Arc<Mutex<BTreeSet<NaiveDate>>>,
    /// See [`super::sled::SledStore::with_latest_ahead`].
    latest_ahead: chrono::Duration,
}

impl PgStore {
    /// Connects, runs the schema migrations and makes the partitions of the coming days.
    pub async fn open(url: &PostgresUrl, options: &PostgresOptions) -> Result<PgStore, CloudError> {
        let pool = connect::pool(url, options)?;
        let mut client = pool.get().await.map_err(connect::pool_err)?;
        schema::migrate(&mut client).await?;
        drop(client);
        let store = PgStore {
            pool,
            url: url.clone(),
            options: options.clone(),
            days: Arc::new(Mutex::new(BTreeSet::new())),
            latest_ahead: LATEST_AHEAD,
        };
        let today = Utc::now().date_naive();
        store
            .ensure_days((0..schema::DAYS_AHEAD).filter_map(|d| today.checked_add_days(chrono::Days::new(d))))
            .await?;
        Ok(store)
    }

    /// See [`super::sled::SledStore::with_latest_ahead`].
    pub fn with_latest_ahead(mut self, ahead: Duration) -> PgStore {
        self.latest_ahead = chrono::Duration::from_std(ahead).unwrap_or(LATEST_AHEAD);
        self
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, CloudError> {
        self.pool.get().await.map_err(connect::pool_err)
    }

    /// The pool, shared by the engines of the cloud's other records.
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// A connection of its own, outside the pool (LISTEN, session-level advisory locks).
    pub async fn session(&self) -> Result<listen::Session, CloudError> {
        listen::Session::open(&self.url, &self.options).await
    }

    /// Makes sure each day has its raw partition.
    async fn ensure_days(&self, days: impl IntoIterator<Item = NaiveDate>) -> Result<(), CloudError> {
        let missing: BTreeSet<NaiveDate> = {
            let known = self.days.lock().unwrap_or_else(|p| p.into_inner());
            days.into_iter().filter(|d| !known.contains(d)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        schema::create_partitions(&mut client, &missing).await?;
        self.days.lock().unwrap_or_else(|p| p.into_inner()).extend(missing);
        Ok(())
    }

    fn forget_days(&self) {
        self.days.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Maps a database error to what the caller should do: unreachable means retry later.
pub(crate) fn db_err(e: tokio_postgres::Error) -> CloudError {
    connect::classify(e)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> CloudError {
    CloudError::Corrupt(format!("{what}: {e}"))
}

fn encode(e: serde_json::Error) -> CloudError {
    CloudError::Invalid(format!("cannot encode for storage: {e}"))
}

fn json_of<T: serde::de::DeserializeOwned>(
    row: &tokio_postgres::Row,
    i: usize,
    what: &str,
) -> Result<T, CloudError> {
    let v: Json<serde_json::Value> = row.try_get(i).map_err(|e| corrupt(what, e))?;
    serde_json::from_value(v.0).map_err(|e| corrupt(what, e))
}

fn machine_of(row: &tokio_postgres::Row) -> Result<MachineInfo, CloudError> {
    let mut m: MachineInfo = json_of(row, 0, "machine record")?;
    let relayed: i64 = row.try_get(1).map_err(|e| corrupt("machine record", e))?;
    m.quarantined = m.quarantined.saturating_add(relayed.max(0) as u64);
    Ok(m)
}

/// A reading's seq as the database keeps it: bigint holds the bits of a u64 (values above
/// `i64::MAX` sort before small ones, which no real hub reaches).
fn seq_db(seq: u64) -> i64 {
    seq as i64
}

#[async_trait::async_trait]
impl ReadingStore for PgStore {
    async fn ingest(&self, batch: Batch, now: DateTime<Utc>) -> Result<IngestOutcome, CloudError> {
        self.ensure_days(batch.readings.iter().map(|r| r.sample.ts.date_naive())).await?;
        // A resend inside one batch is a duplicate like any other: the first stays.
        let mut firsts = HashSet::new();
        let kept: Vec<usize> = (0..batch.readings.len())
            .filter(|&i| firsts.insert((&batch.readings[i].sample.sensor, batch.readings[i].seq)))
            .collect();
        let mut sensors = Vec::with_capacity(kept.len());
        let mut seqs = Vec::with_capacity(kept.len());
        let mut stamps = Vec::with_capacity(kept.len());
        let mut nums = Vec::with_capacity(kept.len());
        let mut bodies = Vec::with_capacity(kept.len());
        for &i in &kept {
            let s = &batch.readings[i].sample;
            sensors.push(s.sensor.as_str());
            seqs.push(seq_db(batch.readings[i].seq));
            stamps.push(s.ts);
            nums.push(s.value.as_f64());
            bodies.push(Json(RawBody {
                v: s.value.clone(),
                s: s.state,
                u: s.unit.clone(),
                m: s.message.clone(),
            }));
        }
        let info = machine_info(&batch, now);
        let machine = batch.machine_id.as_str();

        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        // First: the row lock orders batches of one machine, so the duplicate check below sees
        // every reading a concurrent batch of the same machine committed.
        tx.execute(
            "INSERT INTO machines (machine, info) VALUES ($1, $2)
             ON CONFLICT (machine) DO UPDATE SET info = EXCLUDED.info",
            &[&machine, &Json(&info)],
        )
        .await
        .map_err(db_err)?;
        let rows = match tx.query(INSERT_RAW, &[&machine, &sensors, &seqs, &stamps, &nums, &bodies]).await {
            Ok(rows) => rows,
            Err(e) => {
                // A partition dropped behind this node's back: look again next time.
                if e.code() == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION) {
                    self.forget_days();
                }
                return Err(db_err(e));
            }
        };
        let mut stored: HashSet<(String, i64)> = HashSet::with_capacity(rows.len());
        for row in &rows {
            stored.insert((row.try_get(0).map_err(db_err)?, row.try_get(1).map_err(db_err)?));
        }
        let mut out = IngestOutcome {
            stored: stored.len() as u64,
            duplicates: (batch.readings.len() - stored.len()) as u64,
            ..Default::default()
        };
        // The newest stored reading of each sensor (the later one in the batch on a tie).
        let mut newest: HashMap<&str, usize> = HashMap::new();
        for &i in &kept {
            let r = &batch.readings[i];
            if !stored.contains(&(r.sample.sensor.clone(), seq_db(r.seq))) {
                continue;
            }
            let e = newest.entry(&r.sample.sensor).or_insert(i);
            if batch.readings[*e].sample.ts <= r.sample.ts {
                *e = i;
            }
        }
        if !newest.is_empty() {
            let names: Vec<&str> = newest.keys().copied().collect();
            let held = tx
                .query(
                    "SELECT sensor, body FROM latest WHERE machine = $1 AND sensor = ANY($2) FOR UPDATE",
                    &[&machine, &names],
                )
                .await
                .map_err(db_err)?;
            let mut current: HashMap<String, SensorLatest> = HashMap::new();
            for row in &held {
                let sensor: String = row.try_get(0).map_err(db_err)?;
                // An unreadable latest value is simply replaced, as on sled.
                if let Ok(l) = json_of::<SensorLatest>(row, 1, "latest record") {
                    current.insert(sensor, l);
                }
            }
            let (mut up_sensors, mut up_ts, mut up_bodies) = (Vec::new(), Vec::new(), Vec::new());
            for (sensor, i) in newest {
                let s = &batch.readings[i].sample;
                let cur = current.get(sensor);
                if !replaces_latest(cur, s.ts, now, self.latest_ahead) {
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
                up_sensors.push(sensor);
                up_ts.push(s.ts);
                up_bodies.push(Json(serde_json::to_value(&l).map_err(encode)?));
                let old = cur.map(|c| c.state).unwrap_or(State::Unknown);
                if old != l.state {
                    out.transitions.push((old, l.clone()));
                }
                out.changed.push(l);
            }
            if !up_sensors.is_empty() {
                tx.execute(UPSERT_LATEST, &[&machine, &up_sensors, &up_ts, &up_bodies])
                    .await
                    .map_err(db_err)?;
            }
        }
        let relayed: i64 = tx
            .query_one(
                "SELECT coalesce(sum(n), 0)::bigint FROM relay_quarantine WHERE machine = $1",
                &[&machine],
            )
            .await
            .map_err(db_err)?
            .try_get(0)
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let mut info = info;
        info.quarantined = info.quarantined.saturating_add(relayed.max(0) as u64);
        out.machine = Some(info);
        Ok(out)
    }

    async fn commit(&self) -> Result<(), CloudError> {
        // Every write committed its own transaction before returning.
        Ok(())
    }

    async fn note_relay_quarantine(
        &self,
        connector: &str,
        counts: &[(String, u64)],
    ) -> Result<(), CloudError> {
        // One row per hub (the last count wins, as later writes do on sled): an upsert may not
        // touch a row twice.
        let last: HashMap<&str, i64> =
            counts.iter().map(|(h, n)| (h.as_str(), i64::try_from(*n).unwrap_or(i64::MAX))).collect();
        let (hubs, ns): (Vec<&str>, Vec<i64>) = last.into_iter().unzip();
        self.client()
            .await?
            .execute(
                "INSERT INTO relay_quarantine (machine, connector, n)
                 SELECT u.hub, $1, u.n FROM unnest($2::text[], $3::bigint[]) AS u(hub, n)
                 ON CONFLICT (machine, connector) DO UPDATE SET n = EXCLUDED.n",
                &[&connector, &hubs, &ns],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn machines(&self) -> Result<Vec<MachineInfo>, CloudError> {
        let q = format!("SELECT m.info, {QUARANTINE_OF} FROM machines m ORDER BY m.machine");
        self.client().await?.query(&q, &[]).await.map_err(db_err)?.iter().map(machine_of).collect()
    }

    async fn machine(&self, id: &str) -> Result<Option<MachineInfo>, CloudError> {
        let q = format!("SELECT m.info, {QUARANTINE_OF} FROM machines m WHERE m.machine = $1");
        match self.client().await?.query_opt(&q, &[&id]).await.map_err(db_err)? {
            Some(row) => Ok(Some(machine_of(&row)?)),
            None => Ok(None),
        }
    }

    async fn sensors(&self, machine: &str) -> Result<Vec<SensorLatest>, CloudError> {
        let rows = self
            .client()
            .await?
            .query("SELECT body FROM latest WHERE machine = $1 ORDER BY sensor", &[&machine])
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| json_of(r, 0, "latest record")).collect()
    }

    async fn readings(
        &self,
        machine: &str,
        sensor: &str,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<ReadingPoint>, CloudError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT seq, ts, body FROM raw
                 WHERE machine = $1 AND sensor = $2 AND ($3::timestamptz IS NULL OR ts >= $3)
                 ORDER BY seq LIMIT $4",
                &[&machine, &sensor, &since, &limit],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get(0).map_err(|e| corrupt("raw reading", e))?;
                let body: RawBody = json_of(row, 2, "raw reading")?;
                Ok(ReadingPoint {
                    seq: seq as u64,
                    ts: row.try_get(1).map_err(|e| corrupt("raw reading", e))?,
                    value: body.v,
                    state: body.s,
                })
            })
            .collect()
    }

    async fn period(
        &self,
        machine: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<PeriodReading>, CloudError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT sensor, ts, body FROM raw WHERE machine = $1 AND ts >= $2 AND ts < $3
                 ORDER BY sensor, seq LIMIT $4",
                &[&machine, &from, &until, &limit],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let body: RawBody = json_of(row, 2, "raw reading")?;
                Ok(PeriodReading {
                    sensor: row.try_get(0).map_err(|e| corrupt("raw reading", e))?,
                    ts: row.try_get(1).map_err(|e| corrupt("raw reading", e))?,
                    value: body.v,
                    unit: body.u,
                    state: body.s,
                })
            })
            .collect()
    }

    async fn hourly(
        &self,
        machine: &str,
        sensor: &str,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<HourlyPoint>, CloudError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT hour, min, max, sum, count FROM hourly
                 WHERE machine = $1 AND sensor = $2 AND ($3::timestamptz IS NULL OR hour >= $3)
                 ORDER BY hour LIMIT $4",
                &[&machine, &sensor, &since, &limit],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let bad = |e| corrupt("hourly record", e);
                let sum: f64 = row.try_get(3).map_err(bad)?;
                let count: i64 = row.try_get(4).map_err(bad)?;
                Ok(HourlyPoint {
                    ts: row.try_get(0).map_err(bad)?,
                    min: row.try_get(1).map_err(bad)?,
                    avg: sum / count.max(1) as f64,
                    max: row.try_get(2).map_err(bad)?,
                    count: count.max(0) as u64,
                })
            })
            .collect()
    }

    async fn compact(
        &self,
        now: DateTime<Utc>,
        raw: Duration,
        hourly: Duration,
    ) -> Result<CompactOutcome, CloudError> {
        let raw_cut = now - chrono::Duration::from_std(raw).unwrap_or(chrono::Duration::MAX);
        let hourly_cut = now - chrono::Duration::from_std(hourly).unwrap_or(chrono::Duration::MAX);
        let mut out = CompactOutcome::default();
        let mut client = self.client().await?;
        // Whole days past retention: folded, then the partition dropped (no row-by-row delete).
        for (name, day) in schema::partitions(&client).await? {
            let end = schema::day_start(day.succ_opt().unwrap_or(day));
            if end > raw_cut {
                continue;
            }
            out.folded += schema::fold_and_drop(&mut client, &name).await?;
            self.days.lock().unwrap_or_else(|p| p.into_inner()).remove(&day);
        }
        // The day that straddles the cut: its older rows, folded as they are deleted.
        let tx = client.transaction().await.map_err(db_err)?;
        let q = format!(
            "WITH gone AS (DELETE FROM raw WHERE ts < $1 RETURNING machine, sensor, ts, num),
                  folded AS ({FOLD_INTO_HOURLY} RETURNING 1)
             SELECT count(*) FROM gone"
        );
        let n: i64 = tx.query_one(&q, &[&raw_cut]).await.map_err(db_err)?.try_get(0).map_err(db_err)?;
        out.folded += n.max(0) as u64;
        out.hourly_expired =
            tx.execute("DELETE FROM hourly WHERE hour < $1", &[&hourly_cut]).await.map_err(db_err)?;
        out.latest_expired =
            tx.execute("DELETE FROM latest WHERE ts < $1", &[&raw_cut]).await.map_err(db_err)?;
        let day_ago = now - chrono::Duration::days(1);
        out.unattached_expired =
            tx.execute("DELETE FROM unattached WHERE seen_at < $1", &[&day_ago]).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        drop(client);
        // The coming days' partitions, so ingest rarely has to make one.
        let today = now.date_naive();
        self.ensure_days(
            (0..schema::DAYS_AHEAD).filter_map(|d| today.checked_add_days(chrono::Days::new(d))),
        )
        .await?;
        Ok(out)
    }

    async fn note_unattached(&self, hubs: &[UnattachedHub]) -> Result<(), CloudError> {
        // The latest sighting of each hub wins; an upsert may not touch a row twice.
        let mut last: HashMap<&str, &UnattachedHub> = HashMap::new();
        for h in hubs {
            last.insert(&h.machine_id, h);
        }
        let mut ids = Vec::with_capacity(last.len());
        let mut seen = Vec::with_capacity(last.len());
        let mut infos = Vec::with_capacity(last.len());
        for (id, h) in last {
            ids.push(id);
            seen.push(h.seen_at);
            infos.push(Json(serde_json::to_value(h).map_err(encode)?));
        }
        self.client()
            .await?
            .execute(
                "INSERT INTO unattached (machine, seen_at, info)
                 SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::jsonb[])
                 ON CONFLICT (machine) DO UPDATE SET seen_at = EXCLUDED.seen_at, info = EXCLUDED.info",
                &[&ids, &seen, &infos],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn unattached(&self, now: DateTime<Utc>) -> Result<Vec<UnattachedHub>, CloudError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT u.info, m.info FROM unattached u LEFT JOIN machines m ON m.machine = u.machine
                 WHERE u.seen_at >= $1 ORDER BY u.machine",
                &[&(now - chrono::Duration::days(1))],
            )
            .await
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in &rows {
            let h: UnattachedHub = json_of(row, 0, "unattached record")?;
            let m: Option<Json<serde_json::Value>> =
                row.try_get(1).map_err(|e| corrupt("machine record", e))?;
            let m: Option<MachineInfo> = match m {
                Some(v) => Some(serde_json::from_value(v.0).map_err(|e| corrupt("machine record", e))?),
                None => None,
            };
            if still_unattached(&h, m.as_ref(), now) {
                out.push(h);
            }
        }
        Ok(out)
    }

    async fn raw_count(&self) -> Result<u64, CloudError> {
        let n: i64 = self
            .client()
            .await?
            .query_one("SELECT count(*) FROM raw", &[])
            .await
            .map_err(db_err)?
            .try_get(0)
            .map_err(db_err)?;
        Ok(n.max(0) as u64)
    }
}
