//! [`ManagedStore`] on PostgreSQL (tables of migration 10). A save is one transaction. Each new
//! version row is keyed `(machine, version)`, so of two cloud nodes saving the same machine at
//! once, one fails on the key and nothing of its change is kept ([`CloudError::Conflict`]).
//! Durable on return (after COMMIT).

use super::{connect, db_err};
use crate::error::CloudError;
use crate::store::managed::{
    check_next, Delivery, ManagedChange, ManagedStore, Template, TemplateWrite, VersionRecord,
    DELIVERIES_KEPT, HISTORY_KEPT,
};
use deadpool_postgres::Pool;
use outpost_shared::sensor_config::SensorConfig;
use tokio_postgres::types::Json;

#[derive(Clone)]
pub struct PgManaged {
    pool: Pool,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> CloudError {
    CloudError::Corrupt(format!("{what}: {e}"))
}

fn body<T: serde::de::DeserializeOwned>(
    row: &tokio_postgres::Row,
    i: usize,
    what: &str,
) -> Result<T, CloudError> {
    let v: Json<serde_json::Value> = row.try_get(i).map_err(|e| corrupt(what, e))?;
    serde_json::from_value(v.0).map_err(|e| corrupt(what, e))
}

fn to_json<T: serde::Serialize>(v: &T) -> Json<serde_json::Value> {
    Json(serde_json::to_value(v).expect("managed records serialise"))
}

/// Versions are u64 in Rust and bigint here; no machine gets near 2^63 saves.
fn db_version(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A second cloud saved the same version first: the caller reloads and tries again.
fn unique_violation(e: tokio_postgres::Error, machine: &str) -> CloudError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        CloudError::Conflict(format!("the sensors of {machine} changed meanwhile; reload and save again"))
    } else {
        db_err(e)
    }
}

impl PgManaged {
    /// Shares the pool of [`super::PgStore`] (its migrations made the tables).
    pub fn new(pool: Pool) -> PgManaged {
        PgManaged { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, CloudError> {
        self.pool.get().await.map_err(connect::pool_err)
    }
}

impl super::PgStore {
    /// The managed-sensor tables on this store's pool.
    pub fn managed(&self) -> PgManaged {
        PgManaged::new(self.pool.clone())
    }
}

#[async_trait::async_trait]
impl ManagedStore for PgManaged {
    async fn machine_sensors(&self, machine: &str) -> Result<Vec<SensorConfig>, CloudError> {
        let c = self.client().await?;
        let row = c
            .query_opt("SELECT sensors FROM managed_sensors WHERE machine = $1", &[&machine])
            .await
            .map_err(db_err)?;
        row.map(|r| body(&r, 0, "machine sensors")).transpose().map(Option::unwrap_or_default)
    }

    async fn machine_templates(&self, machine: &str) -> Result<Vec<String>, CloudError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT template FROM managed_assignments WHERE machine = $1 ORDER BY position",
                &[&machine],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| r.try_get(0).map_err(|e| corrupt("template list", e))).collect()
    }

    async fn templates(&self) -> Result<Vec<Template>, CloudError> {
        let c = self.client().await?;
        let rows = c.query("SELECT body FROM managed_templates ORDER BY name", &[]).await.map_err(db_err)?;
        rows.iter().map(|r| body(r, 0, "template")).collect()
    }

    async fn template(&self, name: &str) -> Result<Option<Template>, CloudError> {
        let c = self.client().await?;
        let row = c
            .query_opt("SELECT body FROM managed_templates WHERE name = $1", &[&name])
            .await
            .map_err(db_err)?;
        row.map(|r| body(&r, 0, "template")).transpose()
    }

    async fn machines_using(&self, template: &str) -> Result<Vec<String>, CloudError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT machine FROM managed_assignments WHERE template = $1 ORDER BY machine",
                &[&template],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| r.try_get(0).map_err(|e| corrupt("template users", e))).collect()
    }

    async fn latest_version(&self, machine: &str) -> Result<Option<VersionRecord>, CloudError> {
        Ok(self.history(machine, 1).await?.pop())
    }

    async fn version(&self, machine: &str, version: u64) -> Result<Option<VersionRecord>, CloudError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT body FROM managed_versions WHERE machine = $1 AND version = $2",
                &[&machine, &db_version(version)],
            )
            .await
            .map_err(db_err)?;
        row.map(|r| body(&r, 0, "version")).transpose()
    }

    async fn history(&self, machine: &str, limit: usize) -> Result<Vec<VersionRecord>, CloudError> {
        let c = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .query(
                "SELECT body FROM managed_versions WHERE machine = $1 ORDER BY version DESC LIMIT $2",
                &[&machine, &limit],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| body(r, 0, "version")).collect()
    }

    async fn managed_machines(&self) -> Result<Vec<String>, CloudError> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT DISTINCT machine FROM managed_versions ORDER BY machine", &[])
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| r.try_get(0).map_err(|e| corrupt("managed machines", e))).collect()
    }

    async fn save(&self, change: ManagedChange) -> Result<(), CloudError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        for v in &change.versions {
            let newest: i64 = tx
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM managed_versions WHERE machine = $1",
                    &[&v.machine],
                )
                .await
                .map_err(db_err)?
                .try_get(0)
                .map_err(db_err)?;
            check_next(&v.machine, newest.max(0) as u64, v.version)?;
            tx.execute(
                "INSERT INTO managed_versions (machine, version, at, body) VALUES ($1, $2, $3, $4)",
                &[&v.machine, &db_version(v.version), &v.at, &to_json(v)],
            )
            .await
            .map_err(|e| unique_violation(e, &v.machine))?;
            tx.execute(
                "DELETE FROM managed_versions WHERE machine = $1 AND version <= $2",
                &[&v.machine, &(db_version(v.version) - HISTORY_KEPT as i64)],
            )
            .await
            .map_err(db_err)?;
        }
        for (machine, list) in &change.machine_sensors {
            if list.is_empty() {
                tx.execute("DELETE FROM managed_sensors WHERE machine = $1", &[machine])
                    .await
                    .map_err(db_err)?;
            } else {
                tx.execute(
                    "INSERT INTO managed_sensors (machine, sensors) VALUES ($1, $2)
                     ON CONFLICT (machine) DO UPDATE SET sensors = EXCLUDED.sensors",
                    &[machine, &to_json(list)],
                )
                .await
                .map_err(db_err)?;
            }
        }
        for (machine, names) in &change.assignments {
            tx.execute("DELETE FROM managed_assignments WHERE machine = $1", &[machine])
                .await
                .map_err(db_err)?;
            for (position, name) in names.iter().enumerate() {
                let position = i32::try_from(position).unwrap_or(i32::MAX);
                tx.execute(
                    "INSERT INTO managed_assignments (machine, template, position) VALUES ($1, $2, $3)",
                    &[machine, name, &position],
                )
                .await
                .map_err(db_err)?;
            }
        }
        match &change.template {
            Some(TemplateWrite::Put(t)) => {
                tx.execute(
                    "INSERT INTO managed_templates (name, body) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body",
                    &[&t.name, &to_json(t)],
                )
                .await
                .map_err(db_err)?;
            }
            Some(TemplateWrite::Delete(name)) => {
                tx.execute("DELETE FROM managed_templates WHERE name = $1", &[name]).await.map_err(db_err)?;
            }
            None => {}
        }
        tx.commit().await.map_err(db_err)
    }

    async fn note_delivery(&self, d: Delivery) -> Result<(), CloudError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        tx.execute(
            "INSERT INTO managed_deliveries (machine, version, command, at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
            &[&d.machine, &db_version(d.version), &d.command, &d.at],
        )
        .await
        .map_err(db_err)?;
        // A machine offline for weeks gets a delivery per expired command: keep the newest.
        tx.execute(
            "DELETE FROM managed_deliveries WHERE machine = $1 AND (version, at, command) NOT IN (
                 SELECT version, at, command FROM managed_deliveries WHERE machine = $1
                 ORDER BY version DESC, at DESC LIMIT $2)",
            &[&d.machine, &(DELIVERIES_KEPT as i64)],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn deliveries(&self, machine: &str, limit: usize) -> Result<Vec<Delivery>, CloudError> {
        let c = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .query(
                "SELECT version, command, at FROM managed_deliveries WHERE machine = $1
                 ORDER BY version DESC, at DESC LIMIT $2",
                &[&machine, &limit],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let version: i64 = r.try_get(0).map_err(|e| corrupt("delivery", e))?;
                Ok(Delivery {
                    machine: machine.to_string(),
                    version: version.max(0) as u64,
                    command: r.try_get(1).map_err(|e| corrupt("delivery", e))?,
                    at: r.try_get(2).map_err(|e| corrupt("delivery", e))?,
                })
            })
            .collect()
    }
}
