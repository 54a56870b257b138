//! What the command channel keeps, behind [`CommandStore`]: every command with its signed
//! envelope, status and result, which of them still wait for their machine, and the audit trail
//! (command events and operator actions). The decisions (what is due, what a result may change)
//! are made in `crate::commands`; this trait keeps records.
//!
//! **Durability.** Every write is durable when it returns `Ok`: on sled after the database's
//! group-commit flush, on PostgreSQL after its transaction's COMMIT. A command and its audit
//! lines are written together (one sled batch, one PostgreSQL transaction). Reads see every write
//! that returned before them, on any cloud node sharing the database.

use crate::error::CloudError;
use chrono::{DateTime, Utc};
use outpost_shared::keys::{CommandEnvelope, Signed};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandRecord {
    pub id: String,
    pub machine: String,
    pub action: String,
    pub parameters: serde_json::Value,
    /// `pending|delivered|done|failed|refused|expired`.
    pub status: String,
    pub result: Option<serde_json::Value>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub envelope: Signed<CommandEnvelope>,
}

impl CommandRecord {
    /// The status as seen now: a command nobody finished before its expiry is `expired`.
    pub fn effective_status(&self, now: DateTime<Utc>) -> &str {
        match self.status.as_str() {
            "pending" | "delivered" if now > self.expires_at => "expired",
            s => s,
        }
    }

    /// When it stopped mattering, if it did: its result's time, or its expiry.
    pub fn ended(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.effective_status(now) {
            "pending" | "delivered" => None,
            "expired" => Some(self.expires_at),
            _ => Some(self.finished_at.unwrap_or(self.expires_at)),
        }
    }
}

/// One line of the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub ts: DateTime<Utc>,
    pub command_id: String,
    pub machine: String,
    pub action: String,
    pub parameters: serde_json::Value,
    /// Who asked for it: `admin` (API or dashboard), `mail:<sender>`, …
    pub who: String,
    /// `created`, `delivered`, `done`, `failed`, `refused`.
    pub event: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

impl AuditEntry {
    /// A person's (or the cloud's own) action that is not a command, done now: `machine` empty
    /// for site-wide actions.
    pub fn action(machine: &str, action: &str, who: String, parameters: serde_json::Value) -> AuditEntry {
        AuditEntry {
            ts: Utc::now(),
            command_id: String::new(),
            machine: machine.into(),
            action: action.into(),
            parameters,
            who,
            event: "done".into(),
            detail: serde_json::Value::Null,
        }
    }
}

/// One command written back: its record, whether it still waits for its machine, and the audit
/// line that goes with the change, if any.
#[derive(Debug, Clone)]
pub struct CommandChange {
    pub rec: CommandRecord,
    pub waiting: bool,
    pub audit: Option<AuditEntry>,
}

/// Commands, the waiting set and the audit trail. See the module docs for durability.
#[async_trait::async_trait]
pub trait CommandStore: Send + Sync + 'static {
    /// Writes commands (new or changed), their waiting flags and audit lines, all together.
    async fn save(&self, changes: &[CommandChange]) -> Result<(), CloudError>;

    async fn get(&self, id: &str) -> Result<Option<CommandRecord>, CloudError>;

    /// The commands still waiting for any of `machines` (by machine, then id).
    async fn waiting(&self, machines: &[String]) -> Result<Vec<CommandRecord>, CloudError>;

    /// Takes commands off the waiting set (expired, or finished elsewhere).
    async fn unwait(&self, commands: &[(String, String)]) -> Result<(), CloudError>;

    /// Adds a line to the audit trail.
    async fn record(&self, e: &AuditEntry) -> Result<(), CloudError>;

    /// The audit trail, newest first, optionally for one machine, at most `limit` lines.
    async fn audit(&self, machine: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, CloudError>;

    /// Deletes commands that ended more than `commands` ago and audit lines older than `audit`.
    /// Returns (commands, audit lines) removed.
    async fn prune(
        &self,
        now: DateTime<Utc>,
        commands: Duration,
        audit: Duration,
    ) -> Result<(u64, u64), CloudError>;
}

pub type CommandStores = Arc<dyn CommandStore>;
