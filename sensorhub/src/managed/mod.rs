//! Sensors managed from the cloud, hub side: the `sensors.apply` command and the stored document.
//!
//! The cloud sends a signed [`SensorDocument`] (see `outpost_shared::managed`). Every check runs
//! before anything changes: the cloud's signature (the key pinned at enrollment), the machine it
//! is addressed to, a version above the one running, the hub's sensor rules, the owner's local
//! rules (`[managed]`: [`ManagedConfig`]), no clash with a local `[[sensor]]`, every password
//! unsealing with this machine's key, and the whole new set building. Only then is the document
//! written to `managed-sensors.json` (atomically) and the running set replaced live, local
//! sensors first, managed ones after. A refused document changes nothing: the hub keeps running
//! the last good one and answers why, each problem naming its field (`sensor[1].warn: ...`).
//!
//! On start the stored document goes through the same checks (no cloud needed), so a hub runs its
//! managed sensors offline; if it no longer passes (local rules or key changed), the hub runs its
//! local sensors only and says why in `status.json` and in its next answer to the cloud.
//!
//! The built-in default sensors (used when the config has no `[[sensor]]`) are no choice of the
//! owner's: a managed sensor of the same id replaces the default one, unless `protected` names it.
//! An explicit local `[[sensor]]` of the same id is a conflict, and the document is refused.

mod config;
pub mod store;

#[cfg(test)]
mod tests;

pub use config::ManagedConfig;
pub use store::MANAGED_FILE;

use crate::relay::{RelayConfig, Relays};
use crate::sensors::{SensorConfig, SensorError, SensorHandle, SensorKind};
use outpost_shared::keys::{DocumentError, KeyPair, PublicKey, Signed};
use outpost_shared::managed::{ApplyReport, SensorDocument};
use std::path::PathBuf;
use std::sync::Arc;

/// What the hub has of its own, against which a document is checked.
#[derive(Clone)]
pub struct Local {
    pub policy: ManagedConfig,
    /// The local config's sensors (passwords unsealed), or the built-in defaults.
    pub sensors: Vec<SensorConfig>,
    /// `sensors` are the built-in defaults: they yield to managed sensors of the same id.
    pub defaults: bool,
    /// The local `[relay]` section: a document's relay settings are added to it, never against it.
    pub relay: Option<RelayConfig>,
}

impl Local {
    /// The set to run: local sensors first (defaults a managed sensor replaces left out), then
    /// the managed ones.
    pub fn combined(&self, managed: &[SensorConfig]) -> Vec<SensorConfig> {
        let taken: Vec<String> = managed.iter().map(SensorConfig::id).collect();
        let mut all: Vec<SensorConfig> =
            self.sensors.iter().filter(|s| !(self.defaults && taken.contains(&s.id()))).cloned().collect();
        all.extend(managed.iter().cloned());
        all
    }
}

/// A document that passed every check.
#[derive(Clone)]
pub struct Accepted {
    pub signed: Signed<SensorDocument>,
    pub version: u64,
    /// The document's sensors, passwords unsealed (memory only).
    pub sensors: Vec<SensorConfig>,
    /// The relay settings to run with it: the local section with the document's added (none
    /// when the hub has no `[relay]`).
    pub relays: Option<RelayConfig>,
}

/// Why a document was refused.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The version it claimed (0 when it could not be read at all).
    pub delivered: u64,
    pub problems: Vec<String>,
}

impl Refused {
    fn one(delivered: u64, problem: impl Into<String>) -> Refused {
        Refused { delivered, problems: vec![problem.into()] }
    }
}

/// What a check compares against: the version below which nothing is taken, and the managed
/// sensors running now (for `protected`).
struct Baseline<'a> {
    floor: Option<u64>,
    running: Option<(u64, &'a Signed<SensorDocument>)>,
    sensors: &'a [SensorConfig],
}

/// Checks `signed` completely, changing nothing. `baseline.sensors` are the managed sensors
/// running now: protected ids must stay as they are there.
fn check(
    signed: &Signed<SensorDocument>,
    cloud_key: &PublicKey,
    key: &KeyPair,
    local: &Local,
    baseline: Baseline<'_>,
) -> Result<Accepted, Refused> {
    let claimed = claimed_version(signed);
    let doc = signed.verify(cloud_key).map_err(|e| match e {
        DocumentError::Malformed(_) => Refused { delivered: claimed, problems: unreadable(signed, &e) },
        other => Refused::one(claimed, format!("signature: not signed by this hub's cloud: {other}")),
    })?;
    if !local.policy.enabled {
        return Err(Refused::one(
            doc.version,
            "managed.enabled: this machine's owner has turned managed sensors off in its local config",
        ));
    }
    if &doc.machine != key.machine_id() {
        return Err(Refused::one(
            doc.version,
            format!("machine: the document is for {}, this machine is {}", doc.machine, key.machine_id()),
        ));
    }
    if let Some(floor) = baseline.floor {
        let same = baseline.running.is_some_and(|(v, s)| v == doc.version && s.payload == signed.payload);
        if doc.version < floor || (doc.version == floor && !same) {
            return Err(Refused::one(
                doc.version,
                format!(
                    "version: v{} is not newer than v{floor}, which this hub has already taken",
                    doc.version
                ),
            ));
        }
    }
    let mut problems: Vec<String> = match doc.validate() {
        Ok(()) => Vec::new(),
        Err(p) => p.iter().map(|p| format!("{}: {}", p.key, p.message)).collect(),
    };
    let mut sensors = doc.sensors.clone();
    for (i, s) in sensors.iter_mut().enumerate() {
        let Some(sealed) = &s.password else { continue };
        if !outpost_shared::keys::is_sealed(sealed.expose()) {
            continue; // validate() named it already
        }
        match outpost_shared::keys::unseal(key, sealed.expose()) {
            Ok(plain) => s.password = Some(plain),
            Err(e) => problems.push(format!(
                "sensor[{i}].password: does not unseal with this machine's key ({e}): sealed to another machine, or damaged"
            )),
        }
    }
    for (i, s) in sensors.iter().enumerate() {
        let id = s.id();
        if s.kind == SensorKind::Command && !local.policy.allow_commands {
            problems.push(format!(
                "sensor[{i}].kind: `{id}` is a command sensor, which runs a program on this machine; its owner \
                 has not allowed that from the cloud (managed.allow_commands in the hub's config)"
            ));
        }
        if !local.defaults {
            if let Some(j) = local.sensors.iter().position(|l| l.id() == id) {
                problems.push(format!(
                    "sensor[{i}].name: `{id}` is also the hub's local sensor[{j}]; the hub keeps its own and \
                     refuses this document: rename one of them"
                ));
            }
        }
    }
    for p in &local.policy.protected {
        let now = baseline.sensors.iter().find(|s| &s.id() == p);
        let asked = sensors.iter().position(|s| &s.id() == p);
        let what = match (now, asked) {
            (None, Some(_)) => "add",
            (Some(_), None) => "remove",
            (Some(a), Some(i)) if *a != sensors[i] => "change",
            _ => continue,
        };
        let at = asked.map(|i| format!("sensor[{i}].name")).unwrap_or_else(|| "sensors".into());
        problems.push(format!(
            "{at}: `{p}` is protected on this hub (managed.protected); the cloud may not {what} it"
        ));
    }
    let relays = match &local.relay {
        Some(own) => own.with_managed(&doc.relays).map_err(|p| problems.extend(p)).ok(),
        None if doc.relays.is_empty() => None,
        None => {
            problems.push(
                "relays: this hub has no [relay] section, so no relay card to name, lock or restore; \
                 take the relay settings off this machine in the cloud, or give the hub's config a [relay] \
                 section with the cards' serial port"
                    .into(),
            );
            None
        }
    };
    if !problems.is_empty() {
        return Err(Refused { delivered: doc.version, problems });
    }
    Ok(Accepted { signed: signed.clone(), version: doc.version, sensors, relays })
}

/// The version a document claims, read without trusting it: only for the report.
fn claimed_version(signed: &Signed<SensorDocument>) -> u64 {
    signed
        .payload_bytes()
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["version"].as_u64())
        .unwrap_or(0)
}

/// Names what does not parse in a document (an unknown kind, a wrong type): each sensor is read
/// alone so the problem names its index. Reached for a payload that does not parse, and for an
/// envelope too broken to check (another kind, not base64): either way the document is refused,
/// this only says why.
fn unreadable(signed: &Signed<SensorDocument>, e: &DocumentError) -> Vec<String> {
    let value =
        signed.payload_bytes().ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let mut problems = Vec::new();
    if let Some(list) = value.as_ref().and_then(|v| v["sensors"].as_array()) {
        for (i, s) in list.iter().enumerate() {
            if let Err(e) = serde_json::from_value::<SensorConfig>(s.clone()) {
                problems.push(format!("sensor[{i}]: {e}"));
            }
        }
    }
    if problems.is_empty() {
        problems.push(format!("document: {e}"));
    }
    problems
}

/// Turns a build failure of the combined set into problems naming the document's fields.
fn build_problems(e: SensorError, doc: &[SensorConfig], local: &Local) -> Vec<String> {
    let name = |id: &str| match doc.iter().position(|s| s.id() == id) {
        Some(i) => format!("sensor[{i}]"),
        None => format!("local sensor `{id}`"),
    };
    match e {
        SensorError::Invalid(problems) => {
            // Indices there count the combined set: local sensors first.
            let offset = local.combined(doc).len() - doc.len();
            problems
                .iter()
                .map(|p| {
                    let key = p
                        .key
                        .strip_prefix("sensor[")
                        .and_then(|rest| rest.split_once(']'))
                        .and_then(|(n, field)| n.parse::<usize>().ok().map(|n| (n, field)))
                        .map(|(n, field)| match n.checked_sub(offset) {
                            Some(i) => format!("sensor[{i}]{field}"),
                            None => format!("local sensor[{n}]{field}"),
                        })
                        .unwrap_or_else(|| p.key.clone());
                    format!("{key}: {}", p.message)
                })
                .collect()
        }
        SensorError::Tls { id, source } => vec![format!("{}.ca_file: {source}", name(&id))],
        SensorError::HttpClient { id, source } => {
            vec![format!("{}: cannot build its HTTP client: {source}", name(&id))]
        }
        SensorError::Stopping => vec!["the hub is stopping; send the document again".into()],
    }
}

/// Most problems one report lists: a document of 500 broken sensors must not make a result the
/// cloud refuses for its size.
const MAX_PROBLEMS: usize = 50;
/// Most characters of one problem (a parser's message can quote a long value).
const MAX_PROBLEM_LEN: usize = 500;

fn bounded(mut problems: Vec<String>) -> Vec<String> {
    let more = problems.len().saturating_sub(MAX_PROBLEMS);
    problems.truncate(MAX_PROBLEMS);
    let mut problems: Vec<String> = problems.iter().map(|p| clip(p)).collect();
    if more > 0 {
        problems.push(format!("… and {more} more problems"));
    }
    problems
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_PROBLEM_LEN) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// What the hub reports about its managed sensors (`status.json`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ManagedStatus {
    /// The document version running, none before the first.
    pub version: Option<u64>,
    /// Why the last document (stored or delivered) was not applied, if it was not.
    pub problem: Option<String>,
}

/// The stored document as checked on start.
pub struct Loaded {
    pub accepted: Option<Accepted>,
    /// The version of a stored document whose signature holds, applied or not: no older one is
    /// taken after a restart either.
    pub floor: Option<u64>,
    pub problem: Option<String>,
}

/// Reads and checks the stored document, with no cloud: `cloud_key` is the one pinned at
/// enrollment (none if not enrolled: nothing stored can then be trusted).
pub fn load(dir: &std::path::Path, key: &KeyPair, cloud_key: Option<&PublicKey>, local: &Local) -> Loaded {
    let none = |problem: Option<String>| Loaded { accepted: None, floor: None, problem };
    let signed = match store::read(dir) {
        Ok(Some(s)) => s,
        Ok(None) => return none(None),
        Err(e) => return none(Some(format!("the stored document cannot be read: {e}"))),
    };
    let Some(cloud_key) = cloud_key else {
        return none(Some(
            "a managed document is stored but this hub is not enrolled; it is not used".into(),
        ));
    };
    let verified = signed.verify(cloud_key).ok();
    let floor = verified.as_ref().map(|d| d.version);
    // The stored document is its own baseline: what it runs is what the owner last saw run.
    let unsealed = unseal_all(verified.map(|d| d.sensors).as_deref().unwrap_or_default(), key);
    match check(&signed, cloud_key, key, local, Baseline { floor: None, running: None, sensors: &unsealed }) {
        Ok(a) => Loaded { accepted: Some(a), floor, problem: None },
        Err(r) => Loaded {
            accepted: None,
            floor,
            problem: Some(format!("stored v{} no longer applies: {}", r.delivered, r.problems.join("; "))),
        },
    }
}

/// `sensors` with every password that unseals unsealed (the others left as they are).
fn unseal_all(sensors: &[SensorConfig], key: &KeyPair) -> Vec<SensorConfig> {
    let mut out = sensors.to_vec();
    for s in &mut out {
        if let Some(p) = &s.password {
            if let Ok(plain) = outpost_shared::keys::unseal(key, p.expose()) {
                s.password = Some(plain);
            }
        }
    }
    out
}

/// The managed side of a running hub: applies delivered documents, one at a time.
pub struct Managed {
    dir: PathBuf,
    key: Arc<KeyPair>,
    local: Local,
    sensors: SensorHandle,
    /// The relay cards, whose names, locks and restore rules a document may add to.
    relays: Option<Relays>,
    state: tokio::sync::Mutex<State>,
    status: tokio::sync::watch::Sender<ManagedStatus>,
}

struct State {
    running: Option<Accepted>,
    floor: Option<u64>,
    /// Why the stored document did not apply on start; told with the next refusal, forgotten
    /// once a document applies.
    start_problem: Option<String>,
}

impl Managed {
    /// `loaded` is what [`load`] found and the hub started with (`accepted` is running in
    /// `sensors`).
    pub fn new(
        dir: PathBuf,
        key: Arc<KeyPair>,
        local: Local,
        sensors: SensorHandle,
        relays: Option<Relays>,
        loaded: Loaded,
    ) -> Managed {
        let status = ManagedStatus {
            version: loaded.accepted.as_ref().map(|a| a.version),
            problem: loaded.problem.clone(),
        };
        let floor = loaded.floor.max(loaded.accepted.as_ref().map(|a| a.version));
        Managed {
            dir,
            key,
            local,
            sensors,
            relays,
            state: tokio::sync::Mutex::new(State {
                running: loaded.accepted,
                floor,
                start_problem: loaded.problem,
            }),
            status: tokio::sync::watch::channel(status).0,
        }
    }

    pub fn status(&self) -> tokio::sync::watch::Receiver<ManagedStatus> {
        self.status.subscribe()
    }

    /// Runs `sensors.apply` with `parameters` (`{"document": Signed<SensorDocument>}`): the report
    /// as `Ok` when applied, as `Err` when refused (then nothing changed).
    pub async fn apply(
        &self,
        cloud_key: &PublicKey,
        parameters: &serde_json::Value,
    ) -> Result<ApplyReport, ApplyReport> {
        let mut state = self.state.lock().await;
        let running_version = state.running.as_ref().map(|a| a.version);
        let refuse = |state: &State, r: Refused| {
            let mut problems = bounded(r.problems);
            if let Some(p) = &state.start_problem {
                problems.push(format!("on start: {}", clip(p)));
            }
            tracing::warn!(version = r.delivered, problems = %problems.join("; "), "managed sensor document refused; the sensors running stay as they are");
            self.status.send_modify(|s| s.problem = Some(problems.join("; ")));
            ApplyReport { running: running_version, delivered: r.delivered, problems }
        };
        let signed: Signed<SensorDocument> =
            match parameters.get("document").cloned().map(serde_json::from_value) {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    return Err(refuse(
                        &state,
                        Refused::one(0, format!("document: not a signed sensor document: {e}")),
                    ))
                }
                None => return Err(refuse(&state, Refused::one(0, "document: the parameter is missing"))),
            };
        let running_sensors = state.running.as_ref().map(|a| a.sensors.clone()).unwrap_or_default();
        let baseline = Baseline {
            floor: state.floor,
            running: state.running.as_ref().map(|a| (a.version, &a.signed)),
            sensors: &running_sensors,
        };
        let accepted = match check(&signed, cloud_key, &self.key, &self.local, baseline) {
            Ok(a) => a,
            Err(r) => return Err(refuse(&state, r)),
        };
        if state.running.as_ref().is_some_and(|r| r.signed.payload == accepted.signed.payload) {
            // The same document again (its first answer was lost): nothing to change.
            return Ok(ApplyReport {
                running: Some(accepted.version),
                delivered: accepted.version,
                problems: vec![],
            });
        }
        let replacement = match self.sensors.prepare(&self.local.combined(&accepted.sensors)).await {
            Ok(r) => r,
            Err(e) => {
                let problems = build_problems(e, &accepted.sensors, &self.local);
                return Err(refuse(&state, Refused { delivered: accepted.version, problems }));
            }
        };
        let (dir, stored) = (self.dir.clone(), accepted.signed.clone());
        let written = tokio::task::spawn_blocking(move || store::write(&dir, &stored))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = written {
            // Nothing applied: a document that would not survive a restart is not run.
            let problem = format!("{}: cannot store the document: {e}", store::path(&self.dir).display());
            return Err(refuse(&state, Refused::one(accepted.version, problem)));
        }
        let changes = replacement.commit().await;
        if let (Some(cards), Some(settings)) = (&self.relays, &accepted.relays) {
            cards.apply(settings.clone()).await;
        }
        tracing::info!(
            version = accepted.version,
            relays = accepted.relays.as_ref().map_or(0, |r| r.relays.len()),
            issued_by = %accepted.signed.peek_unverified().map(|d| d.issued_by).unwrap_or_default(),
            started = ?changes.started, restarted = ?changes.restarted, stopped = ?changes.stopped, kept = changes.kept,
            "managed sensor document applied"
        );
        let version = accepted.version;
        state.floor = Some(version);
        state.running = Some(accepted);
        state.start_problem = None;
        self.status.send_replace(ManagedStatus { version: Some(version), problem: None });
        Ok(ApplyReport { running: Some(version), delivered: version, problems: vec![] })
    }
}
