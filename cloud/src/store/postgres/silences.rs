//! [`SilenceStore`] on PostgreSQL: tables `acks` and `maintenance` (migration 30), each record
//! as jsonb beside the columns queries need.

use super::{corrupt, db_err, encode};
use crate::error::CloudError;
use crate::store::silences::{Ack, SilenceStore, Window};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

#[derive(Clone)]
pub struct PgSilences {
    pool: Pool,
}

impl PgSilences {
    pub fn new(pool: Pool) -> PgSilences {
        PgSilences { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, CloudError> {
        self.pool.get().await.map_err(super::connect::pool_err)
    }
}

fn body<T: serde::de::DeserializeOwned>(what: &str, row: &tokio_postgres::Row) -> Result<T, CloudError> {
    let v: serde_json::Value = row.try_get("body").map_err(|e| corrupt(what, e))?;
    serde_json::from_value(v).map_err(|e| corrupt(what, e))
}

#[async_trait::async_trait]
impl SilenceStore for PgSilences {
    async fn acks(&self) -> Result<Vec<Ack>, CloudError> {
        let rows = self.client().await?.query("SELECT body FROM acks", &[]).await.map_err(db_err)?;
        rows.iter().map(|r| body("acknowledgement", r)).collect()
    }

    async fn put_ack(&self, ack: &Ack) -> Result<(), CloudError> {
        let json = serde_json::to_value(ack).map_err(encode)?;
        self.client()
            .await?
            .execute(
                "INSERT INTO acks (machine, sensor, reading_ts, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (machine, sensor) DO UPDATE
                 SET reading_ts = EXCLUDED.reading_ts, body = EXCLUDED.body",
                &[&ack.machine, &ack.sensor, &ack.reading_ts, &json],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn remove_ack(
        &self,
        machine: &str,
        sensor: &str,
        before: Option<DateTime<Utc>>,
    ) -> Result<Option<Ack>, CloudError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "DELETE FROM acks WHERE machine = $1 AND sensor = $2
                 AND ($3::timestamptz IS NULL OR reading_ts < $3) RETURNING body",
                &[&machine, &sensor, &before],
            )
            .await
            .map_err(db_err)?;
        row.map(|r| body("acknowledgement", &r)).transpose()
    }

    async fn windows(&self) -> Result<Vec<Window>, CloudError> {
        let rows = self.client().await?.query("SELECT body FROM maintenance", &[]).await.map_err(db_err)?;
        rows.iter().map(|r| body("maintenance window", r)).collect()
    }

    async fn put_window(&self, window: &Window) -> Result<(), CloudError> {
        let json = serde_json::to_value(window).map_err(encode)?;
        self.client()
            .await?
            .execute(
                "INSERT INTO maintenance (id, body) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
                &[&window.id, &json],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn remove_window(&self, id: &str) -> Result<Option<Window>, CloudError> {
        let row = self
            .client()
            .await?
            .query_opt("DELETE FROM maintenance WHERE id = $1 RETURNING body", &[&id])
            .await
            .map_err(db_err)?;
        row.map(|r| body("maintenance window", &r)).transpose()
    }
}
