//! Acknowledgements and maintenance windows as the cloud uses them. [`Silences`] keeps a copy of
//! both in memory (the alert task asks it for every mail and must not wait on a database),
//! written through on this node's changes and read again from the store every [`REFRESH`], so
//! what another cloud node changed counts here within that time.
//!
//! The rules:
//! - An **acknowledgement** is of one sensor's problem as a person saw it: its state and the time
//!   of the reading on screen. It silences alerts about that state from readings up to that time
//!   (the error already mailed, reminders of it). Any change of the sensor after that reading
//!   (another problem state, a recovery) ends it: ingest removes it ([`Silences::changed`]), and
//!   the change is mailed as usual.
//! - A **maintenance window** over a machine or a network silences every alert about the
//!   machines it covers while it is open; what is still wrong when it closes is mailed then.

use crate::error::CloudError;
use crate::store::silences::{Ack, Scope, SilenceDb, Window};
use crate::trust::Trust;
use chrono::{DateTime, Utc};
use outpost_shared::http_server::episode::Episode;
use outpost_shared::mail::Silence;
use outpost_shared::model::State;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the copy in memory is read again from the store.
pub const REFRESH: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Snapshot {
    acks: HashMap<(String, String), Ack>,
    windows: Vec<Window>,
    /// The machines of each network a window covers.
    members: HashMap<String, HashSet<String>>,
}

/// The cloud's acknowledgements and maintenance windows; cheap to clone.
#[derive(Clone)]
pub struct Silences {
    store: SilenceDb,
    trust: Trust,
    snap: Arc<RwLock<Snapshot>>,
}

static REFRESH_FAILED: Episode = Episode::new("failed reads of acknowledgements and maintenance windows");

impl Silences {
    /// Reads what is stored.
    pub async fn open(store: SilenceDb, trust: Trust) -> Result<Silences, CloudError> {
        let s = Silences { store, trust, snap: Arc::default() };
        s.refresh().await?;
        Ok(s)
    }

    /// Reads everything again from the store (what other nodes changed).
    pub async fn refresh(&self) -> Result<(), CloudError> {
        let acks = self.store.acks().await?;
        let windows = self.store.windows().await?;
        let mut members = HashMap::new();
        for w in &windows {
            if let Scope::Network(n) = &w.scope {
                if !members.contains_key(n) {
                    let keys = self.trust.network_keys(n).await?;
                    members.insert(n.clone(), keys.into_iter().map(|k| k.machine_id).collect());
                }
            }
        }
        let acks = acks.into_iter().map(|a| ((a.machine.clone(), a.sensor.clone()), a)).collect();
        *self.write() = Snapshot { acks, windows, members };
        Ok(())
    }

    /// Refreshes every [`REFRESH`] until `shutdown`; a failed read keeps the last copy.
    pub fn spawn_refresh(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(REFRESH) => {}
                }
                if let Err(e) = me.refresh().await {
                    if REFRESH_FAILED.hit() {
                        tracing::warn!(error = %e, "cannot read acknowledgements and maintenance windows; using the last copy");
                    }
                }
            }
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snap.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.snap.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps an acknowledgement (replacing the sensor's earlier one).
    pub async fn acknowledge(&self, ack: Ack) -> Result<(), CloudError> {
        self.store.put_ack(&ack).await?;
        self.write().acks.insert((ack.machine.clone(), ack.sensor.clone()), ack);
        Ok(())
    }

    /// Withdraws a sensor's acknowledgement; returns it.
    pub async fn withdraw(&self, machine: &str, sensor: &str) -> Result<Option<Ack>, CloudError> {
        let gone = self.store.remove_ack(machine, sensor, None).await?;
        self.write().acks.remove(&(machine.to_string(), sensor.to_string()));
        Ok(gone)
    }

    /// A sensor changed state with a reading taken at `ts`: ends an acknowledgement of an earlier
    /// reading. Returns it.
    pub async fn changed(
        &self,
        machine: &str,
        sensor: &str,
        ts: DateTime<Utc>,
    ) -> Result<Option<Ack>, CloudError> {
        // Always asked of the store: the acknowledgement may have been made on another node
        // since the last refresh. State changes are rare beside readings.
        let gone = self.store.remove_ack(machine, sensor, Some(ts)).await?;
        let key = (machine.to_string(), sensor.to_string());
        let mut snap = self.write();
        if snap.acks.get(&key).is_some_and(|a| a.reading_ts < ts) {
            snap.acks.remove(&key);
        }
        Ok(gone)
    }

    /// Every acknowledgement, as stored.
    pub async fn acks(&self) -> Result<Vec<Ack>, CloudError> {
        self.store.acks().await
    }

    /// Every maintenance window, as stored.
    pub async fn windows(&self) -> Result<Vec<Window>, CloudError> {
        self.store.windows().await
    }

    pub async fn add_window(&self, w: Window) -> Result<(), CloudError> {
        self.store.put_window(&w).await?;
        let members = match &w.scope {
            Scope::Network(n) => Some((
                n.clone(),
                self.trust.network_keys(n).await?.into_iter().map(|k| k.machine_id).collect(),
            )),
            Scope::Machine(_) => None,
        };
        let mut snap = self.write();
        if let Some((n, m)) = members {
            snap.members.insert(n, m);
        }
        snap.windows.retain(|x| x.id != w.id);
        snap.windows.push(w);
        Ok(())
    }

    pub async fn remove_window(&self, id: &str) -> Result<Option<Window>, CloudError> {
        let gone = self.store.remove_window(id).await?;
        self.write().windows.retain(|w| w.id != id);
        Ok(gone)
    }

    /// Until when `machine` is in maintenance at `now` (the latest end of the windows open).
    pub fn maintenance_until(&self, machine: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let snap = self.read();
        snap.windows
            .iter()
            .filter(|w| match &w.scope {
                Scope::Machine(m) => m == machine,
                Scope::Network(n) => snap.members.get(n).is_some_and(|m| m.contains(machine)),
            })
            .filter_map(|w| w.schedule.open_until(now))
            .max()
    }
}

impl outpost_shared::mail::Silences for Silences {
    fn silence(
        &self,
        machine_id: &str,
        sensor: &str,
        state: State,
        reading_ts: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<Silence> {
        if let Some(until) = self.maintenance_until(machine_id, now) {
            return Some(Silence::Maintenance { until });
        }
        let snap = self.read();
        let ack = snap.acks.get(&(machine_id.to_string(), sensor.to_string()))?;
        (ack.state == state && reading_ts <= ack.reading_ts)
            .then(|| Silence::Acknowledged { by: ack.by.clone() })
    }
}
