//! What the cloud keeps to decide who may send what: enrolled machine keys, enrollment tokens
//! (by the hash of their secret), revocations and connectors' mail-command grants, behind
//! [`TrustStore`]. The decisions (is this token good for this machine?) are made in
//! `crate::trust`; this trait only keeps records, and applies an enrollment atomically.
//!
//! **Durability.** Every write is durable when it returns `Ok`: on sled after the database's
//! group-commit flush, on PostgreSQL after its transaction's COMMIT. Reads see every write that
//! returned before them, on any cloud node sharing the database.
//!
//! The cloud's signing key is not here: it stays a file in the data directory, so a copy of the
//! database alone cannot sign commands.

use crate::error::CloudError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// An enrolled machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineKey {
    pub machine_id: String,
    pub public_key: String,
    pub network_id: String,
    pub role: outpost_shared::model::Role,
    pub hostname: String,
    pub enrolled_at: DateTime<Utc>,
    /// For connectors: the fingerprint of their LAN certificate, which hubs pin.
    #[serde(default)]
    pub lan_cert: Option<String>,
}

/// What the cloud keeps of a token: an admin's decision about one machine. Keyed by the hash of
/// the token's secret, never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub network_id: String,
    /// The role the machine enrolls in; an enrollment asking for another is refused. Records made
    /// before roles were bound read as sensorhub tokens, the harmless choice.
    #[serde(default)]
    pub role: outpost_shared::model::Role,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The machine that used it; a token enrolls one machine.
    pub used_by: Option<String>,
    /// Who made it, for the audit trail and the dashboard.
    #[serde(default)]
    pub created_by: String,
    /// A name to tell tokens apart ("pump station 3").
    #[serde(default)]
    pub label: String,
}

/// A withdrawn enrollment, kept so refusals can say what happened and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevokedKey {
    pub key: MachineKey,
    pub revoked_at: DateTime<Utc>,
    /// Put out of sight by an admin: left out of the machine list unless asked for. Its
    /// readings and this record stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<DateTime<Utc>>,
}

/// The cloud's permission for one connector to ask for commands by mail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MailGrant {
    /// Lower-case mail addresses the connector may act for.
    pub senders: Vec<String>,
    pub granted_by: String,
    pub granted_at: DateTime<Utc>,
}

impl MailGrant {
    pub fn allows(&self, sender: &str) -> bool {
        let sender = sender.trim().to_ascii_lowercase();
        self.senders.contains(&sender)
    }
}

/// What an enrollment decision sees, read inside the transaction that applies it.
#[derive(Debug, Clone)]
pub struct EnrollView {
    /// The token by the hash of its secret; None when unknown or cancelled.
    pub token: Option<TokenRecord>,
    /// The machine's key record, if it is enrolled already.
    pub key: Option<MachineKey>,
    pub revoked: Option<RevokedKey>,
}

/// What an enrollment decision writes.
#[derive(Debug, Clone)]
pub enum EnrollWrite {
    /// Nothing changes; the machine is enrolled as recorded (it asked again).
    Stands(MachineKey),
    /// The token, now used, and the new key; any revocation of the machine is lifted.
    Enroll { token: TokenRecord, key: MachineKey },
}

/// Decides an enrollment from what is stored: a refusal in words, or what to write. Pure: an
/// engine may call it again when its transaction had to be retried.
pub type EnrollDecision<'a> = &'a (dyn Fn(&EnrollView) -> Result<EnrollWrite, String> + Send + Sync);

/// The trust records. See the module docs for when a write is durable.
#[async_trait::async_trait]
pub trait TrustStore: Send + Sync + 'static {
    async fn machine_key(&self, id: &str) -> Result<Option<MachineKey>, CloudError>;

    /// The enrolled machines among `ids` (unknown and revoked ones are left out).
    async fn machine_keys_of(&self, ids: &[String]) -> Result<Vec<MachineKey>, CloudError>;

    /// Every enrolled machine (revoked ones are not enrolled).
    async fn machine_keys(&self) -> Result<Vec<MachineKey>, CloudError>;

    /// The enrolled machines of one network, hubs and connectors.
    async fn network_keys(&self, network: &str) -> Result<Vec<MachineKey>, CloudError>;

    /// The enrolled connectors of one network.
    async fn connectors(&self, network: &str) -> Result<Vec<MachineKey>, CloudError>;

    async fn revocation(&self, id: &str) -> Result<Option<RevokedKey>, CloudError>;

    /// Records a new token under the hash of its secret.
    async fn put_token(&self, hash: &str, rec: &TokenRecord) -> Result<(), CloudError>;

    /// Deletes the unused token whose hash starts with `id`; returns its hash and record.
    async fn cancel_token(&self, id: &str) -> Result<Option<(String, TokenRecord)>, CloudError>;

    /// Every token record, by hash.
    async fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, CloudError>;

    /// Deletes the tokens with these hashes; returns how many there were.
    async fn remove_tokens(&self, hashes: &[String]) -> Result<u64, CloudError>;

    /// Reads the token `hash`, the key of `machine` and its revocation, lets `decide` choose, and
    /// writes what it chose, all in one transaction: of any number of racing enrollments with
    /// one token exactly one wins. `Ok(Err(why))` is the decision's refusal (nothing written).
    async fn enroll(
        &self,
        hash: &str,
        machine: &str,
        decide: EnrollDecision<'_>,
    ) -> Result<Result<MachineKey, String>, CloudError>;

    /// Removes the machine's key and records its revocation, in one transaction; returns the key
    /// it had, or None when it was not enrolled.
    async fn revoke(&self, id: &str, now: DateTime<Utc>) -> Result<Option<MachineKey>, CloudError>;

    /// Sets (Some) or clears (None) when a revoked machine was archived; returns false when the
    /// machine is not revoked.
    async fn archive(&self, id: &str, at: Option<DateTime<Utc>>) -> Result<bool, CloudError>;

    async fn put_mail_grant(&self, connector: &str, grant: &MailGrant) -> Result<(), CloudError>;

    /// Returns whether there was one.
    async fn remove_mail_grant(&self, connector: &str) -> Result<bool, CloudError>;

    async fn mail_grant(&self, connector: &str) -> Result<Option<MailGrant>, CloudError>;
}

pub type Trusts = Arc<dyn TrustStore>;
