//! The mail outbox ([`MailStore`]) and report runs ([`ReportRuns`]) on PostgreSQL (tables of
//! migration 4). Any node may queue mail; the sender runs on one node at a time (see
//! `crate::nodes`), so a mail is sent by one node. A node that queued mail wakes its own sender
//! at once; mail queued on another node is found within [`RECHECK`] (or at once when the node
//! hears the database's notification, see `crate::store::postgres::listen`).

use super::{db_err, json_of};
use crate::error::CloudError;
use crate::store::mail::{MailStore, ReportRuns};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use outpost_shared::mail::outbox::MAX_QUEUED;
use outpost_shared::mail::{Mail, OutboxError, Queued};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::types::Json;

/// How often an idle sender looks for mail another node queued.
pub const RECHECK: Duration = Duration::from_secs(5);

/// The NOTIFY channel that says "mail queued".
pub const MAIL_CHANNEL: &str = "outpost_mail";

#[derive(Clone)]
pub struct PgOutbox {
    pool: Pool,
    wake: Arc<Notify>,
}

fn unavailable(e: CloudError) -> OutboxError {
    OutboxError::Unavailable(e.to_string())
}

impl PgOutbox {
    pub fn new(pool: Pool) -> PgOutbox {
        PgOutbox { pool, wake: Arc::new(Notify::new()) }
    }

    /// Wakes the sender: another node said mail was queued.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, OutboxError> {
        self.pool.get().await.map_err(|e| unavailable(super::connect::pool_err(e)))
    }
}

#[async_trait::async_trait]
impl MailStore for PgOutbox {
    async fn enqueue(&self, mail: &Mail) -> Result<u64, OutboxError> {
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).map_err(|e| OutboxError::Unavailable(format!("randomness: {e}")))?;
        let message_id = format!("{}.{}@outpost", Utc::now().timestamp_millis(), hex::encode(rnd));
        let body =
            serde_json::to_value(mail).map_err(|e| OutboxError::Corrupt { id: 0, detail: e.to_string() })?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| unavailable(db_err(e)))?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO mail_outbox (message_id, body) VALUES ($1, $2) RETURNING id",
                &[&message_id, &Json(body)],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| unavailable(db_err(e)))?;
        // Bounded: past the cap the oldest waiting mails are set aside (a fresh alert matters
        // more than a stale one), as on sled.
        let over = tx
            .execute(
                "UPDATE mail_outbox SET dead = true WHERE id IN (
                     SELECT id FROM mail_outbox WHERE NOT dead ORDER BY id DESC OFFSET $1)",
                &[&(MAX_QUEUED as i64)],
            )
            .await
            .map_err(|e| unavailable(db_err(e)))?;
        if over > 0 {
            tracing::error!(queued = MAX_QUEUED, "mail outbox full: oldest mail set aside unsent");
        }
        tx.execute(&format!("NOTIFY {MAIL_CHANNEL}"), &[]).await.map_err(|e| unavailable(db_err(e)))?;
        tx.commit().await.map_err(|e| unavailable(db_err(e)))?;
        self.wake.notify_one();
        Ok(id as u64)
    }

    async fn first(&self) -> Result<Option<Queued>, OutboxError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT id, message_id, body FROM mail_outbox WHERE NOT dead ORDER BY id LIMIT 1", &[])
            .await
            .map_err(|e| unavailable(db_err(e)))?;
        let Some(row) = row else { return Ok(None) };
        let id: i64 = row.try_get(0).map_err(|e| unavailable(db_err(e)))?;
        let message_id: String = row.try_get(1).map_err(|e| unavailable(db_err(e)))?;
        match json_of::<Mail>(&row, 2, "mail") {
            Ok(mail) => Ok(Some(Queued { id: id as u64, message_id, mail })),
            Err(e) => {
                // Unreadable: set aside rather than loop on it forever.
                self.bury(id as u64).await?;
                Err(OutboxError::Corrupt { id: id as u64, detail: e.to_string() })
            }
        }
    }

    async fn remove(&self, id: u64) -> Result<(), OutboxError> {
        self.client()
            .await?
            .execute("DELETE FROM mail_outbox WHERE id = $1", &[&(id as i64)])
            .await
            .map_err(|e| unavailable(db_err(e)))?;
        Ok(())
    }

    async fn bury(&self, id: u64) -> Result<(), OutboxError> {
        self.client()
            .await?
            .execute("UPDATE mail_outbox SET dead = true WHERE id = $1", &[&(id as i64)])
            .await
            .map_err(|e| unavailable(db_err(e)))?;
        Ok(())
    }

    async fn waiting(&self) -> usize {
        let Ok(client) = self.client().await else { return 0 };
        client
            .query_one("SELECT count(*) FROM mail_outbox WHERE NOT dead", &[])
            .await
            .and_then(|r| r.try_get::<_, i64>(0))
            .map(|n| n.max(0) as usize)
            .unwrap_or(0)
    }

    async fn wait_for_mail(&self) {
        let _ = tokio::time::timeout(RECHECK, self.wake.notified()).await;
    }
}

#[derive(Clone)]
pub struct PgReportRuns {
    pool: Pool,
}

impl PgReportRuns {
    pub fn new(pool: Pool) -> PgReportRuns {
        PgReportRuns { pool }
    }
}

#[async_trait::async_trait]
impl ReportRuns for PgReportRuns {
    async fn last(&self, network: &str) -> Result<Option<DateTime<Utc>>, CloudError> {
        let client = self.pool.get().await.map_err(super::connect::pool_err)?;
        let row = client
            .query_opt("SELECT until FROM report_runs WHERE network = $1", &[&network])
            .await
            .map_err(db_err)?;
        row.map(|r| r.try_get(0).map_err(|e| super::corrupt("report run", e))).transpose()
    }

    async fn set(&self, network: &str, until: DateTime<Utc>) -> Result<(), CloudError> {
        let client = self.pool.get().await.map_err(super::connect::pool_err)?;
        client
            .execute(
                "INSERT INTO report_runs (network, until) VALUES ($1, $2)
                 ON CONFLICT (network) DO UPDATE SET until = EXCLUDED.until",
                &[&network, &until],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }
}
