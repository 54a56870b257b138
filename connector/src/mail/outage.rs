//! Alerts from the connector while the cloud is unreachable.
//!
//! The connector sees every hub reading it takes into custody, so it keeps the latest state of
//! every sensor (in memory, [`Watch::took`]). Normally that is all: the cloud mails the alerts.
//! When forwarding to the cloud has failed for longer than `outage_alerts.after` (no answer, or any
//! answer but success), the connector declares an outage and runs the same [`Alerter`] itself over
//! the state changes in what it takes in, mailing through its own durable outbox and the LAN mail
//! server. The changes it took in since the last successful forward are fed first, so a sensor
//! that failed together with the internet link is not missed.
//!
//! No alert twice: every change fed to the connector's alerter is written down (durably, before
//! the batch holding it can be forwarded) as a [`MailedState`] note. The notes travel to the cloud
//! in the forward envelope (`mailed`), in the same request as those batches or an earlier one, and
//! the cloud takes them as told instead of alerting again. When forwarding succeeds the outage is
//! over: changes taken in from then on are the cloud's again; the connector only finishes what its
//! alerter still holds (a group window, a quiet period), which its notes already cover.

use outpost_shared::mail::{AlertEvent, StateChange};
use outpost_shared::model::{Batch, MailedState, State};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Changes remembered between the first failed forward and the outage being declared; beyond
/// this the oldest are forgotten (they would be replayed to the alerter as one flood anyway).
const MAX_RECENT: usize = 10_000;
/// Sensors tracked at most; a hub inventing sensor names without end cannot exhaust memory.
const MAX_SENSORS: usize = 200_000;
/// Notes sent with one forward request at most.
pub const MAX_NOTES: usize = 5_000;

/// The latest reading of one sensor, as the connector last took it in.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    pub state: State,
    pub value: outpost_shared::model::Value,
    pub unit: Option<String>,
    pub ts: chrono::DateTime<chrono::Utc>,
}

/// One hub as the connector knows it.
#[derive(Debug, Clone, Default)]
pub struct HubSeen {
    pub hostname: String,
    pub last_seen: Option<chrono::DateTime<chrono::Utc>>,
    pub sensors: BTreeMap<String, Seen>,
}

/// A sensor's state as remembered on disk.
#[derive(serde::Serialize, serde::Deserialize)]
struct Remembered {
    hostname: String,
    seen: Seen,
}

/// The states remembered before a restart, and how many sensors they are.
fn load_states(tree: &sled::Tree) -> (HashMap<String, HubSeen>, usize) {
    let mut hubs: HashMap<String, HubSeen> = HashMap::new();
    let mut count = 0;
    for item in tree.iter().flatten() {
        let (k, v) = item;
        let Some(split) = k.iter().position(|b| *b == 0) else { continue };
        let (machine, sensor) =
            (String::from_utf8_lossy(&k[..split]), String::from_utf8_lossy(&k[split + 1..]));
        let Ok(rec) = serde_json::from_slice::<Remembered>(&v) else { continue };
        let hub = hubs.entry(machine.into_owned()).or_default();
        hub.hostname = rec.hostname;
        hub.sensors.insert(sensor.into_owned(), rec.seen);
        count += 1;
    }
    (hubs, count)
}

#[derive(Default)]
struct Outage {
    /// When forwarding started failing (the first failure since the last success).
    failing_since: Option<chrono::DateTime<chrono::Utc>>,
    declared: bool,
    /// Changes taken in and not yet known forwarded (with when they were taken in), for a
    /// declaration to come.
    recent: VecDeque<(std::time::Instant, StateChange)>,
}

/// The connector's view of its hubs' sensors, and the outage state.
pub struct Watch {
    hubs: Mutex<HashMap<String, HubSeen>>,
    sensors: Mutex<usize>,
    outage: Mutex<Outage>,
    /// Wakes the declaration timer when forwarding starts failing, and when a declared outage ends.
    failing: tokio::sync::Notify,
    ended: tokio::sync::Notify,
    after: Duration,
    /// To the alerter; `None` when the connector has no `[mail]` (it still tracks, for STATUS).
    alerts: Option<tokio::sync::mpsc::Sender<AlertEvent>>,
    /// `id(be64)` → json [`MailedState`]: notes not yet delivered to the cloud.
    notes: Option<sled::Tree>,
    /// `machine \0 sensor` → json [`Remembered`], written when a state changes: a connector
    /// restarted during an outage compares with what it knew, instead of taking every sensor
    /// already in error for news.
    states: Option<sled::Tree>,
    outbox: Option<outpost_shared::mail::Outbox>,
}

impl Watch {
    pub fn new(
        after: Duration,
        alerts: Option<tokio::sync::mpsc::Sender<AlertEvent>>,
        outbox: Option<outpost_shared::mail::Outbox>,
    ) -> Result<Watch, outpost_shared::mail::OutboxError> {
        let notes = outbox.as_ref().map(|o| o.tree("outage_notes")).transpose()?;
        let states = outbox.as_ref().map(|o| o.tree("sensor_states")).transpose()?;
        let (hubs, count) = states.as_ref().map(load_states).unwrap_or_default();
        Ok(Watch {
            hubs: Mutex::new(hubs),
            sensors: Mutex::new(count),
            outage: Mutex::default(),
            failing: tokio::sync::Notify::new(),
            ended: tokio::sync::Notify::new(),
            after,
            alerts,
            notes,
            states,
            outbox,
        })
    }

    /// Takes in one hub batch (already durable in custody): updates the latest states and, during
    /// an outage, alerts on its changes. Returns once the notes of those alerts are on disk.
    pub async fn took(&self, batch: &Batch) {
        let changes = self.track(batch);
        if changes.is_empty() {
            return;
        }
        let feed = {
            let mut o = self.outage.lock().unwrap();
            if o.declared {
                changes
            } else {
                if self.alerts.is_some() {
                    let now = std::time::Instant::now();
                    o.recent.extend(changes.into_iter().map(|c| (now, c)));
                    while o.recent.len() > MAX_RECENT {
                        o.recent.pop_front();
                    }
                }
                Vec::new()
            }
        };
        self.alert(feed).await;
    }

    /// Updates the latest states; returns the state changes (a sensor seen for the first time
    /// changes from `unknown`, as in the cloud).
    fn track(&self, batch: &Batch) -> Vec<StateChange> {
        let changes = self.track_in_memory(batch);
        if let Some(tree) = &self.states {
            for c in &changes {
                let seen = self
                    .hubs
                    .lock()
                    .unwrap()
                    .get(&c.machine_id)
                    .and_then(|h| h.sensors.get(&c.sensor).cloned());
                let Some(seen) = seen else { continue };
                let rec = Remembered { hostname: c.hostname.clone(), seen };
                let key = [c.machine_id.as_bytes(), b"\0", c.sensor.as_bytes()].concat();
                if let Err(e) = tree.insert(key, serde_json::to_vec(&rec).expect("serialises")) {
                    tracing::warn!(error = %e, "cannot remember a sensor state across restarts");
                }
            }
        }
        changes
    }

    fn track_in_memory(&self, batch: &Batch) -> Vec<StateChange> {
        let mut changes = Vec::new();
        let mut hubs = self.hubs.lock().unwrap();
        let mut count = self.sensors.lock().unwrap();
        let hub = hubs.entry(batch.machine_id.clone()).or_default();
        hub.hostname = batch.hostname.clone();
        hub.last_seen = Some(chrono::Utc::now());
        for r in &batch.readings {
            let s = &r.sample;
            let old = match hub.sensors.get(&s.sensor) {
                // A replayed older reading does not hide a newer one.
                Some(prev) if prev.ts > s.ts => continue,
                Some(prev) => prev.state,
                None if *count >= MAX_SENSORS => continue,
                None => {
                    *count += 1;
                    State::Unknown
                }
            };
            hub.sensors.insert(
                s.sensor.clone(),
                Seen { state: s.state, value: s.value.clone(), unit: s.unit.clone(), ts: s.ts },
            );
            if old != s.state {
                changes.push(StateChange {
                    machine_id: batch.machine_id.clone(),
                    hostname: batch.hostname.clone(),
                    sensor: s.sensor.clone(),
                    old,
                    new: s.state,
                    value: Some(s.value.clone()),
                    unit: s.unit.clone(),
                    message: s.message.clone(),
                    ts: s.ts,
                });
            }
        }
        changes
    }

    /// Writes the notes, then hands the changes to the alerter.
    async fn alert(&self, changes: Vec<StateChange>) {
        let (Some(tx), Some(notes), Some(outbox)) = (&self.alerts, &self.notes, &self.outbox) else { return };
        if changes.is_empty() {
            return;
        }
        for c in &changes {
            let note = MailedState {
                machine_id: c.machine_id.clone(),
                sensor: c.sensor.clone(),
                state: c.new,
                ts: c.ts,
            };
            let written = outbox
                .next_id()
                .map(|id| notes.insert(id.to_be_bytes(), serde_json::to_vec(&note).expect("serialises")));
            if !matches!(written, Ok(Ok(_))) {
                tracing::error!(machine = %c.machine_id, sensor = %c.sensor, "cannot write an outage note; the cloud may alert about this change again");
            }
        }
        if let Err(e) = outbox.flush().await {
            tracing::error!(error = %e, "cannot flush outage notes; the cloud may alert about these changes again");
        }
        for c in changes {
            if tx.try_send(AlertEvent::Change(c)).is_err() {
                tracing::warn!("connector alert queue full; a state change is not mailed");
            }
        }
    }

    /// Forwarding to the cloud failed (no answer, or no success).
    pub fn forward_failed(&self) {
        let mut o = self.outage.lock().unwrap();
        if o.failing_since.is_none() {
            o.failing_since = Some(chrono::Utc::now());
            self.failing.notify_one();
        }
    }

    /// Forwarding of what was in custody at `collected` succeeded: the cloud is reachable, and
    /// alerts are its own again. Changes taken in since `collected` stay remembered.
    pub fn forward_ok(&self, collected: std::time::Instant) {
        let mut o = self.outage.lock().unwrap();
        if o.declared {
            tracing::info!("cloud reachable again; alerts are the cloud's again");
            self.ended.notify_one();
        }
        o.declared = false;
        o.failing_since = None;
        o.recent.retain(|(at, _)| *at > collected);
    }

    /// Whether the connector is mailing alerts itself right now.
    pub fn in_outage(&self) -> bool {
        self.outage.lock().unwrap().declared
    }

    /// What the connector knows of its hubs, for STATUS mails.
    pub fn hubs(&self) -> HashMap<String, HubSeen> {
        self.hubs.lock().unwrap().clone()
    }

    /// Up to [`MAX_NOTES`] notes not yet delivered to the cloud, with their keys.
    pub fn pending_notes(&self) -> (Vec<sled::IVec>, Vec<MailedState>) {
        let Some(notes) = &self.notes else { return (Vec::new(), Vec::new()) };
        let mut keys = Vec::new();
        let mut out = Vec::new();
        for item in notes.iter().take(MAX_NOTES) {
            let Ok((k, v)) = item else { break };
            if let Ok(n) = serde_json::from_slice(&v) {
                out.push(n);
            }
            keys.push(k);
        }
        (keys, out)
    }

    /// The cloud has the notes: forget them.
    pub async fn notes_delivered(&self, keys: Vec<sled::IVec>) {
        let (Some(notes), Some(outbox)) = (&self.notes, &self.outbox) else { return };
        for k in keys {
            let _ = notes.remove(k);
        }
        let _ = outbox.flush().await;
    }

    /// Declares the outage once forwarding has failed for `after`, until `shutdown`.
    pub async fn run_timer(&self, shutdown: CancellationToken) {
        loop {
            let since = self.outage.lock().unwrap().failing_since;
            let Some(since) = since else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.failing.notified() => continue,
                }
            };
            let due = since + chrono::Duration::from_std(self.after).unwrap_or(chrono::Duration::MAX);
            let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let feed = {
                let mut o = self.outage.lock().unwrap();
                // Still the same failure: nothing has succeeded since.
                if o.declared || o.failing_since != Some(since) {
                    continue;
                }
                o.declared = true;
                tracing::warn!(
                    since = %since,
                    after = ?self.after,
                    "cloud unreachable: the connector mails alerts itself until it is back"
                );
                std::mem::take(&mut o.recent).into_iter().map(|(_, c)| c).collect::<Vec<_>>()
            };
            self.alert(feed).await;
            // The next outage is watched for once this one has ended.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.ended.notified() => {}
            }
        }
    }
}
