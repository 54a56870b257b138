//! The reference cloud, self-hostable: it takes batches from hubs (directly or through a
//! connector), stores each `(machine_id, seq)` once and keeps everything else it knows ([`store`]:
//! small traits, each with a sled engine, the default, and a PostgreSQL engine chosen by
//! `[storage] postgres`), serves the JSON API and a live dashboard ([`api`], [`dashboard`]) over
//! HTTPS, and folds old readings into hourly aggregates; with `[mail]` it mails alerts and
//! periodic reports ([`mail`]). The decisions live in [`trust`] and [`commands`], over the store's
//! traits. People sign in and act within their role per customer ([`people`]); sensors can be
//! managed from the cloud ([`managed`]). On PostgreSQL any number of cloud processes may share the database ([`nodes`]: wake-ups
//! and live events between them, once-only jobs on one of them). [`start`] brings it up and
//! returns a handle (tests use it); [`run`] is the role's entry point for the binary.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod mail;
pub mod managed;
pub mod nodes;
pub mod people;
pub mod silences;
pub mod store;
pub mod trust;

pub use config::CloudConfig;
pub use error::CloudError;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long open requests (and live-event streams) get to finish on shutdown.
const GRACE: Duration = Duration::from_secs(5);

/// A running cloud.
pub struct Cloud {
    pub addr: SocketAddr,
    /// Required as `Authorization: Bearer` on the API and the dashboard.
    pub admin_token: String,
    /// Makes enrollment tokens and signs receipts and commands.
    pub trust: trust::Trust,
    /// The authority hubs must trust to reach this cloud (`ca.pem`).
    pub ca_file: PathBuf,
    /// While no user exists: the one-time link that makes the first owner (`…/#setup=…`).
    pub setup_link: Option<String>,
    /// Whether this node runs the once-only jobs now (always on sled).
    pub leader: nodes::Leader,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), CloudError>>,
}

impl Cloud {
    /// `https://host:port` as hubs and browsers reach it on loopback.
    pub fn url(&self) -> String {
        url_of(self.addr)
    }

    /// Stops accepting, lets open requests finish within the grace period, flushes storage.
    pub async fn stop(self) -> Result<(), CloudError> {
        self.shutdown.cancel();
        self.task.await.unwrap_or(Ok(()))
    }

    /// Waits until the server ends by itself (a fatal error) or is stopped.
    pub async fn wait(&mut self) -> Result<(), CloudError> {
        (&mut self.task).await.unwrap_or(Ok(()))
    }
}

/// `https://host:port` of a listening address, loopback for an unspecified one.
fn url_of(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    format!("https://{host}:{}", addr.port())
}

/// Runs the cloud until `shutdown` completes.
pub async fn run(config: CloudConfig, shutdown: impl Future<Output = ()>) -> Result<(), CloudError> {
    let setup_valid = config.people.setup_valid;
    let mut cloud = start(config).await?;
    tracing::info!(url = %cloud.url(), "cloud listening");
    if let Some(link) = &cloud.setup_link {
        // On the terminal (or the service's journal) only, never in a file of the data directory:
        // whoever opens it first becomes the owner, so it works once and for minutes.
        eprintln!(
            "No user yet. Make the first owner with `outpost user add --owner NAME` on this host, or open \
             this one-time link within {} (a restart makes a new one):\n  {link}",
            humantime::format_duration(setup_valid)
        );
    }
    tokio::select! {
        _ = shutdown => cloud.stop().await,
        r = cloud.wait() => r,
    }
}

/// Opens storage, makes certificate and tokens on first start, binds and serves.
pub async fn start(config: CloudConfig) -> Result<Cloud, CloudError> {
    // Storage first: a database that cannot be reached stops the start before anything is made.
    let engines = store::Engines::open(&config).await?;
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| CloudError::Io { path: dir.clone(), source })?;
    // The signing key and the certificate are files in the data directory on every engine: a
    // copy of the database alone must not be able to sign commands.
    let (cert, key, ca_file) = match &config.tls {
        Some(t) => (t.cert.clone(), t.key.clone(), t.cert.clone()),
        None => {
            let p =
                outpost_shared::tls::ensure_self_signed(&dir.join("tls"), &config.names, "outpost cloud")?;
            (p.cert, p.key, p.ca)
        }
    };
    let tls = outpost_shared::tls::server_config(&cert, &key)?;
    let admin_token = ensure_token(&dir.join("admin-token"))?;
    let trust = trust::Trust::open(dir, engines.trust.clone())?.with_session_lifetime(config.machine_session);
    let commands = commands::Commands::new(engines.commands.clone());
    let store = engines.readings.clone();
    let people = people::People::new(engines.people.clone(), config.people.clone())?;

    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|source| CloudError::Listen { addr: config.listen, source })?;
    listener.set_nonblocking(true).map_err(|source| CloudError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| CloudError::Listen { addr: config.listen, source })?;

    let shutdown = CancellationToken::new();
    let setup_link =
        people.setup_secret(chrono::Utc::now()).await?.map(|s| format!("{}/#setup={s}", url_of(addr)));
    // On PostgreSQL any number of nodes may share the database: wake-ups and live events cross
    // between them, and the once-only jobs run where the jobs lock is held.
    let nodes = engines.postgres.clone().map(nodes::Nodes::new);
    let (commands, leader) = match &nodes {
        Some(n) => (commands.with_announce(n.announce()), n.spawn_leadership(shutdown.clone())),
        None => (commands, nodes::Leader::alone()),
    };
    // After the wake-ups are wired: a document saved on this node reaches a hub polling another.
    let managed = managed::ManagedSensors::new(engines.managed.clone(), trust.clone(), commands.clone());
    let silences = silences::Silences::open(engines.silences.clone(), trust.clone()).await?;
    let silences_refresh = silences.spawn_refresh(shutdown.clone());

    let state = api::AppState::new(
        store.clone(),
        admin_token.clone(),
        trust.clone(),
        commands.clone(),
        people.clone(),
        Arc::new(config.clone()),
    )
    .with_managed(managed.clone())
    .with_silences(silences.clone());
    let state = match &config.mail {
        Some(mail) => state.with_alerts(mail::start(mail, &engines, &trust, &silences, &leader, &shutdown)?),
        None => state,
    };
    let state = match &nodes {
        Some(n) => {
            n.spawn_listener(
                commands.clone(),
                store.clone(),
                state.events(),
                engines.pg_outbox.clone(),
                shutdown.clone(),
            );
            state.with_nodes(n.clone())
        }
        None => state,
    };
    let app = api::router(state);
    let handle = axum_server::Handle::new();
    // Timeouts, connection cap and load shedding: the same setup as a connector's LAN API.
    let limits = config.server.clone();
    let h = handle.clone();
    let server = async move { outpost_shared::http_server::serve_tls(listener, tls, app, &limits, h).await };

    let job_leader = leader.clone();
    let redelivery = managed::status::spawn_redelivery(managed, leader.clone(), shutdown.clone());
    let compactor = spawn_compactor(
        store.clone(),
        trust.clone(),
        commands.clone(),
        people.clone(),
        config.clone(),
        leader,
        shutdown.clone(),
    );
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let h = handle.clone();
        let watcher = tokio::spawn(async move {
            stop.cancelled().await;
            h.graceful_shutdown(Some(GRACE));
        });
        let served = server.await;
        watcher.abort();
        let _ = compactor.await;
        let _ = redelivery.await;
        let _ = silences_refresh.await;
        store.commit().await?;
        served.map_err(|source| CloudError::Listen { addr, source })
    });
    Ok(Cloud { addr, admin_token, trust, ca_file, setup_link, leader: job_leader, shutdown, task })
}

/// The retention pass, every `compact_every`: readings folded and expired, and the cloud's other
/// records (commands, audit, tokens) aged out, so nothing it keeps grows without bound. Runs
/// only while this node is the `leader` (one node at a time on a shared database).
fn spawn_compactor(
    store: store::Store,
    trust: trust::Trust,
    commands: commands::Commands,
    people: people::People,
    config: CloudConfig,
    leader: nodes::Leader,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.retention.compact_every);
        // A pass falls due at every tick and runs once this node is the leader: a node that
        // takes over (or has just started) runs the pass that was due, without waiting a period.
        let mut due = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => due = true,
                _ = tokio::time::sleep(nodes::TAKE_OVER), if due => {}
            }
            if !due || !leader.holds() {
                continue;
            }
            due = false;
            let (s, t, c, p) = (store.clone(), trust.clone(), commands.clone(), people.clone());
            let r = config.retention.clone();
            let pass = async move {
                let now = chrono::Utc::now();
                let readings = s.compact(now, r.raw, r.hourly).await?;
                let sessions = p.prune(now).await?;
                let tokens = t.prune_tokens(now).await? + sessions;
                let (cmds, audit) = c.prune(now, r.commands, r.audit).await?;
                Ok::<_, CloudError>((readings, tokens, cmds, audit))
            };
            match pass.await {
                Ok((out, tokens, cmds, audit)) => {
                    if out != store::CompactOutcome::default() || tokens + cmds + audit > 0 {
                        tracing::info!(
                            folded = out.folded,
                            expired = out.hourly_expired,
                            latest_expired = out.latest_expired,
                            unattached_expired = out.unattached_expired,
                            tokens,
                            commands = cmds,
                            audit,
                            "retention pass"
                        )
                    }
                }
                Err(e) => tracing::error!(error = %e, "retention pass failed"),
            }
        }
    })
}

/// Reads a token file, or makes one (256 random bits, hex) readable by the owner alone.
fn ensure_token(path: &Path) -> Result<String, CloudError> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| CloudError::Io { path: path.to_path_buf(), source: std::io::Error::other(e) })?;
    let token = hex::encode(raw);
    outpost_shared::tls::write_file(path, token.as_bytes(), 0o600)?;
    Ok(token)
}
