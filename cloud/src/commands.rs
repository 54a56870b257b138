//! The command channel, cloud side: commands signed with the cloud key, queued per machine,
//! handed out by long-poll (the machine asks; nothing is ever opened towards it), results signed
//! by the machine, and an audit trail of who asked what, when, and how it ended.

use crate::error::CloudError;
use chrono::{DateTime, Utc};
use outpost_shared::keys::{CommandEnvelope, CommandResult, MachineId, PublicKey, Signed, SignsCommands};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

pub use crate::store::commands::{AuditEntry, CommandRecord};
use crate::store::commands::{CommandChange, CommandStores};

/// How long a command may wait for its machine before it expires, unless the request says.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// A command handed out but not answered is handed out again after this long: the poll answer
/// may have been lost (a connector restarted mid-poll). The hub runs it once whatever happens
/// (replay log, envelope digest) and answers a redelivery with its first result.
pub const REDELIVER_AFTER: Duration = Duration::from_secs(10);

/// The command channel's service: signs, queues, hands out and closes commands, over the
/// configured [`CommandStore`] engine. Cheap to clone.
#[derive(Clone)]
pub struct Commands {
    store: CommandStores,
    /// Wake-ups of this node's long-polls, by machine. A command created on another node
    /// reaches them through [`Commands::wake`] (called by the cross-node listener).
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    /// Tells the other nodes that a machine has a command (PostgreSQL NOTIFY); None on sled,
    /// where this process is the only node.
    announce: Option<Announce>,
    /// Woken whenever this node records a result: people waiting for a command's outcome.
    finished: Arc<Notify>,
    /// How often a wait for an outcome reads the command again ([`FINISHED_RECHECK`]).
    finished_recheck: Duration,
}

/// How often someone waiting for a command's outcome reads it again: a result recorded by
/// another cloud node wakes no one here.
const FINISHED_RECHECK: Duration = Duration::from_secs(1);

/// Tells the other cloud nodes that a machine has a new command.
pub type Announce = Arc<dyn Fn(&str) + Send + Sync>;

/// Envelopes handed out, by machine.
pub type Due = std::collections::BTreeMap<String, Vec<Signed<CommandEnvelope>>>;

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
    /// The command could not be read or written now: send the result again later.
    #[error("{0}")]
    Storage(CloudError),
}

/// An audit line about `rec`.
fn audit_of(rec: &CommandRecord, who: &str, event: &str, detail: serde_json::Value) -> AuditEntry {
    AuditEntry {
        ts: Utc::now(),
        command_id: rec.id.clone(),
        machine: rec.machine.clone(),
        action: rec.action.clone(),
        parameters: rec.parameters.clone(),
        who: who.to_string(),
        event: event.to_string(),
        detail,
    }
}

impl Commands {
    pub fn new(store: CommandStores) -> Commands {
        Commands {
            store,
            waiters: Arc::default(),
            announce: None,
            finished: Arc::default(),
            finished_recheck: FINISHED_RECHECK,
        }
    }

    /// Tests make the recheck rare, so only a wake-up can end a wait in time (the tests run on
    /// both engines, so on unix only).
    #[cfg(all(test, unix))]
    fn with_finished_recheck(mut self, every: Duration) -> Commands {
        self.finished_recheck = every;
        self
    }

    /// With `announce`, every new command is also told to the other cloud nodes (their polls
    /// for that machine wake at once).
    pub fn with_announce(mut self, announce: Announce) -> Commands {
        self.announce = Some(announce);
        self
    }

    fn waiter(&self, machine: &str) -> Arc<Notify> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).entry(machine.to_string()).or_default().clone()
    }

    /// Wakes this node's polls for `machine`: a command for it was created (here or elsewhere).
    pub fn wake(&self, machine: &str) {
        let w = self.waiters.lock().unwrap_or_else(|p| p.into_inner()).get(machine).cloned();
        if let Some(w) = w {
            w.notify_waiters();
        }
    }

    /// Wakes every poll of this node (after the cross-node listener was lost for a while and
    /// may have missed wake-ups): each looks again and waits again.
    pub fn wake_all(&self) {
        let all: Vec<Arc<Notify>> =
            self.waiters.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for w in all {
            w.notify_waiters();
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<CommandRecord>, CloudError> {
        self.store.get(id).await
    }

    /// The command once it has ended (its result arrived, or it expired), or as it is after
    /// `wait`. A result recorded on this node wakes the wait at once; one recorded on another
    /// node is seen within [`FINISHED_RECHECK`].
    pub async fn get_when_ended(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<Option<CommandRecord>, CloudError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Listening before reading: a result stored between the two still wakes us.
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let rec = self.get(id).await?;
            let now = tokio::time::Instant::now();
            match &rec {
                Some(r) if r.ended(Utc::now()).is_none() && now < deadline => {}
                _ => return Ok(rec),
            }
            let next = deadline.min(now + self.finished_recheck);
            tokio::select! {
                _ = finished => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Adds a line to the audit trail (durable on return): command events, and operator actions
    /// on machines (such as a revocation) that are not commands.
    pub async fn record(&self, e: AuditEntry) -> Result<(), CloudError> {
        self.store.record(&e).await
    }

    /// Signs (with `key`: the RSA cloud key or its command key) and queues a command for
    /// `machine`; durable before it returns.
    pub async fn create(
        &self,
        key: &dyn SignsCommands,
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
        let signed = key.sign_command(&env).map_err(|e| CloudError::Keys(e.to_string()))?;
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
        let audit = audit_of(&rec, who, "created", serde_json::Value::Null);
        self.store.save(&[CommandChange { rec: rec.clone(), waiting: true, audit: Some(audit) }]).await?;
        self.wake(machine);
        if let Some(announce) = &self.announce {
            announce(machine);
        }
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
    pub async fn poll_many(&self, machines: &[String], wait: Duration) -> Result<Due, CloudError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notifies: Vec<Arc<Notify>> = machines.iter().map(|m| self.waiter(m)).collect();
            // Register before looking, so a command created in between still wakes us.
            let mut notified: Vec<_> = notifies.iter().map(|n| Box::pin(n.notified())).collect();
            for n in &mut notified {
                n.as_mut().enable();
            }
            let (out, next_due) = self.take_due(machines, Utc::now()).await?;
            if !out.is_empty() {
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

    /// The envelopes due for `machines` now (never handed out, or handed out [`REDELIVER_AFTER`]
    /// ago without an answer), marked delivered (durable before they are handed out), and how
    /// long until the next one falls due. Expired ones are let go.
    async fn take_due(
        &self,
        machines: &[String],
        now: DateTime<Utc>,
    ) -> Result<(Due, Option<Duration>), CloudError> {
        let redeliver = chrono::Duration::from_std(REDELIVER_AFTER).expect("small");
        let mut out = Due::new();
        let mut next_due: Option<Duration> = None;
        let mut changes = Vec::new();
        let mut gone = Vec::new();
        for mut rec in self.store.waiting(machines).await? {
            if rec.effective_status(now) == "expired"
                || !matches!(rec.status.as_str(), "pending" | "delivered")
            {
                gone.push((rec.machine.clone(), rec.id.clone()));
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
            let audit = first.then(|| audit_of(&rec, &rec.created_by, "delivered", serde_json::Value::Null));
            out.entry(rec.machine.clone()).or_default().push(rec.envelope.clone());
            changes.push(CommandChange { rec, waiting: true, audit });
        }
        if !gone.is_empty() {
            self.store.unwait(&gone).await?;
        }
        if !changes.is_empty() {
            self.store.save(&changes).await?;
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
        self.finish_authenticated(signer, &result).await
    }

    /// Records a result whose request already proved it comes from `signer`: one that arrived in
    /// `signer`'s machine session, under a MAC only that machine and the cloud can make (end to
    /// end, also when a connector relayed it). A second result for a finished command is ignored.
    pub async fn finish_authenticated(
        &self,
        signer: &str,
        result: &CommandResult,
    ) -> Result<CommandRecord, ResultRefused> {
        if result.machine_id.as_str() != signer {
            return Err(ResultRefused::WrongMachine);
        }
        let mut rec = match self.get(&result.command_id).await {
            Ok(Some(rec)) => rec,
            Ok(None) => return Err(ResultRefused::Unknown),
            Err(e) => return Err(ResultRefused::Storage(e)),
        };
        if rec.machine != signer {
            return Err(ResultRefused::WrongMachine);
        }
        // Bound to the exact envelope: a connector on the path that forged an envelope under a
        // real command's id, and got the hub to refuse it, cannot change that command's outcome.
        if result.envelope.as_deref() != Some(rec.envelope.digest().as_str()) {
            let detail =
                serde_json::json!({"error": ResultRefused::NotIssued.to_string(), "status": result.status});
            let _ = self.store.record(&audit_of(&rec, signer, "result-ignored", detail)).await;
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
        let audit = audit_of(&rec, &rec.created_by, status, result.output.clone());
        self.store
            .save(&[CommandChange { rec: rec.clone(), waiting: false, audit: Some(audit) }])
            .await
            .map_err(ResultRefused::Storage)?;
        self.finished.notify_waiters();
        Ok(rec)
    }

    /// Deletes commands that ended (or expired) more than `commands` ago and audit entries older
    /// than `audit`. Returns (commands, audit entries) removed.
    pub async fn prune(
        &self,
        now: DateTime<Utc>,
        commands: Duration,
        audit: Duration,
    ) -> Result<(u64, u64), CloudError> {
        self.store.prune(now, commands, audit).await
    }

    /// The audit trail, newest first, optionally for one machine.
    pub async fn audit(&self, machine: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, CloudError> {
        self.store.audit(machine, limit).await
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::store::testing::Keep;
    use crate::store::Engines;
    use outpost_shared::keys::KeyPair;

    crate::both_engines!(
        old_commands_and_audit_entries_are_pruned_and_waiting_ones_kept,
        one_poll_for_many_machines_wakes_for_any_and_hands_out_only_theirs,
        a_result_closes_its_command_once_and_a_forged_envelope_changes_nothing,
    );

    async fn old_commands_and_audit_entries_are_pruned_and_waiting_ones_kept(e: Engines, _k: &Keep) {
        let cmds = Commands::new(e.commands.clone());
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
        assert_eq!(
            cmds.prune(now, Duration::from_secs(3600), Duration::from_secs(3600)).await.unwrap(),
            (0, 0)
        );
        // Two hours on: the short one expired over an hour ago and goes; the long one still waits
        // for its machine; the audit entries of both are past an hour's retention.
        let later = now + chrono::Duration::hours(2);
        let (gone, audit) =
            cmds.prune(later, Duration::from_secs(3600), Duration::from_secs(3600)).await.unwrap();
        assert_eq!((gone, audit), (1, 2));
        assert!(cmds.get(&short.id).await.unwrap().is_none());
        assert!(cmds.get(&long.id).await.unwrap().is_some());
        assert!(cmds.audit(None, 100).await.unwrap().is_empty());
        // The pruned command is no longer handed out; the waiting one is.
        let out = cmds.poll(&machine, Duration::from_millis(10)).await.unwrap();
        assert_eq!(out.iter().map(|s| s.peek_unverified().unwrap().id).collect::<Vec<_>>(), vec![long.id]);
    }

    async fn one_poll_for_many_machines_wakes_for_any_and_hands_out_only_theirs(e: Engines, _k: &Keep) {
        let cmds = Commands::new(e.commands.clone());
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

    async fn a_result_closes_its_command_once_and_a_forged_envelope_changes_nothing(e: Engines, _k: &Keep) {
        use outpost_shared::keys::{CommandResult, CommandStatus};
        let cmds = Commands::new(e.commands.clone()).with_finished_recheck(Duration::from_secs(3600));
        let cloud = KeyPair::generate().unwrap();
        let hub = KeyPair::generate().unwrap();
        let machine = hub.machine_id().to_string();
        let rec = cmds
            .create(&cloud, &machine, "ping", serde_json::Value::Null, Duration::from_secs(60), "admin")
            .await
            .unwrap();
        let handed = cmds.poll(&machine, Duration::from_millis(10)).await.unwrap();
        assert_eq!(handed.len(), 1);
        assert_eq!(cmds.get(&rec.id).await.unwrap().unwrap().status, "delivered");
        let answer = |envelope: Option<String>, status| {
            let r = CommandResult {
                command_id: rec.id.clone(),
                machine_id: hub.machine_id().clone(),
                status,
                output: serde_json::json!({"pong": true}),
                finished_at: Utc::now(),
                envelope,
            };
            Signed::sign(&hub, &r).unwrap()
        };
        // A result bound to another envelope under the same id is ignored and audited.
        let forged = answer(Some("0".repeat(64)), CommandStatus::Refused);
        assert!(matches!(cmds.finish(&machine, hub.public(), &forged).await, Err(ResultRefused::NotIssued)));
        // Signed by another machine: refused.
        let stranger = KeyPair::generate().unwrap();
        assert!(cmds.finish(&machine, stranger.public(), &forged).await.is_err());
        // Someone waiting for the outcome is woken by the result (the recheck is an hour away).
        let waiting = tokio::spawn({
            let (cmds, id) = (cmds.clone(), rec.id.clone());
            async move { cmds.get_when_ended(&id, Duration::from_secs(3600)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let good = answer(Some(rec.envelope.digest()), CommandStatus::Done);
        assert_eq!(cmds.finish(&machine, hub.public(), &good).await.unwrap().status, "done");
        let woken =
            tokio::time::timeout(Duration::from_secs(30), waiting).await.expect("woken by the result");
        assert_eq!(woken.unwrap().unwrap().unwrap().status, "done");
        // A second result changes nothing, and the command is no longer handed out.
        let late = answer(Some(rec.envelope.digest()), CommandStatus::Failed);
        assert_eq!(cmds.finish(&machine, hub.public(), &late).await.unwrap().status, "done");
        assert!(cmds.poll(&machine, Duration::from_millis(10)).await.unwrap().is_empty());
        let events: Vec<String> =
            cmds.audit(Some(&machine), 10).await.unwrap().into_iter().map(|e| e.event).collect();
        assert_eq!(events, vec!["done", "result-ignored", "delivered", "created"], "newest first");
    }
}
