//! Several cloud nodes on one PostgreSQL database, behind a load balancer: each node serves the
//! whole API, and what one node does reaches the others through the database.
//!
//! - **Command wake-ups**: a command created on node A is announced with `NOTIFY
//!   outpost_commands, '<machine>'`; every node LISTENs on a session of its own and wakes its
//!   long-polls for that machine, so a hub polling node B gets the command at once.
//! - **Live events**: after a batch is stored, its node sends `NOTIFY outpost_readings` with the
//!   machine and the sensors that changed (never the values: a payload is limited to 8000
//!   bytes); the other nodes read those from the database and feed their `/v1/events` streams.
//! - **Once-only jobs** (the retention pass, report runs, the mail outbox sender) run on the node
//!   that holds a session-level advisory lock on a session of its own. When that node dies its
//!   session ends and the lock is released; another node takes it within [`TAKE_OVER`].
//!
//! Sessions that end (a restarted database, a lost network) are made again with backoff; after a
//! new LISTEN session every long-poll of the node looks again, since wake-ups may have been
//! missed meanwhile. On sled there is one node: wake-ups stay in the process and every job runs.

#[cfg(all(test, unix))]
mod tests;

use crate::api::LiveEvent;
use crate::commands::{Announce, Commands};
use crate::store::postgres::mail::{PgOutbox, MAIL_CHANNEL};
use crate::store::postgres::PgStore;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Channel of command wake-ups; the payload is the machine id.
pub const COMMANDS_CHANNEL: &str = "outpost_commands";
/// Channel of stored batches; the payload is a JSON [`StoredNote`].
pub const READINGS_CHANNEL: &str = "outpost_readings";
/// The advisory lock of the once-only jobs (a constant unlikely to collide with another
/// application's; the schema's locks are `…01`, `…02`).
pub const JOBS_LOCK: i64 = 0x6f75_7470_6f73_7410;
/// How often a node without the jobs lock tries to take it, and how often the holder checks
/// that its session is alive.
pub const TAKE_OVER: Duration = Duration::from_secs(2);
/// Longest wait between attempts to make a lost session again.
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Largest NOTIFY payload we send (PostgreSQL's limit is 8000 bytes).
const MAX_PAYLOAD: usize = 7000;

/// What a node tells the others about a batch it stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredNote {
    /// The node that stored it (it has told its own dashboards already).
    pub node: String,
    pub machine: String,
    /// Sensors whose latest value changed; empty when there were too many to name (then every
    /// sensor of the machine is sent).
    pub sensors: Vec<String>,
}

/// Whether this node runs the once-only jobs now. Always true on sled (one node).
#[derive(Clone)]
pub struct Leader(Arc<AtomicBool>);

impl Leader {
    /// A single node: it runs every job.
    pub fn alone() -> Leader {
        Leader(Arc::new(AtomicBool::new(true)))
    }

    /// A node that does not run the jobs (until it takes the lock).
    pub fn standby() -> Leader {
        Leader(Arc::new(AtomicBool::new(false)))
    }

    pub fn holds(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// This node's link to the others, on PostgreSQL.
#[derive(Clone)]
pub struct Nodes {
    pg: PgStore,
    /// Random per process: notes from this node are not played back to it.
    node: String,
    /// Reads of other nodes' batches for the live feed, at most [`MAX_REPLAYS`] at once; beyond
    /// that a note is skipped (a dashboard's next event brings it current, as when it lags).
    replays: Arc<tokio::sync::Semaphore>,
}

/// Live-feed reads of other nodes' batches in flight at once.
const MAX_REPLAYS: usize = 16;

impl Nodes {
    pub fn new(pg: PgStore) -> Nodes {
        let mut raw = [0u8; 8];
        // Only names this process among its peers; a fixed value would merely echo events.
        let _ = getrandom::fill(&mut raw);
        Nodes { pg, node: hex::encode(raw), replays: Arc::new(tokio::sync::Semaphore::new(MAX_REPLAYS)) }
    }

    /// Sends `payload` on `channel` through the pool, in the background: a wake-up that does
    /// not arrive costs a poll its wait (it looks again at its deadline), never a command.
    fn notify(&self, channel: &'static str, payload: String) {
        let pool = self.pg.pool();
        tokio::spawn(async move {
            let sent = async {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                client
                    .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
                    .await
                    .map_err(|e| e.to_string())
            };
            if let Err(e) = sent.await {
                tracing::warn!(error = %e, channel, "could not tell the other cloud nodes");
            }
        });
    }

    /// What [`Commands::with_announce`] takes: tells every node a machine has a new command.
    pub fn announce(&self) -> Announce {
        let me = self.clone();
        Arc::new(move |machine: &str| me.notify(COMMANDS_CHANNEL, machine.to_string()))
    }

    /// Tells the other nodes that a batch of `machine` was stored and these sensors changed.
    pub fn stored(&self, machine: &str, sensors: &[String]) {
        let mut note =
            StoredNote { node: self.node.clone(), machine: machine.into(), sensors: sensors.to_vec() };
        let mut payload = serde_json::to_string(&note).unwrap_or_default();
        if payload.len() > MAX_PAYLOAD {
            note.sensors.clear();
            payload = serde_json::to_string(&note).unwrap_or_default();
        }
        if payload.len() <= MAX_PAYLOAD {
            self.notify(READINGS_CHANNEL, payload);
        }
    }

    /// Listens for the other nodes until `shutdown`: wakes this node's long-polls, feeds its live
    /// events, wakes its mail sender.
    pub fn spawn_listener(
        &self,
        commands: Commands,
        store: Store,
        events: broadcast::Sender<LiveEvent>,
        outbox: Option<PgOutbox>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                let session = async {
                    let s = me.pg.session().await?;
                    s.listen(&[COMMANDS_CHANNEL, READINGS_CHANNEL, MAIL_CHANNEL]).await?;
                    Ok::<_, crate::CloudError>(s)
                };
                let mut session = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    s = session => match s {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?delay, "cannot listen to the other cloud nodes");
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = tokio::time::sleep(delay) => {}
                            }
                            delay = (delay * 2).min(RECONNECT_MAX);
                            continue;
                        }
                    },
                };
                delay = Duration::from_millis(100);
                // Wake-ups sent while no session listened are lost: every poll looks again.
                commands.wake_all();
                if let Some(o) = &outbox {
                    o.wake();
                }
                tracing::info!("listening to the other cloud nodes");
                loop {
                    let note = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        n = session.notes.recv() => n,
                    };
                    let Some(note) = note else {
                        tracing::warn!(
                            "lost the session that listens to the other cloud nodes; making it again"
                        );
                        break;
                    };
                    match note.channel.as_str() {
                        COMMANDS_CHANNEL => commands.wake(&note.payload),
                        MAIL_CHANNEL => {
                            if let Some(o) = &outbox {
                                o.wake();
                            }
                        }
                        READINGS_CHANNEL => me.replay(&note.payload, &store, &events),
                        _ => {}
                    }
                }
            }
        })
    }

    /// Feeds this node's live events with a batch another node stored: the machine's status and
    /// the changed sensors, read from the database.
    fn replay(&self, payload: &str, store: &Store, events: &broadcast::Sender<LiveEvent>) {
        // The payload comes from the database, written by a node; checked all the same.
        let Ok(note) = serde_json::from_str::<StoredNote>(payload) else { return };
        if note.node == self.node || events.receiver_count() == 0 {
            return;
        }
        let Ok(slot) = self.replays.clone().try_acquire_owned() else { return };
        let (store, events) = (store.clone(), events.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let read = async {
                let machine = store.machine(&note.machine).await?;
                let mut sensors = store.sensors(&note.machine).await?;
                if !note.sensors.is_empty() {
                    sensors.retain(|s| note.sensors.contains(&s.sensor));
                }
                Ok::<_, crate::CloudError>((machine, sensors))
            };
            match read.await {
                Ok((Some(m), sensors)) => {
                    let _ = events.send(LiveEvent::Machine(m));
                    if !sensors.is_empty() {
                        let _ = events.send(LiveEvent::Sensors { machine: note.machine, sensors });
                    }
                }
                Ok((None, _)) => {}
                Err(e) => tracing::debug!(error = %e, "a live event of another node could not be read"),
            }
        });
    }

    /// Takes the once-only jobs' advisory lock whenever no other node holds it, on a session of
    /// its own, until `shutdown`. The returned [`Leader`] says whether this node holds it now.
    pub fn spawn_leadership(&self, shutdown: CancellationToken) -> Leader {
        let leader = Leader::standby();
        let (me, flag) = (self.clone(), leader.0.clone());
        tokio::spawn(async move {
            loop {
                let session = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    s = me.pg.session() => s,
                };
                let mut session = match session {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "no session for the jobs lock yet");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(TAKE_OVER) => continue,
                        }
                    }
                };
                // Try, and while held check the session is alive, every TAKE_OVER. The lock is
                // the session's: it ends with it, on this node's death too.
                loop {
                    let held = flag.load(Ordering::SeqCst);
                    let q = if held { "SELECT true" } else { "SELECT pg_try_advisory_lock($1)" };
                    let args: &[&(dyn tokio_postgres::types::ToSql + Sync)] =
                        if held { &[] } else { &[&JOBS_LOCK] };
                    let got = tokio::select! {
                        _ = shutdown.cancelled() => {
                            flag.store(false, Ordering::SeqCst);
                            return;
                        }
                        r = session.client.query_one(q, args) => r.and_then(|row| row.try_get::<_, bool>(0)),
                    };
                    match got {
                        Ok(true) if !held => {
                            flag.store(true, Ordering::SeqCst);
                            tracing::info!(
                                "this cloud node now runs the once-only jobs (retention, reports, mail)"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if held {
                                tracing::warn!(error = %e, "lost the session holding the jobs lock; another node may take over");
                            }
                            flag.store(false, Ordering::SeqCst);
                            break;
                        }
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            flag.store(false, Ordering::SeqCst);
                            return;
                        }
                        _ = tokio::time::sleep(TAKE_OVER) => {}
                        // Notifications are not listened for here; a closed channel is the end.
                        n = session.notes.recv() => if n.is_none() {
                            flag.store(false, Ordering::SeqCst);
                            break;
                        },
                    }
                }
            }
        });
        leader
    }
}
