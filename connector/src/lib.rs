//! The connector: the one machine of a customer network that talks to the cloud. Hubs find it by
//! SSDP ([`outpost_shared::ssdp`]) and post their batches to its LAN API ([`lan`]), which takes
//! custody of each batch (durable in its own buffer before it acknowledges) and pushes back with
//! 503 + Retry-After when full, so data waits on the hubs. The [`forward`] task carries many hubs'
//! batches per request to the cloud over outbound HTTPS, byte for byte as the hubs sent them. An
//! embedded hub monitors the connector's own machine through the same LAN API.
//!
//! Nothing unverified is taken: the intake checks each batch's signature against the keys the
//! cloud lists for this network ([`hub_keys`]) and its timestamps against the accepted window
//! before it counts, stores or forwards it. A batch leaves the buffer only on the cloud's verdict:
//! stored, or refused for good, and then into the counted [`quarantine`]; on any other answer it
//! stays and is sent again, behind the other hubs' batches. The hubs' command long-polls reach
//! the cloud together, in one upstream request for all of them ([`polls`]).
#![forbid(unsafe_code)]

pub mod config;
pub mod forward;
pub mod hub_keys;
pub mod lan;
pub mod mail;
mod polls;
pub mod quarantine;
mod record;
#[cfg(test)]
mod tests;

pub use config::ConnectorConfig;

use outpost_shared::buffer::{OpenOutcome, SledBuffer, Storage, WhenFull};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error(transparent)]
    Buffer(#[from] outpost_shared::buffer::BufferError),
    #[error(transparent)]
    Tls(#[from] outpost_shared::tls::TlsError),
    #[error(transparent)]
    Hub(#[from] outpost_sensorhub::HubError),
    #[error(transparent)]
    Ssdp(#[from] outpost_shared::ssdp::SsdpError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}; is another connector running?")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("mail: {0}")]
    Mail(String),
    #[error("quarantine: {0}")]
    Quarantine(#[from] quarantine::QuarantineError),
}

/// What the LAN side and the forwarder share.
pub(crate) struct Shared {
    pub machine_id: String,
    pub key: Arc<outpost_shared::keys::KeyPair>,
    /// The cloud's base URL and a client for it, for requests passed through for hubs.
    pub cloud: Option<(reqwest::Client, String)>,
    /// The connector's own machine session with the cloud (forwards, polls, key lists), set once
    /// enrolled; until then requests are signed with the machine key. Hub requests passed
    /// through keep their hubs' signatures: the connector cannot make or read those.
    pub session: std::sync::OnceLock<Arc<outpost_shared::keys::SessionClient>>,
    pub buffer: Arc<dyn Storage>,
    pub quota: u64,
    pub retry_after: Duration,
    /// Bytes each hub has in the buffer: the basis of the fair share.
    pub per_hub: Mutex<HashMap<String, u64>>,
    /// Hubs that sent through this connector recently, by machine id (for the unattached list).
    pub attached: Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>,
    pub forward_wake: tokio::sync::Notify,
    pub unattached: Mutex<Vec<outpost_shared::model::UnattachedHub>>,
    /// The hubs' latest sensor states and the outage alerts, with `[mail]`.
    pub watch: Option<Arc<mail::Watch>>,
    /// Held shared by an intake from taking a batch into custody until its outage notes are
    /// written, and exclusively by the forwarder while it picks batches and notes: a forward never
    /// carries a batch without the notes about its changes (see [`mail::outage`]).
    pub custody: tokio::sync::RwLock<()>,
    /// Whether hubs are being told to hold their data (so the log says so once, not per request).
    pub pushing_back: AtomicBool,
    /// The keys hub batches are checked against, and the cloud's limits.
    pub hub_keys: hub_keys::HubKeys,
    /// Batches put aside for good, counted.
    pub quarantine: quarantine::Quarantine,
    /// The reading timestamps taken (`[ingest]`).
    pub ingest: config::IngestConfig,
    /// The hubs' command long-polls, carried upstream together.
    pub polls: polls::Polls,
    /// How many hub batches are taken in at once.
    pub intake: lan::IntakeGates,
}

/// A running connector.
pub struct Connector {
    pub machine_id: String,
    /// The LAN API address actually bound.
    pub addr: SocketAddr,
    /// The CA hubs must trust for the LAN API.
    pub ca_file: PathBuf,
    /// Where the mail command gateway listens, when enabled.
    pub mail_commands: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    hub: Option<outpost_sensorhub::Hub>,
    buffer: Arc<dyn Storage>,
}

impl Connector {
    /// How processes on this machine reach the LAN API: `https://127.0.0.1:<port>` when it
    /// listens on every address, else the address it listens on.
    pub fn loopback_url(&self) -> String {
        local_url(self.addr)
    }

    /// What the connector holds for the cloud right now.
    pub fn buffered(&self) -> outpost_shared::buffer::BufferStats {
        self.buffer.stats()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        if let Some(h) = self.hub {
            h.join().await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Runs the connector until `shutdown` completes.
pub async fn run(config: ConnectorConfig, shutdown: impl Future<Output = ()>) -> Result<(), ConnectorError> {
    let c = start(config).await?;
    tracing::info!(machine_id = %c.machine_id, lan = %c.addr, "connector running");
    shutdown.await;
    c.stop().await;
    Ok(())
}

pub async fn start(config: ConnectorConfig) -> Result<Connector, ConnectorError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| ConnectorError::Io { path: dir.clone(), source })?;
    let key = outpost_sensorhub::trust::machine_key(&dir.join(outpost_sensorhub::trust::KEY_FILE))
        .map_err(outpost_sensorhub::HubError::from)?;
    let machine_id = key.machine_id().to_string();
    let (buffer, outcome) = SledBuffer::open(&dir.join("buffer"), config.buffer.quota, WhenFull::Reject)?;
    if let OpenOutcome::Recovered { moved_to, reason } = outcome {
        tracing::error!(moved_to = %moved_to.display(), %reason, "the connector's buffer was unreadable and was moved aside");
    }
    let buffer: Arc<dyn Storage> = Arc::new(buffer);
    let per_hub = record::per_hub_bytes(buffer.as_ref())?;

    let lan_ifaces = outpost_shared::ssdp::lan_interfaces(&config.ssdp.responder.interfaces);
    let mut names = config.names.clone();
    names.extend(lan_ifaces.iter().map(|i| i.addr.to_string()));
    // The embedded hub reaches the LAN API on loopback or on the one address it listens on.
    names.push(local_url_host(config.listen).to_string());
    names.sort();
    names.dedup();
    let certs = outpost_shared::tls::ensure_self_signed(&dir.join("tls"), &names, "outpost connector")?;
    let tls = outpost_shared::tls::server_config(&certs.cert, &certs.key)?;

    let cloud_client =
        outpost_shared::tls::https_client(config.cloud.ca_file.as_deref(), Duration::from_secs(40))?;
    let shutdown = CancellationToken::new();
    let hostname = outpost_sensorhub::system_hostname();
    let mail = mail::start(&config, &key, dir, &hostname, &shutdown)?;
    let shared = Arc::new(Shared {
        machine_id: machine_id.clone(),
        key: key.clone(),
        cloud: config.cloud.url.clone().map(|u| (cloud_client, u.trim_end_matches('/').to_string())),
        session: std::sync::OnceLock::new(),
        buffer: buffer.clone(),
        quota: config.buffer.quota,
        retry_after: config.buffer.retry_after,
        per_hub: Mutex::new(per_hub),
        attached: Mutex::new(HashMap::new()),
        forward_wake: tokio::sync::Notify::new(),
        unattached: Mutex::new(Vec::new()),
        watch: mail.as_ref().map(|m| m.watch.clone()),
        custody: tokio::sync::RwLock::new(()),
        pushing_back: AtomicBool::new(false),
        hub_keys: hub_keys::HubKeys::new(dir, key.machine_id().clone(), config.cloud.keys_refresh_min),
        quarantine: quarantine::Quarantine::open(dir, config.buffer.quarantine_quota)?,
        ingest: config.ingest.clone(),
        polls: polls::Polls::default(),
        intake: lan::IntakeGates::default(),
    });
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|source| ConnectorError::Listen { addr: config.listen, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ConnectorError::Listen { addr: config.listen, source })?;
    let addr =
        listener.local_addr().map_err(|source| ConnectorError::Listen { addr: config.listen, source })?;
    let mail_commands = match &mail {
        Some(side) => mail::start_gateway(&config, side, &key, tls.clone(), &hostname, &shutdown).await?,
        None => None,
    };
    let mut tasks = vec![
        lan::serve(listener, tls, shared.clone(), shutdown.clone()),
        tokio::spawn(polls::run(shared.clone(), shutdown.clone())),
    ];

    let client = outpost_shared::tls::https_client(config.cloud.ca_file.as_deref(), config.cloud.timeout)?;
    let lan_cert = outpost_shared::keys::CertFingerprint::of_pem_file(&certs.cert)?.to_string();
    tasks.push(tokio::spawn(forward::run(
        shared.clone(),
        client,
        config.cloud.clone(),
        forward::Enroll { dir: dir.clone(), lan_cert, hostname: hostname.clone() },
        shutdown.clone(),
    )));

    if config.ssdp.advertise || config.ssdp.search_hubs {
        // `{ip}` becomes the address of the interface each answer leaves by.
        let location = config
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("https://{}:{}", outpost_shared::ssdp::LOCATION_IP, addr.port()));
        tasks.extend(discovery(&config, dir, &machine_id, location, shared.clone(), shutdown.clone())?);
    }

    let hub = if config.monitor_self {
        let hub_dir = dir.join("hub");
        std::fs::create_dir_all(&hub_dir)
            .map_err(|source| ConnectorError::Io { path: hub_dir.clone(), source })?;
        // The embedded hub is this machine: same key (so the same identity and enrollment),
        // reported with the connector role.
        let hub_cfg = outpost_sensorhub::HubConfig {
            data_dir: hub_dir,
            key_file: Some(dir.join(outpost_sensorhub::trust::KEY_FILE)),
            role: outpost_shared::model::Role::Connector,
            sensors: config.sensors.clone(),
            managed: config.managed.clone(),
            uplink: outpost_sensorhub::uplink::UplinkConfig {
                connector: Some(local_url(addr)),
                cloud: config.cloud.url.clone(),
                ca_file: config.cloud.ca_file.clone(),
                discover: false,
                advertise: false,
                ..Default::default()
            },
            ..Default::default()
        };
        Some(outpost_sensorhub::start(hub_cfg, shutdown.child_token()).await?)
    } else {
        None
    };
    Ok(Connector { machine_id, addr, ca_file: certs.ca, mail_commands, shutdown, tasks, hub, buffer })
}

fn local_url_host(listen: SocketAddr) -> std::net::IpAddr {
    match listen.ip() {
        ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip => ip,
    }
}

fn local_url(addr: SocketAddr) -> String {
    format!("https://{}", SocketAddr::new(local_url_host(addr), addr.port()))
}

/// The SSDP side: announce this connector, and look for hubs that are not attached.
fn discovery(
    config: &ConnectorConfig,
    dir: &Path,
    machine_id: &str,
    location: String,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ConnectorError> {
    let mut tasks = Vec::new();
    if config.ssdp.advertise {
        let ad = outpost_shared::ssdp::Advertisement {
            st: outpost_shared::ssdp::ST_CONNECTOR.into(),
            uuid: outpost_shared::ssdp::uuid_for_machine(machine_id),
            location,
            boot_id: outpost_shared::ssdp::next_boot_id(&dir.join("ssdp-boot-id"))?,
            config_id: 1,
            server: outpost_shared::ssdp::server_header(env!("CARGO_PKG_VERSION")),
        };
        let cfg = config.ssdp.responder.clone();
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = outpost_shared::ssdp::run_responder(cfg, vec![ad], stop.cancelled_owned()).await {
                tracing::error!(error = %e, "SSDP responder stopped; hubs cannot discover this connector");
            }
        }));
    }
    if config.ssdp.search_hubs {
        let every = config.ssdp.search_every;
        tasks.push(tokio::spawn(async move {
            loop {
                match outpost_shared::ssdp::search(outpost_shared::ssdp::ST_SENSORHUB, Duration::from_secs(2))
                    .await
                {
                    Ok(found) => forward::note_found_hubs(&shared, found),
                    Err(e) => tracing::warn!(error = %e, "SSDP search for hubs failed"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        }));
    }
    Ok(tasks)
}
