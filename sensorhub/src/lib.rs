//! The sensorhub: samples this machine's sensors, buffers every reading durably and sends it on.
//!
//! Three tasks and two bounded hand-offs: the [`sensors`] each sample on their own interval and
//! send to the [`writer`] over a bounded channel (a slow disk makes sensors wait, it never drops
//! silently); the writer group-commits into the durable buffer and wakes the [`uplink`], which
//! sends live readings first and the backlog behind them, deleting only what was acknowledged.
//! With a `[relay]` section the [`relay`] poller is one more producer on the sensors' channel:
//! relay states are readings like any other.
//! [`run`] wires them up from a [`config::HubConfig`] and tears them down in order on shutdown.
// Unsafe code only for the Win32 calls of the Windows sensors, in their own small modules.
#![cfg_attr(not(windows), forbid(unsafe_code))]
#![cfg_attr(windows, deny(unsafe_code))]

pub mod commands;
pub mod config;
#[cfg(test)]
mod faulty_buffer;
pub mod managed;
pub mod relay;
pub mod sensors;
pub mod trust;
pub mod uplink;
pub mod watchdog;
pub mod writer;

pub use config::HubConfig;

use outpost_shared::buffer::{OpenOutcome, SledBuffer, Storage, WhenFull};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sample batches in flight between the sensors and the writer.
const SAMPLE_QUEUE: usize = 256;
/// How long the uplink may keep trying to hand over what is buffered on a clean stop.
const STOP_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Buffer(#[from] outpost_shared::buffer::BufferError),
    #[error(transparent)]
    Uplink(#[from] uplink::UplinkError),
    #[error(transparent)]
    Sensors(#[from] sensors::SensorError),
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The hub stopped by itself because it cannot go on (its buffer's disk stalled).
    #[error("the hub stopped: {0}")]
    Failed(String),
}

/// The runtime the hub runs on, sized for an agent that should go unnoticed on the machine it
/// watches: one thread runs every task. A hub's tasks are small; what blocks, or computes for
/// milliseconds on every upload or poll (sensor reads, buffer reads and writes, RSA signatures of
/// batches and command polls through a connector, a backlog's compression), runs on the blocking
/// threads; rare signatures (a receipt's refresh, a command result when no session can be had)
/// take the thread for about 8 ms each. With two workers the runtime's threads switched about 510
/// times a minute on an idle hub, handing work over and looking for work to steal; with one,
/// about 290, for a sixth less CPU (BENCHMARKS.md). Blocking threads are kept between sampling
/// rounds: a keep-alive of one second made the hub start and end about ten threads a minute,
/// which cost more CPU than their idle stacks cost memory. The cap is generous on purpose: a
/// sensor stuck in the kernel (a dead network mount) holds its thread, and the rest must go on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(32)
        .thread_keep_alive(Duration::from_secs(120))
        .enable_all()
        .build()
}

/// Runs the hub until `shutdown` completes; then stops the sensors, writes what they produced and
/// closes the buffer cleanly.
pub async fn run(config: HubConfig, shutdown: impl Future<Output = ()>) -> Result<(), HubError> {
    let token = CancellationToken::new();
    let hub = start(config, token.clone()).await?;
    // The hub may also stop by itself, when it cannot go on (see `writer`).
    tokio::select! {
        _ = shutdown => {}
        _ = token.cancelled() => {}
    }
    token.cancel();
    let failed = hub.failed.clone();
    match failed.get() {
        Some(why) => {
            // Tasks may be stuck on the stalled disk for good: give them a moment, not forever.
            let _ = tokio::time::timeout(STOP_GRACE * 3, hub.join()).await;
            Err(HubError::Failed(why.clone()))
        }
        None => {
            hub.join().await;
            Ok(())
        }
    }
}

/// A started hub.
pub struct Hub {
    pub machine_id: String,
    pub status: tokio::sync::watch::Receiver<uplink::UplinkStatus>,
    pub sensors: sensors::SensorHandle,
    /// Sensors managed from the cloud: the version running, `sensors.apply`.
    pub managed: Arc<managed::Managed>,
    /// The relay cards, when the config has `[relay]`. Remote `relay.*` commands switch through
    /// the same driver (the command executor refuses `locked` relays); the driver closes the
    /// port when the hub stops.
    pub relays: Option<relay::Relays>,
    /// Why the hub stopped by itself, if it did (it then cancelled its own token).
    pub failed: Arc<std::sync::OnceLock<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Hub {
    /// Waits for every task to finish after the token given to [`start`] was cancelled.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Opens the buffer, starts sensors, writer and uplink. Cancelling `shutdown` stops them.
pub async fn start(config: HubConfig, shutdown: CancellationToken) -> Result<Hub, HubError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| HubError::Io { path: dir.clone(), source })?;
    let key = trust::machine_key(&config.key_file.clone().unwrap_or_else(|| dir.join(trust::KEY_FILE)))?;
    let machine_id = key.machine_id().to_string();
    let hostname = config.hostname.clone().unwrap_or_else(system_hostname);
    let (buffer, outcome) = open_buffer(&dir.join("buffer"), config.buffer.quota).await?;
    if let OpenOutcome::Recovered { moved_to, reason } = outcome {
        tracing::error!(moved_to = %moved_to.display(), %reason,
            "the buffer was unreadable; its readings are lost unless recovered by hand from the moved directory");
    }
    let buffer: Arc<dyn Storage> = Arc::new(buffer);
    let stats = buffer.stats();
    tracing::info!(%machine_id, %hostname, buffered = stats.len, next_seq = stats.next_seq, "sensorhub starting");

    let mut local_sensors = config.effective_sensors();
    trust::unseal_sensor_secrets(&mut local_sensors, &key)?;
    let local = managed::Local {
        policy: config.managed.clone(),
        sensors: local_sensors,
        defaults: config.sensors.is_empty(),
        relay: config.relay.clone(),
    };
    let (sensor_set, loaded) = local_and_stored(dir, &key, &local)?;
    let feed = Arc::new(uplink::Feed::default());
    let stop_feed = feed.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(SAMPLE_QUEUE);
    let sensor_stop = shutdown.child_token();
    // The relay poller stops with the sensors and feeds the same channel, so the writer still
    // empties everything it produced before the buffer closes.
    // With the stored document's names, locks and restore rules, so a power-up seen before the
    // cloud is reachable restores what the cloud last said.
    let relay_config =
        loaded.accepted.as_ref().and_then(|a| a.relays.clone()).or_else(|| config.relay.clone());
    let (relays, relay_poller) = match relay_config {
        Some(cfg) => {
            let (relays, poller) =
                relay::Relays::start(cfg, tx.clone(), sensor_stop.clone().cancelled_owned());
            (Some(relays), Some(poller))
        }
        None => (None, None),
    };
    let relay_driver = relays.as_ref().map(|r| r.handle.clone());
    let sensor_handle = sensor_set.spawn(tx, sensor_stop.clone());
    let managed = Arc::new(managed::Managed::new(
        dir.clone(),
        key.clone(),
        local,
        sensor_handle.clone(),
        relays.clone(),
        loaded,
    ));
    let failed = Arc::new(std::sync::OnceLock::new());
    let writer =
        tokio::spawn(writer::run(buffer.clone(), rx, feed.clone(), shutdown.clone(), failed.clone()));

    let identity = uplink::Identity {
        machine_id: machine_id.clone(),
        hostname,
        role: config.role,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let uplink_stop = CancellationToken::new();
    let u = config.uplink.clone();
    let storage_status = feed.storage_error.subscribe();
    let (status_tx, status) =
        tokio::sync::watch::channel(uplink::UplinkStatus { path: "offline".into(), ..Default::default() });
    let uplink_task = if u.cloud.is_some() || u.connector.is_some() || u.discover {
        let direct = match &u.cloud {
            Some(url) => {
                let client = outpost_shared::tls::https_client(u.ca_file.as_deref(), u.timeout)
                    .map_err(uplink::UplinkError::from)?;
                Some(uplink::HttpTransport::new(client, url, key.clone(), "direct".into()))
            }
            None => None,
        };
        let stop = uplink_stop.clone();
        let parts = UplinkParts {
            dir: dir.clone(),
            key: key.clone(),
            role: config.role,
            hostname: identity.hostname.clone(),
            sensors: sensor_handle.clone(),
            config_path: config.config_path.clone(),
            relays: relays.clone(),
            managed: managed.clone(),
        };
        let buffer = buffer.clone();
        Some(tokio::spawn(async move {
            let Some(enrollment) = enrolled(&u, direct.as_ref(), &parts, &stop).await else { return };
            let transport = uplink::PathTransport::new(
                u.clone(),
                parts.key.clone(),
                enrollment.clone(),
                direct,
                parts.dir.clone(),
            );
            let verifier = match outpost_shared::keys::CommandVerifier::open(
                enrollment.cloud_key.clone(),
                parts.key.machine_id().clone(),
                &parts.dir.join("command-replay.log"),
                chrono::Utc::now(),
            ) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the command replay log; commands are disabled");
                    return run_uplink(buffer, transport, u, identity, feed, status_tx, stop).await;
                }
            };
            let exec = commands::Executor {
                key: parts.key.clone(),
                verifier,
                sensors: parts.sensors.clone(),
                relays: parts.relays.clone(),
                config_path: parts.config_path.clone(),
                managed: Some(parts.managed.clone()),
                answered: commands::Answered::default(),
            };
            let poller = tokio::spawn(commands::run(transport.clone(), exec, stop.clone()));
            run_uplink(buffer, transport, u, identity, feed, status_tx, stop).await;
            let _ = poller.await;
        }))
    } else {
        tracing::warn!("no cloud, connector or discovery configured: readings are only buffered");
        None
    };

    let mut tasks = Vec::new();
    if config.uplink.advertise {
        tasks.push(advertise(&config, dir, &machine_id, shutdown.clone())?);
    }
    let reporter = tokio::spawn(write_status(
        dir.join(STATUS_FILE),
        machine_id.clone(),
        status.clone(),
        managed.status(),
        storage_status,
        shutdown.clone(),
    ));

    // Orderly stop: sensors first, then the writer empties its queue into the buffer, then the
    // uplink gets a moment to hand over what it holds, then the buffer closes (flush on drop).
    let supervisor = tokio::spawn(async move {
        shutdown.cancelled().await;
        sensor_stop.cancel();
        if let Some(poller) = relay_poller {
            let _ = poller.await;
        }
        // Close the serial port for every clone of the handle, so the port is free (for
        // `outpost relay` or a restarted hub) as soon as the hub has stopped.
        if let Some(driver) = relay_driver {
            driver.shutdown().await;
        }
        let _ = writer.await;
        stop_feed.stopping.cancel();
        if let Some(task) = uplink_task {
            let waiting = buffer.stats().len;
            if waiting > 0 {
                tracing::info!(buffered = waiting, "stopping: handing over what is buffered");
            }
            let handed_over = tokio::time::timeout(STOP_GRACE, async {
                while buffer.stats().len > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            if handed_over.is_err() {
                tracing::warn!(
                    buffered = buffer.stats().len,
                    "stopping with readings still buffered; they are sent after the next start"
                );
            }
            uplink_stop.cancel();
            let _ = task.await;
        }
        drop(buffer);
    });
    tasks.extend([supervisor, reporter]);
    Ok(Hub { machine_id, status, sensors: sensor_handle, managed, relays, failed, tasks })
}

/// The sensors to start with: the local ones, and those of the stored managed document when it
/// still passes every check (with no cloud: the key pinned at enrollment). A stored document that
/// does not is left aside, and why is logged and reported.
fn local_and_stored(
    dir: &Path,
    key: &outpost_shared::keys::KeyPair,
    local: &managed::Local,
) -> Result<(sensors::SensorSet, managed::Loaded), HubError> {
    let cloud_key = match trust::load(dir, key) {
        Ok(e) => e.map(|e| e.cloud_key),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the enrollment; a stored managed sensor document is not used");
            None
        }
    };
    let mut loaded = managed::load(dir, key, cloud_key.as_ref(), local);
    if let Some(accepted) = &loaded.accepted {
        match sensors::SensorSet::build_in(&local.combined(&accepted.sensors), Some(dir)) {
            Ok(set) => {
                tracing::info!(
                    version = accepted.version,
                    sensors = accepted.sensors.len(),
                    "running the stored managed sensor document"
                );
                return Ok((set, loaded));
            }
            Err(e) => {
                loaded.problem = Some(format!("stored v{} does not build: {e}", accepted.version));
                loaded.accepted = None;
            }
        }
    }
    if let Some(problem) = &loaded.problem {
        tracing::warn!(%problem, "the stored managed sensor document is not used; running the local sensors only");
    }
    Ok((sensors::SensorSet::build_in(&local.sensors, Some(dir))?, loaded))
}

/// How long opening the buffer may take (it reads every record once) before the disk counts as
/// stalled and the hub stops, to be restarted, instead of waiting for good.
const OPEN_DEADLINE: Duration = Duration::from_secs(2 * outpost_shared::group_flush::STALL_AFTER.as_secs());

/// Opens the buffer off the runtime's workers and within [`OPEN_DEADLINE`]: on a full or failing
/// disk sled can block in its recovery, and a hub that hangs there neither samples nor exits.
async fn open_buffer(path: &Path, quota: u64) -> Result<(SledBuffer, OpenOutcome), HubError> {
    let p = path.to_path_buf();
    match tokio::time::timeout(
        OPEN_DEADLINE,
        tokio::task::spawn_blocking(move || SledBuffer::open(&p, quota, WhenFull::DropOldest)),
    )
    .await
    {
        Ok(opened) => Ok(opened.expect("opening the buffer does not panic")?),
        Err(_) => Err(HubError::Failed(format!(
            "opening the buffer at {} did not finish in {} s: its disk is full or failing; free space \
             or fix the disk, then the hub starts again",
            path.display(),
            OPEN_DEADLINE.as_secs()
        ))),
    }
}

/// Answers connectors' SSDP searches for hubs. The hub serves nothing at LOCATION; its path names
/// the machine, which is how a connector tells attached hubs from unattached ones.
fn advertise(
    config: &HubConfig,
    dir: &Path,
    machine_id: &str,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, HubError> {
    use outpost_shared::ssdp;
    let ad = ssdp::Advertisement {
        st: ssdp::ST_SENSORHUB.into(),
        uuid: ssdp::uuid_for_machine(machine_id),
        location: format!("https://{}/outpost/hub/{machine_id}", ssdp::LOCATION_IP),
        boot_id: ssdp::next_boot_id(&dir.join("ssdp-boot-id")).map_err(|e| HubError::Io {
            path: dir.join("ssdp-boot-id"),
            source: std::io::Error::other(e.to_string()),
        })?,
        config_id: 1,
        server: ssdp::server_header(env!("CARGO_PKG_VERSION")),
    };
    let cfg = config.ssdp.clone();
    Ok(tokio::spawn(async move {
        if let Err(e) = ssdp::run_responder(cfg, vec![ad], shutdown.cancelled_owned()).await {
            tracing::warn!(error = %e, "SSDP responder stopped; connectors will not list this hub");
        }
    }))
}

/// The hub's status for `outpost status` and operators: uplink path, buffer depth, last upload.
pub const STATUS_FILE: &str = "status.json";

/// What `status.json` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct StatusFile {
    pub machine_id: String,
    pub pid: u32,
    /// `direct`, `connector:<id>` or `offline`.
    pub uplink: String,
    pub buffered: u64,
    pub last_upload: Option<chrono::DateTime<chrono::Utc>>,
    pub last_error: Option<String>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The managed sensor document version running; none before the first.
    #[serde(default)]
    pub managed_version: Option<u64>,
    /// Why the last managed document (stored or delivered) was not applied.
    #[serde(default)]
    pub managed_problem: Option<String>,
    /// Why the buffer refused its latest write (full or failing disk), until one succeeds.
    #[serde(default)]
    pub storage_error: Option<String>,
}

/// Rewrites the status file on every change, at most once a second, and at least every 10 s so
/// its age tells whether the hub is alive.
async fn write_status(
    path: PathBuf,
    machine_id: String,
    mut status: tokio::sync::watch::Receiver<uplink::UplinkStatus>,
    mut managed: tokio::sync::watch::Receiver<managed::ManagedStatus>,
    mut storage: tokio::sync::watch::Receiver<Option<String>>,
    shutdown: CancellationToken,
) {
    let (mut managed_open, mut storage_open) = (true, true);
    loop {
        let s = status.borrow_and_update().clone();
        let m = managed.borrow_and_update().clone();
        let storage_error = storage.borrow_and_update().clone();
        let file = StatusFile {
            machine_id: machine_id.clone(),
            pid: std::process::id(),
            uplink: s.path,
            buffered: s.buffered,
            last_upload: s.last_upload,
            last_error: s.last_error,
            updated_at: chrono::Utc::now(),
            managed_version: m.version,
            managed_problem: m.problem,
            storage_error,
        };
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(&file).expect("status serialises");
        if let Err(e) = std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &path)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write status file");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            r = status.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // The managed side may be gone before the hub stops; the file keeps being written.
            r = managed.changed(), if managed_open => managed_open = r.is_ok(),
            r = storage.changed(), if storage_open => {
                storage_open = r.is_ok();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What the uplink task needs besides the buffer.
struct UplinkParts {
    dir: PathBuf,
    key: Arc<outpost_shared::keys::KeyPair>,
    role: outpost_shared::model::Role,
    hostname: String,
    sensors: sensors::SensorHandle,
    config_path: Option<PathBuf>,
    /// The relay cards, so `relay.*` commands reach them (the executor checks `locked`).
    relays: Option<relay::Relays>,
    managed: Arc<managed::Managed>,
}

async fn run_uplink(
    buffer: Arc<dyn Storage>,
    transport: Arc<uplink::PathTransport>,
    cfg: uplink::UplinkConfig,
    identity: uplink::Identity,
    feed: Arc<uplink::Feed>,
    status: tokio::sync::watch::Sender<uplink::UplinkStatus>,
    stop: CancellationToken,
) {
    uplink::Uplink::with_status(buffer, transport, cfg, identity, feed, status).run(stop).await
}

/// The stored enrollment, or a new one made with the token (retried until it works or the hub
/// stops: readings keep buffering meanwhile). None when stopped first.
async fn enrolled(
    u: &uplink::UplinkConfig,
    direct: Option<&uplink::HttpTransport>,
    parts: &UplinkParts,
    stop: &CancellationToken,
) -> Option<trust::Enrollment> {
    let mut backoff =
        outpost_shared::backoff::Backoff::new(u.retry_min, u.retry_max, 0.5).expect("validated");
    loop {
        let attempt = async {
            if let Some(e) = trust::load(&parts.dir, &parts.key)? {
                return Ok(e);
            }
            let token = trust::token(u.enroll_token.as_deref(), &parts.dir)?;
            let mut failed = Vec::new();
            if let Some(cloud) = direct {
                match trust::enroll(
                    cloud.client(),
                    cloud.base(),
                    &parts.dir,
                    &parts.key,
                    &token,
                    parts.role,
                    &parts.hostname,
                    None,
                )
                .await
                {
                    Ok(e) => return Ok(e),
                    Err(e) => failed.push(format!("cloud: {e}")),
                }
            }
            // No cloud, or not reachable from here: a connector on the LAN passes it on.
            for url in enrollment_connectors(u).await {
                match trust::enroll_through_connector(
                    &url,
                    u.timeout,
                    &parts.dir,
                    &parts.key,
                    &token,
                    parts.role,
                    &parts.hostname,
                )
                .await
                {
                    Ok(e) => return Ok(e),
                    Err(e) => failed.push(format!("through {url}: {e}")),
                }
            }
            Err(trust::TrustError::Enroll(if failed.is_empty() {
                "no uplink.cloud, uplink.connector or connector found by SSDP to enroll through".into()
            } else {
                failed.join("; ")
            }))
        };
        match attempt.await {
            Ok(e) => return Some(e),
            Err(e) => {
                if backoff.attempts() == 0 {
                    tracing::error!(error = %e, "not enrolled yet; readings are buffered until enrollment succeeds");
                }
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// Connectors a hub not yet enrolled can try: the configured one, then those that answer SSDP.
async fn enrollment_connectors(u: &uplink::UplinkConfig) -> Vec<String> {
    let mut urls: Vec<String> = u.connector.iter().cloned().collect();
    if u.discover {
        match outpost_shared::ssdp::search(outpost_shared::ssdp::ST_CONNECTOR, u.discover_wait).await {
            Ok(found) => urls.extend(found.into_iter().map(|f| f.location)),
            Err(e) => tracing::warn!(error = %e, "SSDP search for a connector to enroll through failed"),
        }
    }
    urls.dedup();
    urls
}

pub fn system_hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "unknown-host".into())
}
