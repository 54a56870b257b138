//! The public keys of this network's machines, which the LAN intake checks every hub batch against
//! before it takes custody of it. The cloud lists them in a [`NetworkKeys`] document signed by the
//! cloud key the connector pinned at enrollment (`POST /v1/network-keys`); the list is fetched
//! after enrollment, again every `cloud.keys_every`, and at once for a batch from an unknown
//! machine, at most once per `cloud.keys_refresh_min` (so a flood of made-up ids costs the cloud
//! nothing). The signed document is kept on disk, so a connector restarted during a cloud outage
//! still checks batches. Each key is parsed once and reused while the cloud lists it unchanged.

use outpost_shared::keys::{DocumentError, IngestLimits, KeyPair, MachineId, NetworkKeys, PublicKey, Signed};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Where the last accepted list is kept, as the cloud signed it.
pub const FILE: &str = "network-keys.json";

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot reach the cloud for the network's keys: {0}")]
    Cloud(String),
    #[error("the cloud's key list does not check: {0}")]
    Document(#[from] DocumentError),
    #[error("the key list was made for connector {0}, not this one")]
    OtherConnector(MachineId),
    #[error("the key list was issued at {got}, before the one held ({held}); kept the newer")]
    Older { got: chrono::DateTime<chrono::Utc>, held: chrono::DateTime<chrono::Utc> },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not enrolled yet: no cloud key to check the list with")]
    NoCloudKey,
}

/// What a lookup found.
pub enum Lookup {
    Known(PublicKey),
    /// The list does not name it.
    Unknown,
    /// No list yet (not enrolled, or never reached the cloud and nothing on disk).
    NoList,
}

/// One accepted list, parsed.
struct Known {
    issued_at: chrono::DateTime<chrono::Utc>,
    /// machine id → (PEM as listed, the parsed key).
    keys: HashMap<String, (String, PublicKey)>,
    limits: IngestLimits,
}

pub struct HubKeys {
    dir: PathBuf,
    me: MachineId,
    refresh_min: Duration,
    cloud_key: RwLock<Option<PublicKey>>,
    /// The connector's machine session with the cloud, once enrolled (else requests are signed).
    session: RwLock<Option<std::sync::Arc<outpost_shared::keys::SessionClient>>>,
    known: RwLock<Option<Arc<Known>>>,
    /// When a fetch for an unknown signer last started: the rate limit. Held while such a
    /// fetch runs, so a burst of batches from new machines waits for one fetch, not many.
    last_demand: tokio::sync::Mutex<Option<Instant>>,
}

impl HubKeys {
    pub fn new(dir: &Path, me: MachineId, refresh_min: Duration) -> HubKeys {
        HubKeys {
            dir: dir.to_path_buf(),
            me,
            refresh_min,
            cloud_key: RwLock::new(None),
            session: RwLock::new(None),
            known: RwLock::new(None),
            last_demand: tokio::sync::Mutex::new(None),
        }
    }

    /// After enrollment: the cloud key lists are checked with, and the list kept on disk (if any
    /// that still checks).
    /// Fetches go through `session` from now on.
    pub fn set_session(&self, session: std::sync::Arc<outpost_shared::keys::SessionClient>) {
        *self.session.write().unwrap() = Some(session);
    }

    pub fn set_cloud_key(&self, cloud_key: PublicKey) {
        *self.cloud_key.write().unwrap() = Some(cloud_key);
        let path = self.dir.join(FILE);
        let Ok(bytes) = std::fs::read(&path) else { return };
        let loaded = serde_json::from_slice::<Signed<NetworkKeys>>(&bytes)
            .map_err(|e| KeysError::Document(DocumentError::Malformed(e.to_string())))
            .and_then(|s| self.accept(&s));
        match loaded {
            Ok(()) => tracing::info!(path = %path.display(), "network keys loaded from disk"),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "stored network keys not used"),
        }
    }

    pub fn lookup(&self, id: &MachineId) -> Lookup {
        match self.known.read().unwrap().as_ref() {
            None => Lookup::NoList,
            Some(k) => match k.keys.get(id.as_str()) {
                Some((_, key)) => Lookup::Known(key.clone()),
                None => Lookup::Unknown,
            },
        }
    }

    /// The cloud's ingest limits, once a list came.
    pub fn limits(&self) -> Option<IngestLimits> {
        self.known.read().unwrap().as_ref().map(|k| k.limits)
    }

    /// Checks a list and makes it the current one (and keeps it on disk).
    fn accept(&self, signed: &Signed<NetworkKeys>) -> Result<(), KeysError> {
        let cloud_key = self.cloud_key.read().unwrap().clone().ok_or(KeysError::NoCloudKey)?;
        let doc = signed.verify(&cloud_key)?;
        if doc.connector != self.me {
            return Err(KeysError::OtherConnector(doc.connector));
        }
        let old = self.known.read().unwrap().clone();
        if let Some(held) = old.as_ref().map(|k| k.issued_at).filter(|h| *h > doc.issued_at) {
            return Err(KeysError::Older { got: doc.issued_at, held });
        }
        let mut keys = HashMap::with_capacity(doc.machines.len());
        for m in doc.machines {
            let id = m.machine_id.to_string();
            // Parse each key once: reuse the one held while the cloud lists it unchanged.
            let reused = old.as_ref().and_then(|k| k.keys.get(&id)).filter(|(pem, _)| *pem == m.public_key);
            let parsed = match reused {
                Some((_, key)) => key.clone(),
                None => match PublicKey::from_pem(&m.public_key) {
                    Ok(k) if k.machine_id() == &m.machine_id => k,
                    Ok(_) | Err(_) => {
                        tracing::warn!(machine = %id, "network key list names a key that is not that machine's; skipped");
                        continue;
                    }
                },
            };
            keys.insert(id, (m.public_key, parsed));
        }
        let changed = old.as_ref().is_none_or(|k| {
            k.keys.len() != keys.len()
                || k.keys.iter().any(|(id, (pem, _))| keys.get(id).is_none_or(|(p, _)| p != pem))
        });
        let n = keys.len();
        *self.known.write().unwrap() =
            Some(Arc::new(Known { issued_at: doc.issued_at, keys, limits: doc.limits }));
        if changed {
            tracing::info!(machines = n, network = %doc.network_id, "network keys updated");
            self.persist(signed)?;
        }
        Ok(())
    }

    fn persist(&self, signed: &Signed<NetworkKeys>) -> Result<(), KeysError> {
        let path = self.dir.join(FILE);
        let tmp = path.with_extension("tmp");
        let io = |source| KeysError::Io { path: path.clone(), source };
        std::fs::write(&tmp, serde_json::to_vec(signed).expect("serialises")).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Fetches the list from the cloud at `base` and makes it the current one.
    pub async fn fetch(&self, client: &reqwest::Client, base: &str, key: &KeyPair) -> Result<(), KeysError> {
        if self.cloud_key.read().unwrap().is_none() {
            return Err(KeysError::NoCloudKey);
        }
        let path = "/v1/network-keys";
        let body = b"{}".to_vec();
        let session = self.session.read().unwrap().clone();
        if let Some(session) = session {
            // The list is signed by the cloud key and checked in `accept`; the session spares
            // the connector an RSA signature per fetch.
            let answer = session
                .send(client, base, reqwest::Method::POST, path, &body, body.clone(), |r| {
                    r.header(reqwest::header::CONTENT_TYPE, "application/json")
                })
                .await
                .map_err(KeysError::Cloud)?;
            if !answer.status.is_success() {
                let text = String::from_utf8_lossy(&answer.body);
                return Err(KeysError::Cloud(format!(
                    "{}: {}",
                    answer.status,
                    text.chars().take(300).collect::<String>()
                )));
            }
            let signed: Signed<NetworkKeys> =
                serde_json::from_slice(&answer.body).map_err(|e| KeysError::Cloud(e.to_string()))?;
            return self.accept(&signed);
        }
        let sig = outpost_shared::keys::sign_request(key, "POST", path, &body, chrono::Utc::now())
            .map_err(|e| KeysError::Cloud(e.to_string()))?;
        let mut req =
            client.post(format!("{base}{path}")).header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in sig.to_pairs() {
            req = req.header(name, value);
        }
        let resp =
            req.body(body).send().await.map_err(|e| KeysError::Cloud(outpost_shared::error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(KeysError::Cloud(format!(
                "{status}: {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        let signed: Signed<NetworkKeys> =
            resp.json().await.map_err(|e| KeysError::Cloud(outpost_shared::error_chain(&e)))?;
        // One RSA check, and parsing only keys not held already: short enough to run here.
        self.accept(&signed)
    }

    /// For a batch signed by a machine not on the list: fetch the list again and look again,
    /// unless a fetch for this reason started less than `refresh_min` ago (then the list as it
    /// is answers). A fetch that started after this batch came answers for it too.
    pub async fn refresh_for_unknown(
        &self,
        client: &reqwest::Client,
        base: &str,
        key: &KeyPair,
        id: &MachineId,
    ) -> Lookup {
        let asked = Instant::now();
        let Ok(mut last) = tokio::time::timeout(FETCH_TIMEOUT, self.last_demand.lock()).await else {
            return self.lookup(id);
        };
        if last.is_some_and(|t| t >= asked || t.elapsed() < self.refresh_min) {
            return self.lookup(id);
        }
        *last = Some(Instant::now());
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch(client, base, key)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "network keys not refreshed"),
            Err(_) => tracing::warn!("network keys not refreshed: the cloud took too long"),
        }
        self.lookup(id)
    }
}

/// Longest a batch from an unknown machine waits for the list to be fetched again.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
