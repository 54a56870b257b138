//! [`CommandStore`] on PostgreSQL (tables of migration 3): `commands` keyed by (machine, id) with
//! a `waiting` flag in place of sled's pending tree, and `audit` keyed by (machine, n). A save is
//! one transaction: commands and their audit lines together. A finished command is never
//! written over: a node handing it out again from a read made before another node recorded its
//! result cannot bring it back.

use super::{db_err, encode, json_of};
use crate::error::CloudError;
use crate::store::commands::{AuditEntry, CommandChange, CommandRecord, CommandStore};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio_postgres::types::Json;

#[derive(Clone)]
pub struct PgCommands {
    pool: Pool,
}

fn value<T: serde::Serialize>(v: &T) -> Result<Json<serde_json::Value>, CloudError> {
    Ok(Json(serde_json::to_value(v).map_err(encode)?))
}

const INSERT_AUDIT: &str = "INSERT INTO audit (machine, ts, body) VALUES ($1, $2, $3)";

impl PgCommands {
    pub fn new(pool: Pool) -> PgCommands {
        PgCommands { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, CloudError> {
        self.pool.get().await.map_err(super::connect::pool_err)
    }
}

#[async_trait::async_trait]
impl CommandStore for PgCommands {
    async fn save(&self, changes: &[CommandChange]) -> Result<(), CloudError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        for c in changes {
            let r = &c.rec;
            tx.execute(
                "INSERT INTO commands (machine, id, waiting, status, expires_at, finished_at, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (machine, id) DO UPDATE SET waiting = EXCLUDED.waiting,
                     status = EXCLUDED.status, finished_at = EXCLUDED.finished_at, body = EXCLUDED.body
                 WHERE commands.status IN ('pending', 'delivered')",
                &[&r.machine, &r.id, &c.waiting, &r.status, &r.expires_at, &r.finished_at, &value(r)?],
            )
            .await
            .map_err(db_err)?;
            if let Some(e) = &c.audit {
                tx.execute(INSERT_AUDIT, &[&e.machine, &e.ts, &value(e)?]).await.map_err(db_err)?;
            }
        }
        tx.commit().await.map_err(db_err)
    }

    async fn get(&self, id: &str) -> Result<Option<CommandRecord>, CloudError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT body FROM commands WHERE id = $1 LIMIT 1", &[&id])
            .await
            .map_err(db_err)?;
        row.map(|r| json_of(&r, 0, "command record")).transpose()
    }

    async fn waiting(&self, machines: &[String]) -> Result<Vec<CommandRecord>, CloudError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT body FROM commands WHERE machine = ANY($1) AND waiting ORDER BY machine, id",
                &[&machines],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| json_of(r, 0, "command record")).collect()
    }

    async fn unwait(&self, commands: &[(String, String)]) -> Result<(), CloudError> {
        let (machines, ids): (Vec<&str>, Vec<&str>) =
            commands.iter().map(|(m, i)| (m.as_str(), i.as_str())).unzip();
        self.client()
            .await?
            .execute(
                "UPDATE commands c SET waiting = false
                 FROM unnest($1::text[], $2::text[]) AS u(machine, id)
                 WHERE c.machine = u.machine AND c.id = u.id",
                &[&machines, &ids],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn record(&self, e: &AuditEntry) -> Result<(), CloudError> {
        self.client().await?.execute(INSERT_AUDIT, &[&e.machine, &e.ts, &value(e)?]).await.map_err(db_err)?;
        Ok(())
    }

    async fn audit(&self, machine: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, CloudError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let rows = match machine {
            Some(m) => {
                client
                    .query(
                        "SELECT body FROM audit WHERE machine = $1 ORDER BY ts DESC, n DESC LIMIT $2",
                        &[&m, &limit],
                    )
                    .await
            }
            None => client.query("SELECT body FROM audit ORDER BY ts DESC, n DESC LIMIT $1", &[&limit]).await,
        }
        .map_err(db_err)?;
        // An unreadable line is skipped, as on sled.
        Ok(rows.iter().filter_map(|r| json_of(r, 0, "audit entry").ok()).collect())
    }

    async fn prune(
        &self,
        now: DateTime<Utc>,
        commands: Duration,
        audit: Duration,
    ) -> Result<(u64, u64), CloudError> {
        let cut = now - chrono::Duration::from_std(commands).unwrap_or(chrono::Duration::MAX);
        let audit_cut = now - chrono::Duration::from_std(audit).unwrap_or(chrono::Duration::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        // Ended: expired while waiting (then at its expiry), or finished (at its result's time).
        let gone = tx
            .execute(
                "DELETE FROM commands WHERE
                    (status IN ('pending', 'delivered') AND expires_at < $1 AND expires_at < $2)
                 OR (status NOT IN ('pending', 'delivered') AND coalesce(finished_at, expires_at) < $1)",
                &[&cut, &now],
            )
            .await
            .map_err(db_err)?;
        let old = tx.execute("DELETE FROM audit WHERE ts < $1", &[&audit_cut]).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok((gone, old))
    }
}
