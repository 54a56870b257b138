//! The command channel, cloud side: commands signed with the cloud key, queued per machine,
//! handed out by long-poll (the machine asks; nothing is ever opened towards it), results signed
//! by the machine, and an audit trail of who asked what, when, and how it ended.

use crate::error::CloudError;
use chrono::{DateTime, Utc};
use outpost_shared::keys::{CommandEnvelope, CommandResult, KeyPair, MachineId, PublicKey, Signed};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How long a command may wait for its machine before it expires, unless the request says.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

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

#[derive(Clone)]
pub struct Commands {
    /// The store's flusher (same database): never a flush of its own beside it.
    flusher: outpost_shared::group_flush::GroupFlush,
    commands: sled::Tree,
    /// `machine \0 command id` of commands not yet delivered.
    pending: sled::Tree,
    audit: sled::Tree,
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResultRefused {
    #[error("no such command")]
    Unknown,
    #[error("the result is not signed by the command's target machine")]
    WrongMachine,
    #[error("result signature is invalid: {0}")]
    BadSignature(String),
}

impl Commands {
    pub fn open(
        db: &sled::Db,
        flusher: outpost_shared::group_flush::GroupFlush,
    ) -> Result<Commands, CloudError> {
        Ok(Commands {
            flusher,
            commands: db.open_tree("commands")?,
            pending: db.open_tree("commands_pending")?,
            audit: db.open_tree("audit")?,
            waiters: Arc::default(),
        })
    }

    fn waiter(&self, machine: &str) -> Arc<Notify> {
        self.waiters.lock().unwrap().entry(machine.to_string()).or_default().clone()
    }

    fn put(&self, rec: &CommandRecord) -> Result<(), CloudError> {
        self.commands.insert(rec.id.as_bytes(), serde_json::to_vec(rec).expect("serialises"))?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<CommandRecord>, CloudError> {
        Ok(self.commands.get(id.as_bytes())?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    fn log(
        &self,
        rec: &CommandRecord,
        who: &str,
        event: &str,
        detail: serde_json::Value,
    ) -> Result<(), CloudError> {
        self.record(AuditEntry {
            ts: Utc::now(),
            command_id: rec.id.clone(),
            machine: rec.machine.clone(),
            action: rec.action.clone(),
            parameters: rec.parameters.clone(),
            who: who.to_string(),
            event: event.to_string(),
            detail,
        })
    }

    /// Adds a line to the audit trail: command events, and operator actions on machines (such as
    /// a revocation) that are not commands.
    pub fn record(&self, e: AuditEntry) -> Result<(), CloudError> {
        let mut key = e.ts.timestamp_nanos_opt().unwrap_or_default().to_be_bytes().to_vec();
        key.extend_from_slice(e.command_id.as_bytes());
        key.extend_from_slice(e.event.as_bytes());
        self.audit.insert(key, serde_json::to_vec(&e).expect("serialises"))?;
        Ok(())
    }

    /// Signs and queues a command for `machine`; durable before it returns.
    pub async fn create(
        &self,
        key: &KeyPair,
        machine: &str,
        action: &str,
        parameters: serde_json::Value,
        ttl: Duration,
        who: &str,
    ) -> Result<CommandRecord, CloudError> {
        let target = MachineId::parse(machine).map_err(|e| CloudError::Keys(e.to_string()))?;
        let now = Utc::now();
        let env = CommandEnvelope::new(target, action, parameters.clone(), now, ttl)
            .map_err(|e| CloudError::Keys(e.to_string()))?;
        let signed = Signed::sign(key, &env).map_err(|e| CloudError::Keys(e.to_string()))?;
        let rec = CommandRecord {
            id: env.id.clone(),
            machine: machine.to_string(),
            action: action.to_string(),
            parameters,
            status: "pending".into(),
            result: None,
            created_by: who.to_string(),
            created_at: now,
            expires_at: env.expires_at,
            delivered_at: None,
            finished_at: None,
            envelope: signed,
        };
        self.put(&rec)?;
        self.pending.insert(pending_key(machine, &rec.id), &[])?;
        self.log(&rec, who, "created", serde_json::Value::Null)?;
        self.flusher.flush().await?;
        self.waiter(machine).notify_waiters();
        Ok(rec)
    }

    /// Hands out the commands waiting for `machine`, waiting up to `wait` for one to arrive.
    pub async fn poll(
        &self,
        machine: &str,
        wait: Duration,
    ) -> Result<Vec<Signed<CommandEnvelope>>, CloudError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notify = self.waiter(machine);
            // Register before looking, so a command created in between still wakes us.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let out = self.take_pending(machine)?;
            if !out.is_empty() {
                self.flusher.flush().await?;
                return Ok(out);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    fn take_pending(&self, machine: &str) -> Result<Vec<Signed<CommandEnvelope>>, CloudError> {
        let now = Utc::now();
        let mut out = Vec::new();
        let mut prefix = machine.as_bytes().to_vec();
        prefix.push(0);
        for item in self.pending.scan_prefix(&prefix) {
            let (k, _) = item?;
            self.pending.remove(&k)?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let Some(mut rec) = self.get(&id)? else { continue };
            if rec.effective_status(now) == "expired" {
                continue;
            }
            rec.status = "delivered".into();
            rec.delivered_at = Some(now);
            self.put(&rec)?;
            self.log(&rec, &rec.created_by.clone(), "delivered", serde_json::Value::Null)?;
            out.push(rec.envelope.clone());
        }
        Ok(out)
    }

    /// Records a machine's signed result. A second result for a finished command is ignored.
    pub async fn finish(
        &self,
        signer: &str,
        signer_key: &PublicKey,
        signed: &Signed<CommandResult>,
    ) -> Result<CommandRecord, ResultRefused> {
        let result = signed.verify(signer_key).map_err(|e| ResultRefused::BadSignature(e.to_string()))?;
        if result.machine_id.as_str() != signer {
            return Err(ResultRefused::WrongMachine);
        }
        let mut rec = self.get(&result.command_id).ok().flatten().ok_or(ResultRefused::Unknown)?;
        if rec.machine != signer {
            return Err(ResultRefused::WrongMachine);
        }
        if matches!(rec.status.as_str(), "done" | "failed" | "refused") {
            return Ok(rec);
        }
        let status = match result.status {
            outpost_shared::keys::CommandStatus::Done => "done",
            outpost_shared::keys::CommandStatus::Failed => "failed",
            outpost_shared::keys::CommandStatus::Refused => "refused",
        };
        rec.status = status.into();
        rec.result = Some(result.output.clone());
        rec.finished_at = Some(result.finished_at);
        let who = rec.created_by.clone();
        let store = || -> Result<(), CloudError> {
            self.pending.remove(pending_key(&rec.machine, &rec.id))?;
            self.put(&rec)?;
            self.log(&rec, &who, status, result.output.clone())?;
            Ok(())
        };
        store().map_err(|e| ResultRefused::BadSignature(e.to_string()))?;
        let _ = self.flusher.flush().await;
        Ok(rec)
    }

    /// The audit trail, newest first, optionally for one machine.
    pub fn audit(&self, machine: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, CloudError> {
        let mut out = Vec::new();
        for item in self.audit.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item?;
            if let Ok(e) = serde_json::from_slice::<AuditEntry>(&v) {
                if machine.is_none_or(|m| m == e.machine) {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }
}

fn pending_key(machine: &str, id: &str) -> Vec<u8> {
    let mut k = machine.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}
