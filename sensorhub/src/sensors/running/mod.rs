//! Running sensors: one task per sensor on a shared grid, and live replacement of the set.
//!
//! [`SensorHandle::prepare`] compares a new list of configs with the running one by sensor id
//! and config: an equal sensor keeps its task (its schedule, its counters, its baseline), a
//! changed one is built anew, an added one is built, a missing one will stop. Building may fail
//! (a bad CA file), so it happens first and changes nothing; [`Replacement::commit`] then stops
//! what goes and starts what comes, on the grid the set started with. A stopped sensor ends at
//! its next await: a batch it already handed to the writer's channel is written like any other,
//! a batch it had not handed over yet is dropped with it. Seqs are given by the buffer when the
//! writer appends, so a replacement never touches them.

use super::{validate_sensors, Batch, Sensor, SensorConfig, SensorError, SensorSet};
use outpost_shared::model::Sample;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[cfg(test)]
mod tests;

/// How long a replacement waits for the stopped sensors' tasks to end before starting their
/// successors anyway. A task ends at its next await, except one that already sent a batch and
/// waits for the writer to confirm it (a sensor that keeps its position on disk): only a stalled
/// disk makes that slow.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Controls running sensors: sample one now, list them, replace them, wait for them to stop.
#[derive(Clone)]
pub struct SensorHandle {
    inner: Arc<Inner>,
}

struct Inner {
    /// The writer's channel, for sensors started later. Taken (dropped) when the hub stops, so
    /// the writer sees its channel close once the last sensor task has ended.
    out: Mutex<Option<mpsc::Sender<Batch>>>,
    shutdown: CancellationToken,
    /// Where the grid starts; sensors started later tick on it too.
    grid: Instant,
    state_dir: Option<PathBuf>,
    tracker: TaskTracker,
    /// In config order; a hub has tens of sensors, so a list beats a map.
    running: Mutex<Vec<Entry>>,
    /// One replacement at a time, from `prepare` to the end of `commit`: two interleaved ones
    /// would each keep a sensor the other one stops.
    replacing: Arc<tokio::sync::Mutex<()>>,
}

struct Entry {
    id: String,
    config: SensorConfig,
    trigger: Arc<Trigger>,
    /// Stops this sensor alone; a child of the hub's shutdown.
    stop: CancellationToken,
    /// None only between a commit's stopping of old tasks and its start of new ones.
    task: Option<JoinHandle<()>>,
}

/// How a sensor is asked to sample now, and who waits for that sample.
#[derive(Default)]
struct Trigger {
    notify: Notify,
    /// Senders for the samples of the next sample taken; bounded by what callers ask for (one
    /// per `sample-now` command, which the command loop runs one at a time).
    waiters: Mutex<Vec<oneshot::Sender<Vec<Sample>>>>,
}

impl Trigger {
    fn take_waiters(&self) -> Vec<oneshot::Sender<Vec<Sample>>> {
        std::mem::take(&mut *self.waiters.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// What a replacement did, by sensor id.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub stopped: Vec<String>,
    /// Sensors left running untouched.
    pub kept: usize,
}

/// A new sensor set, built and checked, not yet running: [`Replacement::commit`] swaps it in,
/// dropping it changes nothing.
pub struct Replacement {
    inner: Arc<Inner>,
    /// The new set in order, each either kept (None: the running task goes on) or built anew.
    plan: Vec<(SensorConfig, Option<Sensor>)>,
    _one_at_a_time: tokio::sync::OwnedMutexGuard<()>,
}

pub(super) fn spawn(set: SensorSet, out: mpsc::Sender<Batch>, shutdown: CancellationToken) -> SensorHandle {
    let inner = Arc::new(Inner {
        out: Mutex::new(Some(out)),
        shutdown: shutdown.clone(),
        grid: Instant::now(),
        state_dir: set.state_dir,
        tracker: TaskTracker::new(),
        running: Mutex::new(Vec::new()),
        replacing: Arc::new(tokio::sync::Mutex::new(())),
    });
    let entries = set.sensors.into_iter().filter_map(|s| inner.start(s)).collect();
    *inner.running.lock().unwrap_or_else(PoisonError::into_inner) = entries;
    // Without this the handle's own sender would keep the writer waiting for good after a stop.
    let (weak, stop) = (Arc::downgrade(&inner), shutdown);
    tokio::spawn(async move {
        stop.cancelled().await;
        if let Some(inner) = weak.upgrade() {
            inner.out.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
    });
    SensorHandle { inner }
}

impl Inner {
    fn sender(&self) -> Option<mpsc::Sender<Batch>> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Starts `sensor`'s task; None once the hub is stopping.
    fn start(&self, sensor: Sensor) -> Option<Entry> {
        let out = self.sender()?;
        let trigger = Arc::new(Trigger::default());
        let stop = self.shutdown.child_token();
        let (id, config) = (sensor.id.clone(), sensor.config.clone());
        let task = self.tracker.spawn(run(sensor, self.grid, trigger.clone(), out, stop.clone()));
        Some(Entry { id, config, trigger, stop, task: Some(task) })
    }
}

impl SensorHandle {
    /// Samples the named sensor now; false if no such sensor. A sensor busy sampling samples
    /// again right after.
    pub fn trigger(&self, name: &str) -> bool {
        self.with_trigger(name, |t| t.notify.notify_one()).is_some()
    }

    /// As [`SensorHandle::trigger`], and the samples of that sample come back on the receiver
    /// (besides going to the buffer as usual), for the `sample-now` command. None if no such
    /// sensor; the receiver errs if the sensor stops before it samples.
    pub fn sample_now(&self, name: &str) -> Option<oneshot::Receiver<Vec<Sample>>> {
        self.with_trigger(name, |t| {
            let (tx, rx) = oneshot::channel();
            t.waiters.lock().unwrap_or_else(PoisonError::into_inner).push(tx);
            t.notify.notify_one();
            rx
        })
    }

    fn with_trigger<T>(&self, name: &str, f: impl FnOnce(&Trigger) -> T) -> Option<T> {
        let running = self.inner.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.iter().find(|e| e.id == name).map(|e| f(&e.trigger))
    }

    /// Sensor names, in config order.
    pub fn names(&self) -> Vec<String> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }

    /// The configs of the running sensors, in order (passwords as the sensors use them).
    pub fn configs(&self) -> Vec<SensorConfig> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|e| e.config.clone())
            .collect()
    }

    /// Validates `configs` as a whole and builds the sensors that are new or changed, without
    /// touching the running ones. Waits for a replacement in progress to finish first.
    pub async fn prepare(&self, configs: &[SensorConfig]) -> Result<Replacement, SensorError> {
        let guard = self.inner.replacing.clone().lock_owned().await;
        if self.inner.shutdown.is_cancelled() {
            return Err(SensorError::Stopping);
        }
        let mut problems = Vec::new();
        validate_sensors(configs, &mut problems);
        if !problems.is_empty() {
            return Err(SensorError::Invalid(problems));
        }
        let fresh: Vec<SensorConfig> = {
            let running = self.inner.running.lock().unwrap_or_else(PoisonError::into_inner);
            configs.iter().filter(|c| !running.iter().any(|e| &e.config == *c)).cloned().collect()
        };
        let built = SensorSet::build_in(&fresh, self.inner.state_dir.as_deref())?;
        let mut built = built.sensors.into_iter();
        let plan = configs
            .iter()
            .map(|c| {
                let new = if fresh.contains(c) { built.next() } else { None };
                (c.clone(), new)
            })
            .collect();
        Ok(Replacement { inner: self.inner.clone(), plan, _one_at_a_time: guard })
    }

    /// [`SensorHandle::prepare`] and [`Replacement::commit`] in one.
    pub async fn replace(&self, configs: &[SensorConfig]) -> Result<Changes, SensorError> {
        Ok(self.prepare(configs).await?.commit().await)
    }

    /// Waits until every sensor task has ended (after shutdown, or once `out` closed).
    pub async fn stopped(&self) {
        let out = self.inner.sender();
        tokio::select! {
            _ = self.inner.shutdown.cancelled() => {}
            _ = async {
                match out {
                    Some(o) => o.closed().await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

impl Replacement {
    /// Stops the sensors that are gone or changed, waits for their tasks to end (so a changed
    /// sensor never runs twice at once, e.g. two readers of one event log bookmark), then starts
    /// the new and changed ones. Unchanged sensors are not touched.
    pub async fn commit(self) -> Changes {
        let inner = &self.inner;
        let mut changes = Changes::default();
        let mut to_start = Vec::new();
        let stopping: Vec<JoinHandle<()>> = {
            let mut running = inner.running.lock().unwrap_or_else(PoisonError::into_inner);
            let mut old: Vec<Entry> = std::mem::take(&mut *running);
            let mut next = Vec::with_capacity(self.plan.len());
            for (config, built) in self.plan {
                match built {
                    None => {
                        let at = old.iter().position(|e| e.config == config).expect("prepare saw it running");
                        next.push(old.remove(at));
                        changes.kept += 1;
                    }
                    Some(sensor) => {
                        if old.iter().any(|e| e.id == sensor.id) {
                            changes.restarted.push(sensor.id.clone());
                        } else {
                            changes.started.push(sensor.id.clone());
                        }
                        // Listed at once, so a trigger arriving meanwhile is kept for the new task.
                        let trigger = Arc::new(Trigger::default());
                        let stop = inner.shutdown.child_token();
                        next.push(Entry {
                            id: sensor.id.clone(),
                            config: config.clone(),
                            trigger: trigger.clone(),
                            stop: stop.clone(),
                            task: None,
                        });
                        to_start.push((sensor, trigger, stop));
                    }
                }
            }
            *running = next;
            old.into_iter()
                .filter_map(|mut e| {
                    if !changes.restarted.contains(&e.id) {
                        changes.stopped.push(e.id.clone());
                    }
                    e.stop.cancel();
                    e.task.take()
                })
                .collect()
        };
        // One deadline for all of them: each stops at its next await, so they end together.
        let deadline = Instant::now() + STOP_WAIT;
        for task in stopping {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!(
                    "a stopped sensor did not end in {} s; its successor starts anyway",
                    STOP_WAIT.as_secs()
                );
            }
        }
        let Some(out) = inner.sender() else { return changes };
        let mut running = inner.running.lock().unwrap_or_else(PoisonError::into_inner);
        for (sensor, trigger, stop) in to_start {
            let id = sensor.id.clone();
            let task = inner.tracker.spawn(run(sensor, inner.grid, trigger, out.clone(), stop));
            if let Some(e) = running.iter_mut().find(|e| e.id == id) {
                e.task = Some(task);
            }
        }
        changes
    }
}

async fn run(
    mut sensor: Sensor,
    grid: Instant,
    trigger: Arc<Trigger>,
    out: mpsc::Sender<Batch>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => return,
        wait = sensor.prime() => {
            if let Some(wait) = wait {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    // The first sample at once (after priming), then on the shared grid.
    let mut ticker =
        tokio::time::interval_at(next_on_grid(grid, sensor.interval, Instant::now()), sensor.interval);
    // After a slow check or a stalled writer, skip to the next grid point instead of catching up
    // with a burst of back-to-back samples (and instead of leaving the grid, as `Delay` would).
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
                _ = trigger.notify.notified() => {}
            }
        }
        // Whoever asked before this sample started gets this sample; later askers the next one
        // (their trigger is stored, so it follows at once).
        let waiting = trigger.take_waiters();
        let samples = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            s = sensor.sample() => s,
        };
        for w in waiting {
            let _ = w.send(samples.clone());
        }
        if samples.is_empty() {
            continue;
        }
        let (durable, stored) = if sensor.wants_durable() {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        tokio::select! {
            biased;
            // Not sent: the sensor hears nothing, so whatever position it keeps stays where the
            // buffer has it.
            _ = shutdown.cancelled() => return,
            sent = out.send(Batch { samples, durable }) => {
                if sent.is_err() {
                    tracing::debug!(sensor = %sensor.id, "sample channel closed; sensor stops");
                    return;
                }
            }
        }
        if let Some(stored) = stored {
            // Sent: wait for the writer's word even while stopping (it appends everything queued
            // before it ends), so a clean stop leaves the sensor's position where the buffer is.
            let stored = stored.await.is_ok();
            sensor.durable(stored).await;
        }
    }
}

/// The first point of the grid `start + k·every` that lies after `now`.
pub(super) fn next_on_grid(start: Instant, every: Duration, now: Instant) -> Instant {
    let every_ns = every.as_nanos().max(1);
    let done = now.saturating_duration_since(start).as_nanos() / every_ns + 1;
    // Intervals are at least 100 ms and hubs do not run for centuries: the product fits.
    start + Duration::from_nanos(u64::try_from(done * every_ns).unwrap_or(u64::MAX))
}
