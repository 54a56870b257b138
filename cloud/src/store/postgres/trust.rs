//! [`TrustStore`] on PostgreSQL (tables of migration 2). An enrollment is one transaction that
//! locks the token's row (`FOR UPDATE`): racing enrollments with one token queue on that lock
//! and the second sees it used. Two different tokens racing for one key both find no key row to
//! lock; the loser's insert hits the primary key and the whole transaction runs again, then
//! seeing the winner's key.

use super::{corrupt, db_err, encode, json_of};
use crate::error::CloudError;
use crate::store::trust::{
    EnrollDecision, EnrollView, EnrollWrite, MachineKey, MailGrant, RevokedKey, TokenRecord, TrustStore,
};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use outpost_shared::model::Role;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;

#[derive(Clone)]
pub struct PgTrust {
    pool: Pool,
}

/// Tries of one enrollment transaction when a racing one took the key first.
const ENROLL_TRIES: usize = 3;

fn role_text(r: Role) -> String {
    r.to_string()
}

fn value<T: serde::Serialize>(v: &T) -> Result<Json<serde_json::Value>, CloudError> {
    Ok(Json(serde_json::to_value(v).map_err(encode)?))
}

impl PgTrust {
    pub fn new(pool: Pool) -> PgTrust {
        PgTrust { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, CloudError> {
        self.pool.get().await.map_err(super::connect::pool_err)
    }

    async fn keys_where(
        &self,
        filter: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<MachineKey>, CloudError> {
        let q = format!("SELECT body FROM machine_keys {filter} ORDER BY machine");
        let rows = self.client().await?.query(&q, args).await.map_err(db_err)?;
        rows.iter().map(|r| json_of(r, 0, "key record")).collect()
    }

    /// One try of an enrollment; `Ok(None)` when a racing transaction took the key first.
    async fn enroll_once(
        &self,
        hash: &str,
        machine: &str,
        decide: EnrollDecision<'_>,
    ) -> Result<Option<Result<MachineKey, String>>, CloudError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let token = tx
            .query_opt("SELECT body FROM enrollment_tokens WHERE hash = $1 FOR UPDATE", &[&hash])
            .await
            .map_err(db_err)?;
        let key = tx
            .query_opt("SELECT body FROM machine_keys WHERE machine = $1 FOR UPDATE", &[&machine])
            .await
            .map_err(db_err)?;
        let revoked = tx
            .query_opt("SELECT body FROM revoked_keys WHERE machine = $1 FOR UPDATE", &[&machine])
            .await
            .map_err(db_err)?;
        let view = EnrollView {
            token: token.map(|r| json_of(&r, 0, "token record")).transpose()?,
            key: key.map(|r| json_of(&r, 0, "key record")).transpose()?,
            revoked: revoked.map(|r| json_of(&r, 0, "revocation record")).transpose()?,
        };
        let (token, key) = match decide(&view) {
            Err(why) => return Ok(Some(Err(why))),
            Ok(EnrollWrite::Stands(k)) => return Ok(Some(Ok(k))),
            Ok(EnrollWrite::Enroll { token, key }) => (token, key),
        };
        tx.execute("DELETE FROM revoked_keys WHERE machine = $1", &[&machine]).await.map_err(db_err)?;
        tx.execute("UPDATE enrollment_tokens SET body = $2 WHERE hash = $1", &[&hash, &value(&token)?])
            .await
            .map_err(db_err)?;
        let inserted = tx
            .execute(
                "INSERT INTO machine_keys (machine, network, role, body) VALUES ($1, $2, $3, $4)",
                &[&machine, &key.network_id, &role_text(key.role), &value(&key)?],
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Some(Ok(key)))
    }
}

#[async_trait::async_trait]
impl TrustStore for PgTrust {
    async fn machine_key(&self, id: &str) -> Result<Option<MachineKey>, CloudError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT body FROM machine_keys WHERE machine = $1", &[&id])
            .await
            .map_err(db_err)?;
        row.map(|r| json_of(&r, 0, "key record")).transpose()
    }

    async fn machine_keys_of(&self, ids: &[String]) -> Result<Vec<MachineKey>, CloudError> {
        self.keys_where("WHERE machine = ANY($1)", &[&ids]).await
    }

    async fn machine_keys(&self) -> Result<Vec<MachineKey>, CloudError> {
        self.keys_where("", &[]).await
    }

    async fn network_keys(&self, network: &str) -> Result<Vec<MachineKey>, CloudError> {
        self.keys_where("WHERE network = $1", &[&network]).await
    }

    async fn connectors(&self, network: &str) -> Result<Vec<MachineKey>, CloudError> {
        self.keys_where("WHERE network = $1 AND role = $2", &[&network, &role_text(Role::Connector)]).await
    }

    async fn revocation(&self, id: &str) -> Result<Option<RevokedKey>, CloudError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT body FROM revoked_keys WHERE machine = $1", &[&id])
            .await
            .map_err(db_err)?;
        row.map(|r| json_of(&r, 0, "revocation record")).transpose()
    }

    async fn put_token(&self, hash: &str, rec: &TokenRecord) -> Result<(), CloudError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO enrollment_tokens (hash, body) VALUES ($1, $2)
                 ON CONFLICT (hash) DO UPDATE SET body = EXCLUDED.body",
                &[&hash, &value(rec)?],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn cancel_token(&self, id: &str) -> Result<Option<(String, TokenRecord)>, CloudError> {
        // A prefix match on the hash, compared as text (no LIKE: no character of `id` is special).
        let rows = self
            .client()
            .await?
            .query(
                "DELETE FROM enrollment_tokens WHERE hash = (
                     SELECT hash FROM enrollment_tokens
                     WHERE left(hash, length($1)) = $1 AND body->'used_by' = 'null'::jsonb
                     ORDER BY hash LIMIT 1)
                 RETURNING hash, body",
                &[&id],
            )
            .await
            .map_err(db_err)?;
        match rows.first() {
            Some(r) => {
                Ok(Some((r.try_get(0).map_err(|e| corrupt("token", e))?, json_of(r, 1, "token record")?)))
            }
            None => Ok(None),
        }
    }

    async fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, CloudError> {
        let rows = self
            .client()
            .await?
            .query("SELECT hash, body FROM enrollment_tokens ORDER BY hash", &[])
            .await
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            // An unreadable record is skipped, as on sled.
            if let Ok(rec) = json_of::<TokenRecord>(r, 1, "token record") {
                out.push((r.try_get(0).map_err(|e| corrupt("token", e))?, rec));
            }
        }
        Ok(out)
    }

    async fn remove_tokens(&self, hashes: &[String]) -> Result<u64, CloudError> {
        self.client()
            .await?
            .execute("DELETE FROM enrollment_tokens WHERE hash = ANY($1)", &[&hashes])
            .await
            .map_err(db_err)
    }

    async fn enroll(
        &self,
        hash: &str,
        machine: &str,
        decide: EnrollDecision<'_>,
    ) -> Result<Result<MachineKey, String>, CloudError> {
        for _ in 0..ENROLL_TRIES {
            if let Some(outcome) = self.enroll_once(hash, machine, decide).await? {
                return Ok(outcome);
            }
        }
        Err(CloudError::Unavailable("enrollment kept racing another for the same key".into()))
    }

    async fn revoke(&self, id: &str, now: DateTime<Utc>) -> Result<Option<MachineKey>, CloudError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let Some(row) = tx
            .query_opt("DELETE FROM machine_keys WHERE machine = $1 RETURNING body", &[&id])
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let mk: MachineKey = json_of(&row, 0, "key record")?;
        let record = RevokedKey { key: mk.clone(), revoked_at: now, archived_at: None };
        tx.execute(
            "INSERT INTO revoked_keys (machine, revoked_at, body) VALUES ($1, $2, $3)
             ON CONFLICT (machine) DO UPDATE SET revoked_at = EXCLUDED.revoked_at, body = EXCLUDED.body",
            &[&id, &now, &value(&record)?],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(mk))
    }

    async fn archive(&self, id: &str, at: Option<DateTime<Utc>>) -> Result<bool, CloudError> {
        let at = serde_json::to_value(at).map_err(|e| CloudError::Invalid(e.to_string()))?;
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE revoked_keys SET body = jsonb_set(body, '{archived_at}', $2) WHERE machine = $1",
                &[&id, &at],
            )
            .await
            .map_err(db_err)?;
        Ok(n == 1)
    }

    async fn put_mail_grant(&self, connector: &str, grant: &MailGrant) -> Result<(), CloudError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO mail_grants (machine, body) VALUES ($1, $2)
                 ON CONFLICT (machine) DO UPDATE SET body = EXCLUDED.body",
                &[&connector, &value(grant)?],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn remove_mail_grant(&self, connector: &str) -> Result<bool, CloudError> {
        let n = self
            .client()
            .await?
            .execute("DELETE FROM mail_grants WHERE machine = $1", &[&connector])
            .await
            .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn mail_grant(&self, connector: &str) -> Result<Option<MailGrant>, CloudError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT body FROM mail_grants WHERE machine = $1", &[&connector])
            .await
            .map_err(db_err)?;
        row.map(|r| json_of(&r, 0, "mail grant")).transpose()
    }
}
