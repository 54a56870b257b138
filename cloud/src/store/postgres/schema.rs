//! The schema: versioned migrations run at start, and the raw readings' daily partitions.
//!
//! Migrations are numbered (each area its own block of numbers, listed in order in
//! [`MIGRATIONS`]); `outpost_schema` records each one applied, and every one not recorded runs,
//! lowest first, whatever higher ones are there already. All pending ones run in
//! one transaction under a transaction-scoped advisory lock, so several cloud processes starting
//! at once apply each exactly once, and a failed migration leaves the schema as it was.

use super::db_err;
use crate::error::CloudError;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use std::collections::BTreeSet;

/// `(version, what it does, SQL)`, in order. Never edit one that shipped: add the next.
/// Numbers 2 to 9 are this area's (trust, commands, mail); others are kept for other areas.
pub(crate) const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "readings, latest values, hourly roll-ups, machines, unattached hubs",
        include_str!("migrations/0001_readings.sql"),
    ),
    (
        2,
        "enrollment keys, tokens, revocations, mail-command grants",
        include_str!("migrations/0002_trust.sql"),
    ),
    (3, "commands and the audit trail", include_str!("migrations/0003_commands.sql")),
    (4, "mail outbox and report runs", include_str!("migrations/0004_mail.sql")),
    (
        10,
        "sensors managed from the cloud: machine sensors, templates, versions, deliveries",
        include_str!("migrations/0010_managed_sensors.sql"),
    ),
    (20, "people: users, sessions, customers, API tokens", include_str!("migrations/0020_people.sql")),
    (30, "acknowledgements and maintenance windows", include_str!("migrations/0030_silences.sql")),
];

/// Advisory lock keys (any constants unlikely to collide with another application's).
const MIGRATION_LOCK: i64 = 0x6f75_7470_6f73_7401;
const PARTITION_LOCK: i64 = 0x6f75_7470_6f73_7402;

/// Days of raw partitions made ahead of time (today included).
pub const DAYS_AHEAD: u64 = 3;

/// Brings the schema to the newest version this build knows. Refuses a database migrated by a
/// newer build: its tables may mean something this one does not know.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<i32, CloudError> {
    let tx = client.transaction().await.map_err(db_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS outpost_schema (
             version int PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(db_err)?;
    let applied: BTreeSet<i32> = tx
        .query("SELECT version FROM outpost_schema", &[])
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    let current = applied.last().copied().unwrap_or(0);
    let newest = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
    if current > newest {
        return Err(CloudError::Config(format!(
            "the database's schema is version {current}, newer than this outpost knows ({newest}); \
             run the newer outpost, or point [storage] postgres at another database"
        )));
    }
    // Every migration not applied yet, in order: areas number theirs in blocks of their own, so
    // a lower number may arrive after a higher one was applied.
    for (version, what, sql) in MIGRATIONS.iter().filter(|m| !applied.contains(&m.0)) {
        tx.batch_execute(sql).await.map_err(db_err)?;
        tx.execute("INSERT INTO outpost_schema (version, description) VALUES ($1, $2)", &[version, what])
            .await
            .map_err(db_err)?;
        tracing::info!(version, what, "database schema migrated");
    }
    tx.commit().await.map_err(db_err)?;
    Ok(newest)
}

/// The partition of one day's raw readings.
pub fn partition_name(day: NaiveDate) -> String {
    format!("raw_{}", day.format("%Y%m%d"))
}

/// Midnight UTC starting `day`.
pub fn day_start(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// Creates the raw partitions of `days` that do not exist yet (one transaction, serialised with
/// other processes doing the same by an advisory lock, so none fails on a partition another
/// just made).
pub async fn create_partitions(
    client: &mut tokio_postgres::Client,
    days: &BTreeSet<NaiveDate>,
) -> Result<(), CloudError> {
    let tx = client.transaction().await.map_err(db_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK]).await.map_err(db_err)?;
    for day in days {
        let Some(next) = day.succ_opt() else { continue };
        // Only dates we formatted ourselves go into the statement (DDL takes no parameters).
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF raw FOR VALUES FROM ('{}') TO ('{}')",
            partition_name(*day),
            day_start(*day).format("%Y-%m-%d %H:%M:%S+00"),
            day_start(next).format("%Y-%m-%d %H:%M:%S+00"),
        );
        tx.batch_execute(&sql).await.map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

/// The raw partitions that exist, with their day, oldest first.
pub async fn partitions(client: &tokio_postgres::Client) -> Result<Vec<(String, NaiveDate)>, CloudError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'raw'::regclass ORDER BY 1",
            &[],
        )
        .await
        .map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        let name: String = row.try_get(0).map_err(db_err)?;
        // Partitions someone else attached are not ours to drop.
        if let Some(day) = name.strip_prefix("raw_").and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        {
            if partition_name(day) == name {
                out.push((name, day));
            }
        }
    }
    Ok(out)
}

/// Folds one whole partition into the hourly roll-ups and drops it, in one transaction;
/// returns how many readings it held.
pub async fn fold_and_drop(client: &mut tokio_postgres::Client, name: &str) -> Result<u64, CloudError> {
    let tx = client.transaction().await.map_err(db_err)?;
    let q = format!(
        "WITH gone AS (SELECT machine, sensor, ts, num FROM {name}),
              folded AS ({} RETURNING 1)
         SELECT count(*) FROM gone",
        super::FOLD_INTO_HOURLY
    );
    let n: i64 = tx.query_one(&q, &[]).await.map_err(db_err)?.try_get(0).map_err(db_err)?;
    tx.batch_execute(&format!("DROP TABLE {name}")).await.map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(n.max(0) as u64)
}
