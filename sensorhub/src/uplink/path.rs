//! Which way readings leave the hub: its known connector (remembered on disk) → connectors found
//! by SSDP → the cloud directly once the connector has been unreachable for `fallback_after` (when
//! allowed) → offline, buffering. On the direct path it re-probes connectors every
//! `reprobe_every` and switches back as soon as one answers.
//!
//! All paths speak the same API, so a switch is a change of base URL, not of code path.
//!
//! The path state sits behind one lock that command polls also take ([`PathTransport::current`]),
//! so it is never held across network I/O (an SSDP search, a probe, an upload): a flood of fake
//! SSDP answers or a candidate that never answers must not stall uploads or commands. For the
//! same reason the re-probe of the direct path runs as a task of its own, one at a time, while
//! readings keep going to the cloud: a search into a flood, then probes of candidates that never
//! answer, take seconds. Discovered connectors are checked against the receipt before any probe
//! is spent on them, and at most [`MAX_PROBES_PER_SEARCH`] are probed after one search.

use super::{HttpTransport, SendError, Transport, UplinkConfig};
use crate::trust::Enrollment;
use outpost_shared::keys::{pinned_https_client, AuthorizedConnector, CertFingerprint, KeyPair};
use outpost_shared::model::{Batch, BatchAck};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Where the hub remembers the connector that last took its readings.
pub const REMEMBERED_FILE: &str = "connector.json";
/// How long a connector candidate gets to say who it is.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(3);
/// Discovery is not repeated more often than this while the connectors it found stay unreachable.
const REDISCOVER_EVERY: Duration = Duration::from_secs(20);
/// After a search nobody answered, the next may come this soon: an answer can be lost (or come
/// after the search stopped listening), and a hub without a connector has nowhere else to go.
const RESEARCH_EMPTY_AFTER: Duration = Duration::from_secs(3);
/// The receipt (the authorised connectors) is not refreshed more often than this.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Most discovered connectors probed after one search: each probe may take [`IDENTIFY_TIMEOUT`].
pub(super) const MAX_PROBES_PER_SEARCH: usize = 4;

/// A connector URL to try, and the authorised connector its SSDP answer claims to be (then only
/// that connector's certificate is tried).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Candidate {
    pub(super) url: String,
    pub(super) claims: Option<AuthorizedConnector>,
}

/// The authorised connectors by the SSDP uuid each advertises.
pub(super) fn by_uuid(authorised: &[AuthorizedConnector]) -> HashMap<String, AuthorizedConnector> {
    authorised
        .iter()
        .map(|c| (outpost_shared::ssdp::uuid_for_machine(c.machine_id.as_str()), c.clone()))
        .collect()
}

/// Whether an SSDP answer may take a place in the search: one that names an id must name an
/// authorised connector; one without an id is left to the probe (and the caps).
pub(super) fn wanted(
    f: &outpost_shared::ssdp::Found,
    by_uuid: &HashMap<String, AuthorizedConnector>,
) -> bool {
    f.uuid.as_ref().is_none_or(|u| by_uuid.contains_key(u))
}

/// The discovered candidates worth a probe, best first, at most [`MAX_PROBES_PER_SEARCH`].
pub(super) fn to_probe(
    found: Vec<outpost_shared::ssdp::Found>,
    by_uuid: &HashMap<String, AuthorizedConnector>,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = found
        .into_iter()
        .filter(|f| wanted(f, by_uuid))
        .map(|f| Candidate { claims: f.uuid.as_ref().and_then(|u| by_uuid.get(u).cloned()), url: f.location })
        .collect();
    // Answers that name an authorised connector before those that name none.
    out.sort_by_key(|c| c.claims.is_none());
    out.truncate(MAX_PROBES_PER_SEARCH);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Connector,
    Direct,
}

/// The identity a connector shows on `GET /v1/connector`.
#[derive(Debug, serde::Deserialize)]
struct ConnectorIdentity {
    machine_id: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Remembered {
    url: String,
}

struct State {
    mode: Mode,
    connector: Option<HttpTransport>,
    failing_since: Option<Instant>,
    /// No SSDP search before this (none yet: search at once).
    next_discovery: Option<Instant>,
    next_probe: Instant,
    /// When to ask the cloud again whether the current connector is still authorised.
    next_recheck: Instant,
}

/// A [`Transport`] that picks the path for every batch.
/// How commands reach the hub right now, and how its requests for them are authenticated.
pub struct CommandPath {
    pub client: reqwest::Client,
    pub base: String,
    /// The session command polls go in (`None`: signed with the machine key).
    pub poll_session: Option<Arc<outpost_shared::keys::SessionClient>>,
    /// The session results go in (`None`: signed with the machine key).
    pub result_session: Option<Arc<outpost_shared::keys::SessionClient>>,
}

pub struct PathTransport {
    cfg: UplinkConfig,
    key: Arc<KeyPair>,
    /// The connectors the cloud authorised for this hub's network, with their certificates.
    enrollment: std::sync::Mutex<Enrollment>,
    last_refresh: std::sync::Mutex<Option<Instant>>,
    /// One client per authorised connector certificate: each trusts exactly that certificate.
    pinned: std::sync::Mutex<HashMap<CertFingerprint, reqwest::Client>>,
    data_dir: PathBuf,
    direct: Option<HttpTransport>,
    /// The machine session with the cloud for what a connector passes through unchanged (command
    /// results): end to end, opened through the connector, which relays the login and the MACs
    /// but can read or make neither. A session of its own, so a connector without the relay
    /// (an older version) sends only this path back to signatures, never the direct one.
    relayed: Arc<outpost_shared::keys::SessionClient>,
    remember: PathBuf,
    state: Mutex<State>,
    last_path: std::sync::Mutex<String>,
    /// This transport, for the re-probe task it starts from [`Transport::send`].
    me: Weak<PathTransport>,
    /// A re-probe task is running: never more than one.
    probing: AtomicBool,
}

impl PathTransport {
    pub fn new(
        cfg: UplinkConfig,
        key: Arc<KeyPair>,
        enrollment: Enrollment,
        direct: Option<HttpTransport>,
        data_dir: PathBuf,
    ) -> Arc<Self> {
        let wants_connector = cfg.connector.is_some() || cfg.discover;
        let mode = if wants_connector || direct.is_none() { Mode::Connector } else { Mode::Direct };
        // Straight to the cloud, uploads and command polls share one machine session, sealed to
        // the cloud key pinned at enrollment.
        let session =
            Arc::new(outpost_shared::keys::SessionClient::new(key.clone(), enrollment.cloud_key.clone()));
        let direct = direct.map(|d| d.with_session(session));
        let relayed =
            Arc::new(outpost_shared::keys::SessionClient::new(key.clone(), enrollment.cloud_key.clone()));
        Arc::new_cyclic(|me| PathTransport {
            key,
            enrollment: std::sync::Mutex::new(enrollment),
            last_refresh: std::sync::Mutex::new(None),
            pinned: std::sync::Mutex::new(HashMap::new()),
            direct,
            relayed,
            remember: data_dir.join(REMEMBERED_FILE),
            data_dir,
            state: Mutex::new(State {
                mode,
                connector: None,
                // Without any connector known yet, the fallback clock runs from start.
                failing_since: None,
                next_discovery: None,
                next_probe: Instant::now() + cfg.reprobe_every,
                next_recheck: Instant::now() + cfg.recheck_every,
            }),
            last_path: std::sync::Mutex::new("offline".into()),
            cfg,
            me: me.clone(),
            probing: AtomicBool::new(false),
        })
    }

    /// Starts looking for a connector in the background, unless a look is already under way; the
    /// path switches back to the connector as soon as one answers.
    fn start_reprobe(&self) {
        let Some(me) = self.me.upgrade() else { return };
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            if let Some(c) = me.find_connector(true).await {
                tracing::info!(to = %c.path(), "a connector answers again; leaving the direct path");
                let mut st = me.state.lock().await;
                st.connector = Some(c);
                st.mode = Mode::Connector;
                st.failing_since = None;
            }
            me.probing.store(false, Ordering::Release);
        });
    }

    /// Connector URLs to try, best first: configured, remembered, then discovered by SSDP. The
    /// search runs without the path lock; its rate limit is taken and set under it.
    async fn candidates(&self, discover: bool) -> Vec<Candidate> {
        let mut urls = Vec::new();
        if let Some(u) = &self.cfg.connector {
            urls.push(Candidate { url: u.clone(), claims: None });
        }
        if let Some(r) =
            std::fs::read(&self.remember).ok().and_then(|b| serde_json::from_slice::<Remembered>(&b).ok())
        {
            urls.push(Candidate { url: r.url, claims: None });
        }
        if discover && self.cfg.discover && self.discovery_due().await {
            let authorised = by_uuid(&self.enrollment.lock().unwrap().receipt.connectors);
            let unwanted = std::sync::atomic::AtomicUsize::new(0);
            let found = outpost_shared::ssdp::search_where(
                outpost_shared::ssdp::ST_CONNECTOR,
                self.cfg.discover_wait,
                |f| {
                    let ok = wanted(f, &authorised);
                    if !ok {
                        unwanted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    ok
                },
            )
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "SSDP search for connectors failed");
                Vec::new()
            });
            let pause = if found.is_empty() { RESEARCH_EMPTY_AFTER } else { REDISCOVER_EVERY };
            self.state.lock().await.next_discovery = Some(Instant::now() + pause);
            let unwanted = unwanted.into_inner();
            if found.is_empty() && unwanted > 0 {
                // Perhaps a connector enrolled after our receipt: ask the cloud (rate-limited),
                // so the next search can take it.
                tracing::info!(unwanted, "only connectors this hub's receipt does not list answered");
                self.refresh_receipt(None).await;
            }
            for c in to_probe(found, &authorised) {
                tracing::info!(location = %c.url, connector = ?c.claims.as_ref().map(|a| a.machine_id.to_string()), "connector found by SSDP");
                urls.push(c);
            }
        }
        // Each candidate once, best first (a configured URL may also be the remembered one, and
        // SSDP answers repeat on every interface).
        let mut seen = std::collections::HashSet::new();
        urls.retain(|c| seen.insert(c.url.trim_end_matches('/').to_string()));
        urls
    }

    /// Whether a search may run now; if so, no other may start before it has finished.
    async fn discovery_due(&self) -> bool {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        if st.next_discovery.is_some_and(|t| now < t) {
            return false;
        }
        st.next_discovery = Some(now + REDISCOVER_EVERY);
        true
    }

    /// Asks a candidate who it is, trusting only the certificates of connectors the cloud
    /// authorised; a transport labelled `connector:<id>` if it is one of them. A connector that is
    /// not authorised (a rogue SSDP answer, or one enrolled elsewhere) gets nothing.
    async fn identify(&self, url: &str, claims: Option<&AuthorizedConnector>) -> Option<HttpTransport> {
        let base = url.trim_end_matches('/');
        for attempt in 0..2 {
            let authorised = match claims {
                Some(c) => vec![c.clone()],
                None => self.enrollment.lock().unwrap().receipt.connectors.clone(),
            };
            for c in &authorised {
                let client = self.pinned_client(c.lan_cert);
                let resp = client.get(format!("{base}/v1/connector")).timeout(IDENTIFY_TIMEOUT).send().await;
                let Ok(r) = resp else { continue };
                let Ok(who) = r.json::<ConnectorIdentity>().await else { continue };
                if who.machine_id == c.machine_id.as_str() {
                    let label = format!("connector:{}", who.machine_id);
                    return Some(HttpTransport::new(client, base, self.key.clone(), label));
                }
                tracing::warn!(%url, claims = %who.machine_id, "connector presents another connector's certificate; refused");
            }
            // Perhaps the connector was enrolled after our receipt: ask the cloud once.
            if claims.is_some() || (attempt == 0 && !self.refresh_receipt(None).await) {
                break;
            }
        }
        tracing::warn!(%url, authorised = self.enrollment.lock().unwrap().receipt.connectors.len(),
            "connector is not authorised by the cloud for this network (its certificate matches none the cloud lists); sending it no readings");
        None
    }

    fn pinned_client(&self, fp: CertFingerprint) -> reqwest::Client {
        let mut pinned = self.pinned.lock().unwrap();
        pinned
            .entry(fp)
            .or_insert_with(|| {
                pinned_https_client(fp, self.cfg.timeout).expect("a pinned TLS client can always be built")
            })
            .clone()
    }

    /// Fetches a fresh receipt from the cloud (rate-limited); true when it was refreshed. Asked
    /// directly when the hub may, else through `via` (the connector in use): the receipt is signed
    /// by the cloud, so a connector on the way can withhold it but not forge it.
    async fn refresh_receipt(&self, via: Option<&HttpTransport>) -> bool {
        let Some(path) = self.direct.as_ref().or(via) else { return false };
        {
            let mut last = self.last_refresh.lock().unwrap();
            if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let current = self.enrollment.lock().unwrap().clone();
        match crate::trust::refresh(path.client(), path.base(), &self.data_dir, &self.key, &current).await {
            Ok(e) => {
                *self.enrollment.lock().unwrap() = e;
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot refresh the enrollment receipt");
                false
            }
        }
    }

    /// Whether the receipt still lists the connector behind `c` (its path is `connector:<id>`).
    fn still_authorised(&self, c: &HttpTransport) -> bool {
        let path = c.path();
        let id = path.strip_prefix("connector:").unwrap_or_default();
        self.enrollment.lock().unwrap().receipt.connectors.iter().any(|a| a.machine_id.as_str() == id)
    }

    /// Where commands are fetched from right now: the path readings take.
    pub async fn current(&self) -> Option<CommandPath> {
        let st = self.state.lock().await;
        match (st.mode, &st.connector, &self.direct) {
            // The connector checks a hub's poll itself (against its network's keys) before it
            // carries it upstream, so the poll is signed; the result goes through to the cloud
            // unchanged, so it can travel in the hub's own session with the cloud.
            (Mode::Connector, Some(c), _) => Some(CommandPath {
                client: c.client().clone(),
                base: c.base().to_string(),
                poll_session: None,
                result_session: Some(self.relayed.clone()),
            }),
            (_, _, Some(d)) if st.mode == Mode::Direct || st.connector.is_none() => Some(CommandPath {
                client: d.client().clone(),
                base: d.base().to_string(),
                poll_session: d.session().cloned(),
                result_session: d.session().cloned(),
            }),
            _ => None,
        }
    }

    /// The session relayed through connectors (see the field), for tests and logs.
    pub fn relayed_session(&self) -> &Arc<outpost_shared::keys::SessionClient> {
        &self.relayed
    }

    async fn find_connector(&self, discover: bool) -> Option<HttpTransport> {
        for c in self.candidates(discover).await {
            if let Some(t) = self.identify(&c.url, c.claims.as_ref()).await {
                return Some(t);
            }
        }
        None
    }

    fn remember(&self, base: &str) {
        let known =
            std::fs::read(&self.remember).ok().and_then(|b| serde_json::from_slice::<Remembered>(&b).ok());
        if known.is_some_and(|k| k.url == base) {
            return;
        }
        let json = serde_json::to_vec(&Remembered { url: base.to_string() }).expect("serialises");
        let tmp = self.remember.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &self.remember)) {
            tracing::warn!(error = %e, "cannot remember the connector");
        }
    }

    fn set_path(&self, p: String) {
        *self.last_path.lock().unwrap() = p;
    }
}

impl Transport for PathTransport {
    async fn send(&self, batch: &mut Batch) -> Result<BatchAck, SendError> {
        let now = Instant::now();
        // Decide under the lock, then let go of it for every search, probe and upload.
        let (probe_due, recheck) = {
            let mut st = self.state.lock().await;
            let probe_due = st.mode == Mode::Direct
                && now >= st.next_probe
                && (self.cfg.connector.is_some() || self.cfg.discover);
            if probe_due {
                st.next_probe = now + self.cfg.reprobe_every;
            }
            let mut recheck = None;
            if st.mode == Mode::Connector && now >= st.next_recheck {
                st.next_recheck = now + self.cfg.recheck_every;
                recheck = st.connector.clone();
            }
            (probe_due, recheck)
        };
        if probe_due {
            // This batch goes directly meanwhile; a later one takes the connector once found.
            self.start_reprobe();
        }
        if let Some(c) = recheck {
            if self.refresh_receipt(Some(&c)).await && !self.still_authorised(&c) {
                tracing::warn!(connector = %c.path(), url = %c.base(),
                    "the cloud no longer authorises this connector (revoked); sending it nothing more");
                let mut st = self.state.lock().await;
                if st.connector.as_ref().is_some_and(|x| x.base() == c.base()) {
                    st.connector = None;
                }
            }
        }
        let (mode, connector) = {
            let st = self.state.lock().await;
            (st.mode, st.connector.clone())
        };
        if mode == Mode::Connector {
            let connector = match connector {
                Some(c) => Some(c),
                None => {
                    let found = self.find_connector(true).await;
                    if let Some(c) = &found {
                        self.state.lock().await.connector = Some(c.clone());
                    }
                    found
                }
            };
            let mut last_err = String::from("no connector found");
            if let Some(c) = connector {
                match c.send(batch).await {
                    Ok(ack) => {
                        self.state.lock().await.failing_since = None;
                        self.remember(c.base());
                        self.set_path(c.path());
                        return Ok(ack);
                    }
                    // Alive but full or refusing: the data waits here; no fallback.
                    Err(
                        e @ (SendError::Busy(_)
                        | SendError::Refused { .. }
                        | SendError::TooLarge(_)
                        | SendError::Unauthorised { .. }
                        | SendError::Storage(_)),
                    ) => return Err(e),
                    Err(SendError::Unreachable(e)) => {
                        last_err = e;
                        // Another connector may have taken over: look again (rate-limited).
                        if let Some(other) = self.find_connector(true).await {
                            if other.base() != c.base() {
                                tracing::info!(from = %c.base(), to = %other.base(), "switching connector");
                                self.state.lock().await.connector = Some(other);
                            }
                        }
                    }
                }
            }
            let mut st = self.state.lock().await;
            let since = *st.failing_since.get_or_insert(now);
            if self.direct.is_none()
                || !self.cfg.allow_direct
                || now.duration_since(since) < self.cfg.fallback_after
            {
                return Err(SendError::Unreachable(format!("connector unreachable: {last_err}")));
            }
            tracing::warn!(after = ?now.duration_since(since), "connector unreachable; sending directly to the cloud");
            st.mode = Mode::Direct;
            st.next_probe = now + self.cfg.reprobe_every;
        }
        let direct = self.direct.as_ref().expect("direct mode only with a direct transport");
        let r = direct.send(batch).await;
        if r.is_ok() {
            self.set_path(direct.path());
        }
        r
    }

    fn path(&self) -> String {
        self.last_path.lock().unwrap().clone()
    }
}
