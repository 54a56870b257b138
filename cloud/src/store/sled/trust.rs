//! [`TrustStore`] on sled. Trees (values JSON):
//! - `machine_keys`: machine → [`MachineKey`]
//! - `enrollment_tokens`: hash of the secret → [`TokenRecord`]
//! - `revoked_keys`: machine → [`RevokedKey`]
//! - `mail_grants`: connector → [`MailGrant`]
//! - `network_connectors`: `network \0 connector` → empty: a receipt is built from its network's
//!   entries instead of a scan of every machine.
//!
//! An enrollment is one sled transaction over tokens, keys, revocations and the connector index.
//! Every write waits for the database's one group-commit flush before it returns.

use crate::error::CloudError;
use crate::store::trust::{
    EnrollDecision, EnrollView, EnrollWrite, MachineKey, MailGrant, RevokedKey, TokenRecord, TrustStore,
};
use chrono::{DateTime, Utc};
use outpost_shared::group_flush::GroupFlush;
use outpost_shared::model::Role;

#[derive(Clone)]
pub struct SledTrust {
    keys: sled::Tree,
    tokens: sled::Tree,
    revoked: sled::Tree,
    mail_grants: sled::Tree,
    connectors: sled::Tree,
    flusher: GroupFlush,
}

fn connector_key(network: &str, id: &str) -> Vec<u8> {
    let mut k = network.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

impl SledTrust {
    /// `flusher` is the database's one group-commit flusher: never a second flush beside it.
    pub fn open(db: &sled::Db, flusher: GroupFlush) -> Result<SledTrust, CloudError> {
        let t = SledTrust {
            keys: db.open_tree("machine_keys")?,
            tokens: db.open_tree("enrollment_tokens")?,
            revoked: db.open_tree("revoked_keys")?,
            mail_grants: db.open_tree("mail_grants")?,
            connectors: db.open_tree("network_connectors")?,
            flusher,
        };
        // A database from before the connector index: build it from the keys.
        if t.connectors.is_empty() {
            for item in t.keys.iter() {
                let (_, v) = item?;
                if let Ok(k) = serde_json::from_slice::<MachineKey>(&v) {
                    if k.role == Role::Connector {
                        t.connectors.insert(connector_key(&k.network_id, &k.machine_id), &[])?;
                    }
                }
            }
        }
        Ok(t)
    }

    fn all_keys(&self) -> Result<Vec<MachineKey>, CloudError> {
        let mut out = Vec::new();
        for item in self.keys.iter() {
            let (_, v) = item?;
            if let Ok(k) = serde_json::from_slice::<MachineKey>(&v) {
                out.push(k);
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl TrustStore for SledTrust {
    async fn machine_key(&self, id: &str) -> Result<Option<MachineKey>, CloudError> {
        Ok(self.keys.get(id.as_bytes())?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    async fn machine_keys_of(&self, ids: &[String]) -> Result<Vec<MachineKey>, CloudError> {
        let mut out = Vec::new();
        for id in ids {
            out.extend(self.machine_key(id).await?);
        }
        Ok(out)
    }

    async fn machine_keys(&self) -> Result<Vec<MachineKey>, CloudError> {
        self.all_keys()
    }

    async fn network_keys(&self, network: &str) -> Result<Vec<MachineKey>, CloudError> {
        Ok(self.all_keys()?.into_iter().filter(|k| k.network_id == network).collect())
    }

    async fn connectors(&self, network: &str) -> Result<Vec<MachineKey>, CloudError> {
        let mut out = Vec::new();
        let prefix = connector_key(network, "");
        for item in self.connectors.scan_prefix(&prefix) {
            let (k, _) = item?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            // Revocation removes the key and its index entry; a stale entry is skipped here.
            if let Some(k) = self.machine_key(&id).await? {
                if k.network_id == network && k.role == Role::Connector {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }

    async fn revocation(&self, id: &str) -> Result<Option<RevokedKey>, CloudError> {
        Ok(self.revoked.get(id.as_bytes())?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    async fn put_token(&self, hash: &str, rec: &TokenRecord) -> Result<(), CloudError> {
        self.tokens.insert(hash.as_bytes(), json(rec))?;
        self.flusher.flush().await?;
        Ok(())
    }

    async fn cancel_token(&self, id: &str) -> Result<Option<(String, TokenRecord)>, CloudError> {
        for item in self.tokens.scan_prefix(id.as_bytes()) {
            let (k, v) = item?;
            let Ok(rec) = serde_json::from_slice::<TokenRecord>(&v) else { continue };
            if rec.used_by.is_none() {
                self.tokens.remove(&k)?;
                self.flusher.flush().await?;
                return Ok(Some((String::from_utf8_lossy(&k).into_owned(), rec)));
            }
        }
        Ok(None)
    }

    async fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, CloudError> {
        let mut out = Vec::new();
        for item in self.tokens.iter() {
            let (k, v) = item?;
            if let Ok(r) = serde_json::from_slice::<TokenRecord>(&v) {
                out.push((String::from_utf8_lossy(&k).into_owned(), r));
            }
        }
        Ok(out)
    }

    async fn remove_tokens(&self, hashes: &[String]) -> Result<u64, CloudError> {
        let mut gone = 0;
        for h in hashes {
            if self.tokens.remove(h.as_bytes())?.is_some() {
                gone += 1;
            }
        }
        self.flusher.flush().await?;
        Ok(gone)
    }

    async fn enroll(
        &self,
        hash: &str,
        machine: &str,
        decide: EnrollDecision<'_>,
    ) -> Result<Result<MachineKey, String>, CloudError> {
        use sled::transaction::{ConflictableTransactionError as Abort, TransactionError};
        use sled::Transactional;
        let unreadable = |what: &str, e: serde_json::Error| Abort::Abort(format!("{what} unreadable: {e}"));
        let outcome = (&self.tokens, &self.keys, &self.revoked, &self.connectors).transaction(
            |(tokens, keys, revoked, connectors)| {
                let view = EnrollView {
                    token: match tokens.get(hash.as_bytes())? {
                        Some(v) => {
                            Some(serde_json::from_slice(&v).map_err(|e| unreadable("token record", e))?)
                        }
                        None => None,
                    },
                    key: match keys.get(machine.as_bytes())? {
                        Some(v) => Some(serde_json::from_slice(&v).map_err(|e| unreadable("key record", e))?),
                        None => None,
                    },
                    revoked: match revoked.get(machine.as_bytes())? {
                        Some(v) => {
                            Some(serde_json::from_slice(&v).map_err(|e| unreadable("revocation record", e))?)
                        }
                        None => None,
                    },
                };
                match decide(&view).map_err(Abort::Abort)? {
                    EnrollWrite::Stands(k) => Ok(k),
                    EnrollWrite::Enroll { token, key } => {
                        revoked.remove(machine.as_bytes())?;
                        tokens.insert(hash.as_bytes(), json(&token))?;
                        keys.insert(machine.as_bytes(), json(&key))?;
                        if key.role == Role::Connector {
                            connectors.insert(connector_key(&key.network_id, machine), &[])?;
                        }
                        Ok(key)
                    }
                }
            },
        );
        let key = match outcome {
            Ok(k) => k,
            Err(TransactionError::Abort(why)) => return Ok(Err(why)),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        self.flusher.flush().await?;
        Ok(Ok(key))
    }

    async fn revoke(&self, id: &str, now: DateTime<Utc>) -> Result<Option<MachineKey>, CloudError> {
        let Some(old) = self.keys.get(id.as_bytes())? else { return Ok(None) };
        let mk: MachineKey = serde_json::from_slice(&old).map_err(|e| CloudError::Corrupt(e.to_string()))?;
        let record = RevokedKey { key: mk.clone(), revoked_at: now, archived_at: None };
        use sled::Transactional;
        (&self.keys, &self.revoked, &self.connectors)
            .transaction(|(keys, revoked, connectors)| {
                keys.remove(id.as_bytes())?;
                connectors.remove(connector_key(&mk.network_id, &mk.machine_id))?;
                revoked.insert(id.as_bytes(), json(&record))?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => CloudError::Storage(e),
                sled::transaction::TransactionError::Abort(()) => CloudError::Corrupt("revocation".into()),
            })?;
        self.flusher.flush().await?;
        Ok(Some(mk))
    }

    async fn archive(&self, id: &str, at: Option<DateTime<Utc>>) -> Result<bool, CloudError> {
        loop {
            let Some(old) = self.revoked.get(id.as_bytes())? else { return Ok(false) };
            let mut rec: RevokedKey = serde_json::from_slice(&old)
                .map_err(|e| CloudError::Corrupt(format!("revocation record: {e}")))?;
            rec.archived_at = at;
            // Only over the record read: an enrollment meanwhile removed it, and wins.
            if self.revoked.compare_and_swap(id.as_bytes(), Some(old), Some(json(&rec)))?.is_ok() {
                self.flusher.flush().await?;
                return Ok(true);
            }
        }
    }

    async fn put_mail_grant(&self, connector: &str, grant: &MailGrant) -> Result<(), CloudError> {
        self.mail_grants.insert(connector.as_bytes(), json(grant))?;
        self.flusher.flush().await?;
        Ok(())
    }

    async fn remove_mail_grant(&self, connector: &str) -> Result<bool, CloudError> {
        let had = self.mail_grants.remove(connector.as_bytes())?.is_some();
        self.flusher.flush().await?;
        Ok(had)
    }

    async fn mail_grant(&self, connector: &str) -> Result<Option<MailGrant>, CloudError> {
        Ok(self.mail_grants.get(connector.as_bytes())?.and_then(|v| serde_json::from_slice(&v).ok()))
    }
}
