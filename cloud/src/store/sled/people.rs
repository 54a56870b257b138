//! People on the embedded engine: four trees of JSON records in the cloud's sled database, made
//! durable by the database's one group-commit flusher (never a flush of their own beside it).
//!
//! - `people_users`: name → json(User)
//! - `people_sessions`: hex SHA-256 of the cookie → json(Session)
//! - `people_customers`: id → json(Customer)
//! - `people_tokens`: token id → json(ApiToken)

use crate::error::CloudError;
use crate::store::people::{ApiToken, Customer, PeopleStore, Session, User};
use chrono::{DateTime, Utc};
use outpost_shared::group_flush::GroupFlush;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Clone)]
pub struct SledPeople {
    flusher: GroupFlush,
    users: sled::Tree,
    sessions: sled::Tree,
    customers: sled::Tree,
    tokens: sled::Tree,
}

impl SledPeople {
    /// Opens the people trees of the database `store` runs on, sharing its flusher.
    pub fn open(store: &super::SledStore) -> Result<SledPeople, CloudError> {
        let db = store.db();
        Ok(SledPeople {
            flusher: store.flusher(),
            users: db.open_tree("people_users")?,
            sessions: db.open_tree("people_sessions")?,
            customers: db.open_tree("people_customers")?,
            tokens: db.open_tree("people_tokens")?,
        })
    }
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>, CloudError> {
    match tree.get(key.as_bytes())? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| CloudError::Corrupt(format!("{} record {key}: {e}", tree_name(tree)))),
    }
}

fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, CloudError> {
    let mut out = Vec::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        out.push(serde_json::from_slice(&v).map_err(|e| {
            CloudError::Corrupt(format!("{} record {}: {e}", tree_name(tree), String::from_utf8_lossy(&k)))
        })?);
    }
    Ok(out)
}

fn put<T: Serialize>(tree: &sled::Tree, key: &str, value: &T) -> Result<(), CloudError> {
    tree.insert(key.as_bytes(), serde_json::to_vec(value).expect("records serialise"))?;
    Ok(())
}

fn tree_name(tree: &sled::Tree) -> String {
    String::from_utf8_lossy(&tree.name()).into_owned()
}

#[async_trait::async_trait]
impl PeopleStore for SledPeople {
    async fn user(&self, name: &str) -> Result<Option<User>, CloudError> {
        get(&self.users, name)
    }

    async fn users(&self) -> Result<Vec<User>, CloudError> {
        all(&self.users)
    }

    async fn put_user(&self, user: &User) -> Result<(), CloudError> {
        put(&self.users, &user.name, user)?;
        self.durable().await
    }

    async fn delete_user(&self, name: &str) -> Result<bool, CloudError> {
        let existed = self.users.remove(name.as_bytes())?.is_some();
        self.drop_sessions_of(name)?;
        for t in all::<ApiToken>(&self.tokens)? {
            if t.user == name {
                self.tokens.remove(t.id.as_bytes())?;
            }
        }
        self.durable().await?;
        Ok(existed)
    }

    async fn session(&self, hash: &str) -> Result<Option<Session>, CloudError> {
        get(&self.sessions, hash)
    }

    async fn put_session(&self, session: &Session) -> Result<(), CloudError> {
        put(&self.sessions, &session.hash, session)?;
        self.durable().await
    }

    async fn touch_session(&self, hash: &str, now: DateTime<Utc>) -> Result<(), CloudError> {
        if let Some(mut s) = get::<Session>(&self.sessions, hash)? {
            s.last_seen = now;
            put(&self.sessions, hash, &s)?;
        }
        Ok(())
    }

    async fn delete_session(&self, hash: &str) -> Result<(), CloudError> {
        self.sessions.remove(hash.as_bytes())?;
        self.durable().await
    }

    async fn delete_sessions_of(&self, user: &str) -> Result<u64, CloudError> {
        let n = self.drop_sessions_of(user)?;
        self.durable().await?;
        Ok(n)
    }

    async fn prune_sessions(
        &self,
        created_before: DateTime<Utc>,
        seen_before: DateTime<Utc>,
    ) -> Result<u64, CloudError> {
        let mut n = 0;
        for s in all::<Session>(&self.sessions)? {
            if s.created_at < created_before || s.last_seen < seen_before {
                self.sessions.remove(s.hash.as_bytes())?;
                n += 1;
            }
        }
        if n > 0 {
            self.durable().await?;
        }
        Ok(n)
    }

    async fn customers(&self) -> Result<Vec<Customer>, CloudError> {
        all(&self.customers)
    }

    async fn put_customer(&self, customer: &Customer) -> Result<(), CloudError> {
        put(&self.customers, &customer.id, customer)?;
        self.durable().await
    }

    async fn api_token(&self, id: &str) -> Result<Option<ApiToken>, CloudError> {
        get(&self.tokens, id)
    }

    async fn api_tokens(&self) -> Result<Vec<ApiToken>, CloudError> {
        all(&self.tokens)
    }

    async fn put_api_token(&self, token: &ApiToken) -> Result<(), CloudError> {
        put(&self.tokens, &token.id, token)?;
        self.durable().await
    }

    async fn touch_api_token(&self, id: &str, now: DateTime<Utc>) -> Result<(), CloudError> {
        if let Some(mut t) = get::<ApiToken>(&self.tokens, id)? {
            t.last_used = Some(now);
            put(&self.tokens, id, &t)?;
        }
        Ok(())
    }

    async fn delete_api_token(&self, id: &str) -> Result<bool, CloudError> {
        let existed = self.tokens.remove(id.as_bytes())?.is_some();
        self.durable().await?;
        Ok(existed)
    }

    async fn prune_api_tokens(&self, now: DateTime<Utc>) -> Result<u64, CloudError> {
        let mut n = 0;
        for t in all::<ApiToken>(&self.tokens)? {
            if t.expires_at < now {
                self.tokens.remove(t.id.as_bytes())?;
                n += 1;
            }
        }
        if n > 0 {
            self.durable().await?;
        }
        Ok(n)
    }
}

impl SledPeople {
    async fn durable(&self) -> Result<(), CloudError> {
        Ok(self.flusher.flush().await?)
    }

    fn drop_sessions_of(&self, user: &str) -> Result<u64, CloudError> {
        let mut n = 0;
        for s in all::<Session>(&self.sessions)? {
            if s.user == user {
                self.sessions.remove(s.hash.as_bytes())?;
                n += 1;
            }
        }
        Ok(n)
    }
}
