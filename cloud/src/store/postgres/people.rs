//! People on PostgreSQL: the same JSON records as the sled engine, one table each (migration 20),
//! with the columns queries select or delete by beside the document. Every write is one statement
//! or one transaction, durable when it returns. The `touch_*` calls update only the timestamps.

use super::{connect, db_err, PgStore};
use crate::error::CloudError;
use crate::store::people::{ApiToken, Customer, PeopleStore, Session, User};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use tokio_postgres::types::Json;

/// The people tables of the database a [`PgStore`] runs on (its pool, its migrations).
#[derive(Clone)]
pub struct PgPeople {
    pool: deadpool_postgres::Pool,
}

impl PgPeople {
    pub fn new(store: &PgStore) -> PgPeople {
        PgPeople { pool: store.pool.clone() }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, CloudError> {
        self.pool.get().await.map_err(connect::pool_err)
    }
}

fn doc<T: DeserializeOwned>(row: &tokio_postgres::Row, what: &str) -> Result<T, CloudError> {
    let Json(v): Json<serde_json::Value> = row.try_get("doc").map_err(db_err)?;
    serde_json::from_value(v).map_err(|e| CloudError::Corrupt(format!("{what} record: {e}")))
}

fn docs<T: DeserializeOwned>(rows: &[tokio_postgres::Row], what: &str) -> Result<Vec<T>, CloudError> {
    rows.iter().map(|r| doc(r, what)).collect()
}

fn json<T: serde::Serialize>(v: &T) -> Json<serde_json::Value> {
    Json(serde_json::to_value(v).expect("records serialise"))
}

#[async_trait::async_trait]
impl PeopleStore for PgPeople {
    async fn user(&self, name: &str) -> Result<Option<User>, CloudError> {
        let c = self.client().await?;
        let row =
            c.query_opt("SELECT doc FROM people_users WHERE name = $1", &[&name]).await.map_err(db_err)?;
        row.map(|r| doc(&r, "user")).transpose()
    }

    async fn users(&self) -> Result<Vec<User>, CloudError> {
        let c = self.client().await?;
        docs(&c.query("SELECT doc FROM people_users ORDER BY name", &[]).await.map_err(db_err)?, "user")
    }

    async fn put_user(&self, user: &User) -> Result<(), CloudError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO people_users (name, doc) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET doc = EXCLUDED.doc",
            &[&user.name, &json(user)],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_user(&self, name: &str) -> Result<bool, CloudError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let n = tx.execute("DELETE FROM people_users WHERE name = $1", &[&name]).await.map_err(db_err)?;
        tx.execute("DELETE FROM people_sessions WHERE username = $1", &[&name]).await.map_err(db_err)?;
        tx.execute("DELETE FROM people_tokens WHERE username = $1", &[&name]).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(n > 0)
    }

    async fn session(&self, hash: &str) -> Result<Option<Session>, CloudError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT jsonb_set(doc, '{last_seen}', to_jsonb(last_seen)) AS doc
                 FROM people_sessions WHERE hash = $1",
                &[&hash],
            )
            .await
            .map_err(db_err)?;
        row.map(|r| doc(&r, "session")).transpose()
    }

    async fn put_session(&self, s: &Session) -> Result<(), CloudError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO people_sessions (hash, username, created_at, last_seen, doc)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (hash) DO UPDATE SET last_seen = EXCLUDED.last_seen, doc = EXCLUDED.doc",
            &[&s.hash, &s.user, &s.created_at, &s.last_seen, &json(s)],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn touch_session(&self, hash: &str, now: DateTime<Utc>) -> Result<(), CloudError> {
        let c = self.client().await?;
        c.execute("UPDATE people_sessions SET last_seen = $2 WHERE hash = $1", &[&hash, &now])
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn delete_session(&self, hash: &str) -> Result<(), CloudError> {
        let c = self.client().await?;
        c.execute("DELETE FROM people_sessions WHERE hash = $1", &[&hash]).await.map_err(db_err)?;
        Ok(())
    }

    async fn delete_sessions_of(&self, user: &str) -> Result<u64, CloudError> {
        let c = self.client().await?;
        c.execute("DELETE FROM people_sessions WHERE username = $1", &[&user]).await.map_err(db_err)
    }

    async fn prune_sessions(
        &self,
        created_before: DateTime<Utc>,
        seen_before: DateTime<Utc>,
    ) -> Result<u64, CloudError> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM people_sessions WHERE created_at < $1 OR last_seen < $2",
            &[&created_before, &seen_before],
        )
        .await
        .map_err(db_err)
    }

    async fn customers(&self) -> Result<Vec<Customer>, CloudError> {
        let c = self.client().await?;
        docs(&c.query("SELECT doc FROM people_customers ORDER BY id", &[]).await.map_err(db_err)?, "customer")
    }

    async fn put_customer(&self, customer: &Customer) -> Result<(), CloudError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO people_customers (id, doc) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc",
            &[&customer.id, &json(customer)],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn api_token(&self, id: &str) -> Result<Option<ApiToken>, CloudError> {
        let c = self.client().await?;
        let row = c.query_opt("SELECT doc FROM people_tokens WHERE id = $1", &[&id]).await.map_err(db_err)?;
        row.map(|r| doc(&r, "API token")).transpose()
    }

    async fn api_tokens(&self) -> Result<Vec<ApiToken>, CloudError> {
        let c = self.client().await?;
        docs(&c.query("SELECT doc FROM people_tokens ORDER BY id", &[]).await.map_err(db_err)?, "API token")
    }

    async fn put_api_token(&self, t: &ApiToken) -> Result<(), CloudError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO people_tokens (id, username, expires_at, doc) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc, expires_at = EXCLUDED.expires_at",
            &[&t.id, &t.user, &t.expires_at, &json(t)],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn touch_api_token(&self, id: &str, now: DateTime<Utc>) -> Result<(), CloudError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE people_tokens SET doc = jsonb_set(doc, '{last_used}', to_jsonb($2::timestamptz)) WHERE id = $1",
            &[&id, &now],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_api_token(&self, id: &str) -> Result<bool, CloudError> {
        let c = self.client().await?;
        Ok(c.execute("DELETE FROM people_tokens WHERE id = $1", &[&id]).await.map_err(db_err)? > 0)
    }

    async fn prune_api_tokens(&self, now: DateTime<Utc>) -> Result<u64, CloudError> {
        let c = self.client().await?;
        c.execute("DELETE FROM people_tokens WHERE expires_at < $1", &[&now]).await.map_err(db_err)
    }
}
