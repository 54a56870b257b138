//! [`CommandStore`] on sled. Trees:
//! - `commands`: command id → json([`CommandRecord`])
//! - `commands_pending`: `machine \0 command id` → empty, the commands still waiting
//! - `audit`: `ts_nanos(be64) ++ command id ++ event` → json([`AuditEntry`]): time order, so
//!   retention removes one range
//!
//! Every write waits for the database's one group-commit flush before it returns.

use crate::error::CloudError;
use crate::store::commands::{AuditEntry, CommandChange, CommandRecord, CommandStore};
use chrono::{DateTime, Utc};
use outpost_shared::group_flush::GroupFlush;
use std::time::Duration;

#[derive(Clone)]
pub struct SledCommands {
    commands: sled::Tree,
    pending: sled::Tree,
    audit: sled::Tree,
    flusher: GroupFlush,
}

fn pending_key(machine: &str, id: &str) -> Vec<u8> {
    let mut k = machine.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn audit_key(e: &AuditEntry) -> Vec<u8> {
    let mut key = e.ts.timestamp_nanos_opt().unwrap_or_default().to_be_bytes().to_vec();
    key.extend_from_slice(e.command_id.as_bytes());
    key.extend_from_slice(e.event.as_bytes());
    key
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

impl SledCommands {
    /// `flusher` is the database's one group-commit flusher: never a second flush beside it.
    pub fn open(db: &sled::Db, flusher: GroupFlush) -> Result<SledCommands, CloudError> {
        Ok(SledCommands {
            commands: db.open_tree("commands")?,
            pending: db.open_tree("commands_pending")?,
            audit: db.open_tree("audit")?,
            flusher,
        })
    }

    fn read(&self, id: &str) -> Result<Option<CommandRecord>, CloudError> {
        Ok(self.commands.get(id.as_bytes())?.and_then(|v| serde_json::from_slice(&v).ok()))
    }
}

#[async_trait::async_trait]
impl CommandStore for SledCommands {
    async fn save(&self, changes: &[CommandChange]) -> Result<(), CloudError> {
        for c in changes {
            self.commands.insert(c.rec.id.as_bytes(), json(&c.rec))?;
            let k = pending_key(&c.rec.machine, &c.rec.id);
            if c.waiting {
                self.pending.insert(k, &[])?;
            } else {
                self.pending.remove(k)?;
            }
            if let Some(e) = &c.audit {
                self.audit.insert(audit_key(e), json(e))?;
            }
        }
        self.flusher.flush().await?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<CommandRecord>, CloudError> {
        self.read(id)
    }

    async fn waiting(&self, machines: &[String]) -> Result<Vec<CommandRecord>, CloudError> {
        let mut out = Vec::new();
        for machine in machines {
            let prefix = pending_key(machine, "");
            for item in self.pending.scan_prefix(&prefix) {
                let (k, _) = item?;
                let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                match self.read(&id)? {
                    Some(rec) => out.push(rec),
                    // Its record went (retention): nothing to hand out.
                    None => {
                        self.pending.remove(&k)?;
                    }
                }
            }
        }
        Ok(out)
    }

    async fn unwait(&self, commands: &[(String, String)]) -> Result<(), CloudError> {
        for (machine, id) in commands {
            self.pending.remove(pending_key(machine, id))?;
        }
        // Not flushed on purpose: a command that comes back after a crash is let go again.
        Ok(())
    }

    async fn record(&self, e: &AuditEntry) -> Result<(), CloudError> {
        self.audit.insert(audit_key(e), json(e))?;
        self.flusher.flush().await?;
        Ok(())
    }

    async fn audit(&self, machine: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, CloudError> {
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

    async fn prune(
        &self,
        now: DateTime<Utc>,
        commands: Duration,
        audit: Duration,
    ) -> Result<(u64, u64), CloudError> {
        let keep = chrono::Duration::from_std(commands).unwrap_or(chrono::Duration::MAX);
        let mut gone = 0;
        for item in self.commands.iter() {
            let (k, v) = item?;
            let Ok(rec) = serde_json::from_slice::<CommandRecord>(&v) else { continue };
            if rec.ended(now).is_some_and(|ended| now - ended > keep) {
                self.commands.remove(&k)?;
                self.pending.remove(pending_key(&rec.machine, &rec.id))?;
                gone += 1;
            }
        }
        // Audit keys start with the entry's time: everything before the cut is one range.
        let cut = (now - chrono::Duration::from_std(audit).unwrap_or(chrono::Duration::MAX))
            .timestamp_nanos_opt()
            .unwrap_or(i64::MIN)
            .to_be_bytes();
        let mut old = 0;
        for item in self.audit.range(..cut.to_vec()) {
            let (k, _) = item?;
            self.audit.remove(k)?;
            old += 1;
        }
        self.flusher.flush().await?;
        Ok((gone, old))
    }
}
