//! Sensors: what a hub measures on its machine and around it.
//!
//! Each `[[sensor]]` table ([`SensorConfig`]) becomes one sensor with its own interval and
//! thresholds; [`SensorSet::build`] makes them all, [`SensorSet::spawn`] runs one task per sensor
//! and sends every batch of [`Sample`]s to the writer's channel; the [`SensorHandle`] it returns
//! replaces the running set live (`running`: unchanged sensors keep their task and schedule).
//! Machine-wide sensors (cpu, memory, disk, load, process) share one sysinfo handle and refresh
//! only what they read; rate sensors (diskio, network) read `/proc` directly on Linux; checks of
//! things elsewhere (tcp, http, command, service) are async with a timeout; the Windows event log
//! and performance counters are read through Win32 calls on the blocking pool. Sampling never
//! fails: a sensor that cannot read its value reports `unknown` or `error` with a message saying
//! why.

mod command;
mod config;
mod counters;
#[cfg(any(windows, test))]
mod cpu_windows;
mod error;
mod eventlog;
mod file;
mod http;
mod perfcounter;
pub mod perfdata;
mod probe;
mod process;
mod running;
mod service;
mod system;
mod tcp;
mod threshold;

#[cfg(test)]
mod tests;

pub use config::{
    check_counter_path, default_sensors, validate_sensors, CommandLine, EventLevel, Metric, Secret,
    SensorConfig, SensorKind, DEFAULT_TIMEOUT,
};
pub use error::SensorError;
pub use running::{Changes, Replacement, SensorHandle};
pub use threshold::{Thresholds, Unit};

use crate::writer::Batch;
use outpost_shared::model::Sample;
use probe::{Probe, SharedProbe};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A sensor whose sampling blocks (file system, `/proc`, sysinfo): it runs on tokio's blocking
/// pool, never on a runtime worker.
pub(crate) trait BlockingSensor: Send + 'static {
    /// Takes a first reading of counters that only mean something as a difference (CPU times,
    /// bytes transferred) and says how long to wait before the first sample has a rate.
    fn prime(&mut self) -> Option<Duration> {
        None
    }

    fn sample(&mut self, out: &mut Vec<Sample>);

    /// True for a sensor that must hear whether the samples of its last `sample` reached the
    /// buffer (see [`BlockingSensor::durable`]).
    fn wants_durable(&self) -> bool {
        false
    }

    /// The samples of the last `sample` are durable in the buffer (`true`), or will never be
    /// (`false`: dropped, or the hub failed). Called before the next `sample`.
    fn durable(&mut self, _stored: bool) {}
}

enum Work {
    Blocking(Arc<Mutex<dyn BlockingSensor>>),
    Service(service::Service),
    Tcp(tcp::Tcp),
    Http(Box<http::Http>),
    Command(command::Command),
}

/// One built sensor, ready to run.
struct Sensor {
    id: String,
    /// What it was built from (passwords unsealed): a replacement keeps the sensor running when
    /// its new config equals this one.
    config: SensorConfig,
    interval: Duration,
    work: Work,
}

impl Sensor {
    async fn prime(&mut self) -> Option<Duration> {
        match &self.work {
            Work::Blocking(b) => {
                let b = b.clone();
                tokio::task::spawn_blocking(move || b.lock().unwrap_or_else(PoisonError::into_inner).prime())
                    .await
                    .ok()
                    .flatten()
            }
            _ => None,
        }
    }

    fn wants_durable(&self) -> bool {
        match &self.work {
            Work::Blocking(b) => b.lock().unwrap_or_else(PoisonError::into_inner).wants_durable(),
            _ => false,
        }
    }

    async fn durable(&mut self, stored: bool) {
        if let Work::Blocking(b) = &self.work {
            let b = b.clone();
            // It may write a file: the blocking pool, not a runtime worker.
            let _ = tokio::task::spawn_blocking(move || {
                b.lock().unwrap_or_else(PoisonError::into_inner).durable(stored)
            })
            .await;
        }
    }

    async fn sample(&mut self) -> Vec<Sample> {
        let mut out = Vec::new();
        match &mut self.work {
            Work::Blocking(b) => {
                let b = b.clone();
                let done = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    b.lock().unwrap_or_else(PoisonError::into_inner).sample(&mut out);
                    out
                })
                .await;
                match done {
                    Ok(samples) => out = samples,
                    Err(e) => {
                        tracing::error!(sensor = %self.id, error = %e, "sensor panicked; it will try again")
                    }
                }
            }
            Work::Service(s) => s.sample(&mut out).await,
            Work::Tcp(t) => t.sample(&mut out).await,
            Work::Http(h) => h.sample(&mut out).await,
            Work::Command(c) => c.sample(&mut out).await,
        }
        out
    }
}

/// Every sensor of a hub, built and not yet running.
pub struct SensorSet {
    sensors: Vec<Sensor>,
    /// Where sensors keep state across restarts; sensors added while running get it too.
    state_dir: Option<PathBuf>,
}

impl SensorSet {
    /// Validates `configs` and builds every sensor: HTTP clients and their trust roots are made
    /// here, once, so a bad CA file stops the hub at start instead of failing every check.
    pub fn build(configs: &[SensorConfig]) -> Result<SensorSet, SensorError> {
        SensorSet::build_in(configs, None)
    }

    /// As [`SensorSet::build`], with `state_dir` (the hub's data directory) for what sensors keep
    /// across restarts: the event log sensor's bookmark. Without it that stays in memory.
    pub fn build_in(configs: &[SensorConfig], state_dir: Option<&Path>) -> Result<SensorSet, SensorError> {
        let mut problems = Vec::new();
        validate_sensors(configs, &mut problems);
        if !problems.is_empty() {
            return Err(SensorError::Invalid(problems));
        }
        let probe: SharedProbe = Probe::shared();
        // One client per trust store: a client holds the parsed roots, and checks against the
        // same CA can share them.
        let mut clients: HashMap<Option<PathBuf>, reqwest::Client> = HashMap::new();
        let mut sensors = Vec::with_capacity(configs.len());
        for cfg in configs {
            let id = cfg.id();
            let blocking = |b: Arc<Mutex<dyn BlockingSensor>>| Work::Blocking(b);
            let work = match cfg.kind {
                SensorKind::Cpu => blocking(Arc::new(Mutex::new(system::Cpu::new(cfg, probe.clone())))),
                SensorKind::Memory => blocking(Arc::new(Mutex::new(system::Memory::new(cfg, probe.clone())))),
                SensorKind::Disk => blocking(Arc::new(Mutex::new(system::Disk::new(cfg, probe.clone())))),
                SensorKind::Diskio => {
                    blocking(Arc::new(Mutex::new(counters::DiskIo::new(cfg, probe.clone()))))
                }
                SensorKind::Network => {
                    blocking(Arc::new(Mutex::new(counters::Network::new(cfg, probe.clone()))))
                }
                SensorKind::Load => blocking(Arc::new(Mutex::new(system::Load::new(cfg)))),
                SensorKind::Process => {
                    blocking(Arc::new(Mutex::new(process::Process::new(cfg, probe.clone()))))
                }
                SensorKind::File => blocking(Arc::new(Mutex::new(file::File::new(cfg)))),
                SensorKind::Eventlog => {
                    blocking(Arc::new(Mutex::new(eventlog::EventLog::new(cfg, state_dir))))
                }
                SensorKind::Perfcounter => blocking(Arc::new(Mutex::new(perfcounter::PerfCounter::new(cfg)))),
                SensorKind::Service => Work::Service(service::Service::new(cfg)),
                SensorKind::Tcp => Work::Tcp(tcp::Tcp::new(cfg)),
                SensorKind::Command => Work::Command(command::Command::new(cfg)),
                SensorKind::Http => {
                    let url = reqwest::Url::parse(cfg.url.as_deref().unwrap_or_default()).map_err(|e| {
                        SensorError::Invalid(vec![outpost_shared::config::Problem::new(
                            format!("sensor `{id}`.url"),
                            e.to_string(),
                        )])
                    })?;
                    let client = match clients.get(&cfg.ca_file) {
                        Some(c) => c.clone(),
                        None => {
                            let https = configs.iter().any(|c| {
                                c.kind == SensorKind::Http
                                    && c.ca_file == cfg.ca_file
                                    && c.url.as_deref().is_some_and(|u| u.starts_with("https:"))
                            });
                            let c = http::client(cfg.ca_file.as_deref(), https).map_err(|e| match e {
                                http::ClientError::Tls(source) => SensorError::Tls { id: id.clone(), source },
                                http::ClientError::Build(source) => {
                                    SensorError::HttpClient { id: id.clone(), source }
                                }
                            })?;
                            clients.insert(cfg.ca_file.clone(), c.clone());
                            c
                        }
                    };
                    Work::Http(Box::new(http::Http::new(cfg, client, url)))
                }
            };
            sensors.push(Sensor { id, config: cfg.clone(), interval: cfg.interval(), work });
        }
        Ok(SensorSet { sensors, state_dir: state_dir.map(Path::to_path_buf) })
    }

    /// Sensor names, in config order.
    pub fn names(&self) -> Vec<String> {
        self.sensors.iter().map(|s| s.id.clone()).collect()
    }

    /// Samples every sensor once, in order, and returns all samples: for `config check`-style
    /// dry runs and tests. Rate sensors take their baseline first, so this takes about a second.
    pub async fn sample_all(&mut self) -> Vec<Sample> {
        let mut wait = Duration::ZERO;
        for s in &mut self.sensors {
            if let Some(w) = s.prime().await {
                wait = wait.max(w);
            }
        }
        tokio::time::sleep(wait).await;
        let mut out = Vec::new();
        for s in &mut self.sensors {
            out.extend(s.sample().await);
        }
        out
    }

    /// Spawns one task per sensor on its interval (first sample at once); every sample batch
    /// goes to `out`. A full `out` means the writer is behind: the sensor waits (back-pressure)
    /// and skips the ticks it missed, it never drops a batch it has taken. All tasks end when
    /// `shutdown` is cancelled or `out` is closed; [`SensorHandle::stopped`] waits for that.
    ///
    /// After the first sample, every sensor ticks on one grid that starts when this is called:
    /// a sensor with interval `i` samples at `start + k·i`. Sensors whose intervals divide each
    /// other fall due together, so the uplink sends their readings in one upload (one signature,
    /// one request) instead of one upload per sensor at scattered phases. The grid starts at the
    /// hub's own start, not at a round wall-clock time, so a fleet does not upload in lockstep.
    /// Sensors added later by [`SensorHandle::prepare`] join the same grid.
    pub fn spawn(self, out: mpsc::Sender<Batch>, shutdown: CancellationToken) -> SensorHandle {
        running::spawn(self, out, shutdown)
    }
}
