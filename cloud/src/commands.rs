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

/// A command handed out but not answered is handed out again after this long: the poll answer
/// may have been lost (a connector restarted mid-poll). The hub runs it once whatever happens
/// (replay log, envelope digest) and answers a redelivery with its first result.
pub const REDELIVER_AFTER: Duration = Duration::from_secs(10);

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
    #[error("the result answers an envelope this cloud did not issue under that id")]
    NotIssued,
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

    /// Hands out the commands waiting for `machine`, waiting up to `wait` for one to arrive. A
    /// command stays waiting until its result arrives or it expires: one handed out without an
    /// answer is handed out again [`REDELIVER_AFTER`] later.
    pub async fn poll(
        &self,
        machine: &str,
        wait: Duration,
    ) -> Result<Vec<Signed<CommandEnvelope>>, CloudError> {
        let mut due = self.poll_many(std::slice::from_ref(&machine.to_string()), wait).await?;
        Ok(due.remove(machine).unwrap_or_default())
    }

    /// [`Commands::poll`] for many machines at once: what a connector asks for all the hubs that
    /// are long-polling it, in one request instead of one per hub. Returns as soon as any of them
    /// has a command due (everything due for all of them then), or empty after `wait`.
    pub async fn poll_many(
        &self,
        machines: &[String],
        wait: Duration,
    ) -> Result<std::collections::BTreeMap<String, Vec<Signed<CommandEnvelope>>>, CloudError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notifies: Vec<Arc<Notify>> = machines.iter().map(|m| self.waiter(m)).collect();
            // Register before looking, so a command created in between still wakes us.
            let mut notified: Vec<_> = notifies.iter().map(|n| Box::pin(n.notified())).collect();
            for n in &mut notified {
                n.as_mut().enable();
            }
            let now = Utc::now();
            let mut out = std::collections::BTreeMap::new();
            let mut next_due: Option<Duration> = None;
            for machine in machines {
                let (due, next) = self.take_due(machine, now)?;
                if !due.is_empty() {
                    out.insert(machine.clone(), due);
                }
                if let Some(n) = next {
                    next_due = Some(next_due.map_or(n, |d| d.min(n)));
                }
            }
            if !out.is_empty() {
                self.flusher.flush().await?;
                return Ok(out);
            }
            let until = match next_due {
                Some(d) => deadline.min(tokio::time::Instant::now() + d),
                None => deadline,
            };
            let any = futures_util::future::select_all(notified);
            if tokio::time::timeout_at(until, any).await.is_err() && until >= deadline {
                return Ok(std::collections::BTreeMap::new());
            }
        }
    }

    /// The envelopes due for `machine` now (never handed out, or handed out [`REDELIVER_AFTER`]
    /// ago without an answer), and how long until the next one falls due. Expired ones are let go.
    fn take_due(
        &self,
        machine: &str,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Signed<CommandEnvelope>>, Option<Duration>), CloudError> {
        let redeliver = chrono::Duration::from_std(REDELIVER_AFTER).expect("small");
        let mut out = Vec::new();
        let mut next_due: Option<Duration> = None;
        let mut prefix = machine.as_bytes().to_vec();
        prefix.push(0);
        for item in self.pending.scan_prefix(&prefix) {
            let (k, _) = item?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let Some(mut rec) = self.get(&id)? else {
                self.pending.remove(&k)?;
                continue;
            };
            if rec.effective_status(now) == "expired"
                || !matches!(rec.status.as_str(), "pending" | "delivered")
            {
                self.pending.remove(&k)?;
                continue;
            }
            if let Some(at) = rec.delivered_at {
                let due = at + redeliver;
                if due > now {
                    let wait = (due - now).to_std().unwrap_or_default();
                    next_due = Some(next_due.map_or(wait, |n| n.min(wait)));
                    continue;
                }
            }
            let first = rec.delivered_at.is_none();
            rec.status = "delivered".into();
            rec.delivered_at = Some(now);
            self.put(&rec)?;
            if first {
                self.log(&rec, &rec.created_by.clone(), "delivered", serde_json::Value::Null)?;
            }
            out.push(rec.envelope.clone());
        }
        Ok((out, next_due))
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
        // Bound to the exact envelope: a connector on the path that forged an envelope under a
        // real command's id, and got the hub to refuse it, cannot change that command's outcome.
        if result.envelope.as_deref() != Some(rec.envelope.digest().as_str()) {
            let detail =
                serde_json::json!({"error": ResultRefused::NotIssued.to_string(), "status": result.status});
            let _ = self.log(&rec, signer, "result-ignored", detail);
            tracing::warn!(command = %rec.id, machine = %signer, "result for an envelope the cloud did not issue; ignored");
            return Err(ResultRefused::NotIssued);
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

    /// Deletes commands that ended (or expired) more than `commands` ago and audit entries older
    /// than `audit`. Returns (commands, audit entries) removed.
    pub fn prune(
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
            let ended = match rec.effective_status(now) {
                "pending" | "delivered" => continue,
                "expired" => rec.expires_at,
                _ => rec.finished_at.unwrap_or(rec.expires_at),
            };
            if now - ended > keep {
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
        Ok((gone, old))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn old_commands_and_audit_entries_are_pruned_and_waiting_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let cmds = Commands::open(&db, outpost_shared::group_flush::GroupFlush::new(db.clone())).unwrap();
        let cloud = KeyPair::generate().unwrap();
        let target = KeyPair::generate().unwrap();
        let machine = target.machine_id().to_string();
        let short = cmds
            .create(&cloud, &machine, "ping", serde_json::Value::Null, Duration::from_secs(60), "t")
            .await
            .unwrap();
        let long = cmds
            .create(&cloud, &machine, "ping", serde_json::Value::Null, Duration::from_secs(86400), "t")
            .await
            .unwrap();
        let now = Utc::now();
        // Nothing is old yet.
        assert_eq!(cmds.prune(now, Duration::from_secs(3600), Duration::from_secs(3600)).unwrap(), (0, 0));
        // Two hours on: the short one expired over an hour ago and goes; the long one still waits
        // for its machine; the audit entries of both are past an hour's retention.
        let later = now + chrono::Duration::hours(2);
        let (gone, audit) = cmds.prune(later, Duration::from_secs(3600), Duration::from_secs(3600)).unwrap();
        assert_eq!((gone, audit), (1, 2));
        assert!(cmds.get(&short.id).unwrap().is_none());
        assert!(cmds.get(&long.id).unwrap().is_some());
        assert!(cmds.audit(None, 100).unwrap().is_empty());
        // The pruned command is no longer handed out; the waiting one is.
        let out = cmds.poll(&machine, Duration::from_millis(10)).await.unwrap();
        assert_eq!(out.iter().map(|s| s.peek_unverified().unwrap().id).collect::<Vec<_>>(), vec![long.id]);
    }

    #[tokio::test]
    async fn one_poll_for_many_machines_wakes_for_any_and_hands_out_only_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let cmds = Commands::open(&db, outpost_shared::group_flush::GroupFlush::new(db.clone())).unwrap();
        let cloud = KeyPair::generate().unwrap();
        let machines: Vec<String> = (0..50).map(|i| format!("{i:032x}")).collect();
        let outsider = "f".repeat(32);
        cmds.create(&cloud, &outsider, "ping", serde_json::Value::Null, Duration::from_secs(60), "t")
            .await
            .unwrap();

        // Nothing due for the fifty: the poll waits, and a command for the 37th wakes it at once.
        let poller = {
            let (cmds, machines) = (cmds.clone(), machines.clone());
            tokio::spawn(async move { cmds.poll_many(&machines, Duration::from_secs(20)).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!poller.is_finished(), "nothing is due yet");
        let started = std::time::Instant::now();
        let cmd = cmds
            .create(&cloud, &machines[37], "ping", serde_json::Value::Null, Duration::from_secs(60), "t")
            .await
            .unwrap();
        let got =
            tokio::time::timeout(Duration::from_secs(5), poller).await.expect("woken").unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            vec![&machines[37]],
            "the outsider's command is not handed out"
        );
        assert_eq!(got[&machines[37]][0].peek_unverified().unwrap().id, cmd.id);
        // Handed out and unanswered: not again at once, but again after REDELIVER_AFTER.
        let again = cmds.poll_many(&machines, Duration::from_millis(100)).await.unwrap();
        assert!(again.is_empty(), "not handed out twice at once");
    }
}
