//! Sensors managed from the cloud, the deciding layer: every change to a machine's own sensors,
//! to a template it uses or to its template list builds the machine's effective set
//! ([`document::effective`]), checks it with the hub's rules ([`document::validate`]; nothing is
//! saved when a machine's set is invalid), saves it with a version one above the last
//! ([`crate::store::managed`]), signs it with the cloud key and sends it as a `sensors.apply`
//! command through [`Commands`]. Each step is in the audit trail with who did it.
//!
//! - [`secrets`]: passwords sealed before anything is stored, never returned.
//! - [`catalogue`]: every kind and its fields, for the dashboard's forms.
//! - [`status`]: "applied v7", "pending v8" or the hub's problems, and the task that sends the
//!   newest version again to a machine that was offline past its command's expiry.

pub mod catalogue;
pub mod document;
pub mod secrets;
pub mod status;
#[cfg(test)]
mod tests;

use crate::commands::{AuditEntry, Commands};
use crate::error::CloudError;
use crate::store::managed::{Delivery, Managed, ManagedChange, Template, TemplateWrite, VersionRecord};
use crate::trust::Trust;
use chrono::Utc;
use document::{Effective, Origin};
use outpost_shared::keys::{MachineId, PublicKey, Signed};
use outpost_shared::managed::{SensorDocument, APPLY_ACTION};
use outpost_shared::relay_settings::RelaySettings;
use outpost_shared::sensor_config::SensorConfig;
use secrets::SensorInput;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long an apply command waits for its machine. Past it the redelivery task sends the newest
/// version again, so an offline machine costs one command per hour, not one per change.
pub const APPLY_TTL: Duration = Duration::from_secs(3600);

/// Templates one machine may use, and the length of a template's name.
pub const MAX_TEMPLATES: usize = 50;
pub const MAX_TEMPLATE_NAME: usize = 64;

/// One problem with what was sent, named by field (`sensor[http.web].warn`, `templates`, …).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

impl FieldProblem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldProblem {
        FieldProblem { field: field.into(), message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    #[error("{0}")]
    NotFound(String),
    /// Nothing was saved; each problem names its field.
    #[error("{}", .0.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldProblem>),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Cloud(#[from] CloudError),
}

impl From<outpost_shared::keys::SealError> for ManagedError {
    fn from(e: outpost_shared::keys::SealError) -> ManagedError {
        ManagedError::Cloud(CloudError::Keys(e.to_string()))
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ManagedError {
    ManagedError::Invalid(vec![FieldProblem::new(field, message)])
}

/// A machine's managed sensors as answers show them (passwords only said to be set).
#[derive(Debug, Serialize)]
pub struct MachineView {
    pub machine: String,
    pub templates: Vec<String>,
    /// The machine's own sensors.
    pub sensors: Vec<serde_json::Value>,
    /// What the machine is sent: templates' and its own, each with `id` and `origin`.
    pub effective: Vec<serde_json::Value>,
    /// Names, locks and restore rules for its relay cards, as its newest version carries them.
    pub relays: Vec<RelaySettings>,
    pub status: status::Status,
}

/// A version in the history, without the signed document's bytes.
#[derive(Debug, Serialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub at: chrono::DateTime<Utc>,
    pub who: String,
    pub change: String,
    pub sensors: Vec<serde_json::Value>,
    /// The relay settings of that version (what a roll-back to it brings back).
    pub relays: Vec<RelaySettings>,
}

/// The cloud's managed-sensor service: cheap to clone.
#[derive(Clone)]
pub struct ManagedSensors {
    store: Managed,
    trust: Trust,
    commands: Commands,
    /// One change at a time in this process, so a change reads the state it replaces. Between
    /// processes (PostgreSQL), the store's version check refuses the second of two at once.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// How long an apply command waits for its machine ([`APPLY_TTL`]; tests shorten it).
    apply_ttl: Duration,
}

/// The state a change will leave, for building documents before anything is saved.
#[derive(Default)]
struct Pending {
    own: HashMap<String, Vec<SensorConfig>>,
    /// Machines whose relay settings are replaced by these; the others keep those of their
    /// newest version.
    relays: HashMap<String, Vec<RelaySettings>>,
    assigned: HashMap<String, Vec<String>>,
    template: Option<TemplateWrite>,
}

impl ManagedSensors {
    pub fn new(store: Managed, trust: Trust, commands: Commands) -> ManagedSensors {
        ManagedSensors { store, trust, commands, lock: Arc::default(), apply_ttl: APPLY_TTL }
    }

    /// Apply commands expire after `ttl` instead of [`APPLY_TTL`].
    pub fn with_apply_ttl(mut self, ttl: Duration) -> ManagedSensors {
        self.apply_ttl = ttl;
        self
    }

    /// The enrolled machine's public key, or NotFound.
    async fn machine_key(&self, machine: &str) -> Result<PublicKey, ManagedError> {
        let mk = self
            .trust
            .machine_key(machine)
            .await?
            .ok_or_else(|| ManagedError::NotFound(format!("no enrolled machine {machine}")))?;
        self.trust.parsed_key(&mk).map_err(|e| ManagedError::Cloud(CloudError::Keys(e.to_string())))
    }

    async fn template_named(&self, name: &str, pending: &Pending) -> Result<Option<Template>, CloudError> {
        match &pending.template {
            Some(TemplateWrite::Put(t)) if t.name == name => Ok(Some(t.clone())),
            Some(TemplateWrite::Delete(n)) if n == name => Ok(None),
            _ => self.store.template(name).await,
        }
    }

    /// The machine's effective set in the state `pending` leaves, passwords sealed to it when
    /// `seal` (a document is built), as stored otherwise (shown redacted: nothing to open).
    async fn effective_for(
        &self,
        machine: &str,
        pending: &Pending,
        seal: bool,
    ) -> Result<Effective, ManagedError> {
        let names = match pending.assigned.get(machine) {
            Some(n) => n.clone(),
            None => self.store.machine_templates(machine).await?,
        };
        let mut templates = Vec::with_capacity(names.len());
        for name in &names {
            match self.template_named(name, pending).await? {
                Some(t) => templates.push(t),
                None => return Err(invalid("templates", format!("there is no template `{name}`"))),
            }
        }
        let own = match pending.own.get(machine) {
            Some(o) => o.clone(),
            None => self.store.machine_sensors(machine).await?,
        };
        let mut eff = document::effective(&templates, &own).map_err(ManagedError::Invalid)?;
        if !seal {
            return Ok(eff);
        }
        let key = self.machine_key(machine).await?;
        for (s, origin) in eff.sensors.iter_mut().zip(&eff.origins) {
            if let (Origin::Template(_), Some(p)) = (origin, &s.password) {
                s.password = Some(secrets::reseal(self.trust.key(), &key, p)?);
            }
        }
        Ok(eff)
    }

    /// A machine's relay settings in the state `pending` leaves: the newest version's, unless
    /// the change replaces them. They live in the signed documents alone: what the machine was
    /// last sent is what it runs.
    async fn relays_for(&self, machine: &str, pending: &Pending) -> Result<Vec<RelaySettings>, ManagedError> {
        if let Some(r) = pending.relays.get(machine) {
            return Ok(r.clone());
        }
        Ok(self.store.latest_version(machine).await?.map(|v| current_relays(&v)).unwrap_or_default())
    }

    /// Builds, checks and signs version `version` of `machine`'s document.
    fn sign(
        &self,
        machine: &str,
        version: u64,
        eff: &Effective,
        relays: Vec<RelaySettings>,
        who: &str,
        change: &str,
    ) -> Result<VersionRecord, ManagedError> {
        let doc = SensorDocument {
            machine: MachineId::parse(machine).map_err(|e| invalid("machine", e.to_string()))?,
            version,
            issued_at: Utc::now(),
            issued_by: who.to_string(),
            sensors: eff.sensors.clone(),
            relays,
        };
        document::validate(&doc, &eff.origins).map_err(ManagedError::Invalid)?;
        let signed = Signed::sign(self.trust.key(), &doc).map_err(|e| CloudError::Keys(e.to_string()))?;
        Ok(VersionRecord {
            machine: machine.to_string(),
            version,
            at: doc.issued_at,
            who: who.to_string(),
            change: change.to_string(),
            document: signed,
        })
    }

    /// Saves `pending` with a new version for each of `machines`, then delivers them. Nothing is
    /// saved if any machine's document is invalid.
    async fn commit(
        &self,
        machines: &[String],
        pending: Pending,
        who: &str,
        change: &str,
    ) -> Result<Vec<(String, u64)>, ManagedError> {
        let mut versions = Vec::with_capacity(machines.len());
        let mut problems = Vec::new();
        for machine in machines {
            let eff = match self.effective_for(machine, &pending, true).await {
                Ok(e) => e,
                Err(ManagedError::Invalid(p)) => {
                    problems.extend(on_machine(machine, machines.len(), p));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let next = self.store.latest_version(machine).await?.map_or(1, |v| v.version + 1);
            let relays = self.relays_for(machine, &pending).await?;
            match self.sign(machine, next, &eff, relays, who, change) {
                Ok(v) => versions.push(v),
                Err(ManagedError::Invalid(p)) => problems.extend(on_machine(machine, machines.len(), p)),
                Err(e) => return Err(e),
            }
        }
        if !problems.is_empty() {
            return Err(ManagedError::Invalid(problems));
        }
        let numbers = versions.iter().map(|v| (v.machine.clone(), v.version)).collect();
        let save = ManagedChange {
            machine_sensors: pending.own.into_iter().collect(),
            assignments: pending.assigned.into_iter().collect(),
            template: pending.template,
            versions: versions.clone(),
        };
        self.store.save(save).await.map_err(|e| match e {
            CloudError::Conflict(m) => ManagedError::Conflict(m),
            e => ManagedError::Cloud(e),
        })?;
        for v in &versions {
            self.audit(
                &v.machine,
                "sensors.saved",
                who,
                serde_json::json!({"version": v.version, "change": change}),
            )
            .await;
        }
        // All at once: their flushes share the database's group commit, so a template used by a
        // thousand machines costs a few flushes, not a thousand in a row.
        let sent = futures_util::future::join_all(versions.iter().map(|v| self.deliver(v, who))).await;
        for (v, r) in versions.iter().zip(sent) {
            // Saved is what counts: a delivery that fails now is made by the redelivery task.
            if let Err(e) = r {
                tracing::warn!(machine = %v.machine, version = v.version, error = %e, "sensor document saved but not sent yet; the redelivery task retries");
            }
        }
        Ok(numbers)
    }

    /// Issues the `sensors.apply` command carrying `v` and remembers it.
    async fn deliver(&self, v: &VersionRecord, who: &str) -> Result<(), CloudError> {
        let params = serde_json::json!({"document": v.document});
        let rec = self
            .commands
            .create(self.trust.key(), &v.machine, APPLY_ACTION, params, self.apply_ttl, who)
            .await?;
        self.store
            .note_delivery(Delivery {
                machine: v.machine.clone(),
                version: v.version,
                command: rec.id,
                at: rec.created_at,
            })
            .await
    }

    async fn audit(&self, machine: &str, action: &str, who: &str, parameters: serde_json::Value) {
        let entry = AuditEntry {
            ts: Utc::now(),
            command_id: String::new(),
            machine: machine.to_string(),
            action: action.to_string(),
            parameters,
            who: who.to_string(),
            event: "saved".into(),
            detail: serde_json::Value::Null,
        };
        if let Err(e) = self.commands.record(entry).await {
            tracing::error!(error = %e, action, "audit entry not written");
        }
    }

    // ---- machines ----

    pub async fn machine(&self, machine: &str) -> Result<MachineView, ManagedError> {
        self.machine_key(machine).await?;
        let own = self.store.machine_sensors(machine).await?;
        let templates = self.store.machine_templates(machine).await?;
        let effective = match self.effective_for(machine, &Pending::default(), false).await {
            Ok(eff) => eff
                .sensors
                .iter()
                .zip(&eff.origins)
                .map(|(s, o)| {
                    let mut v = secrets::redacted(s);
                    v["id"] = s.id().into();
                    v["origin"] = serde_json::to_value(o).expect("serialises");
                    v
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let relays = self.relays_for(machine, &Pending::default()).await?;
        Ok(MachineView {
            machine: machine.to_string(),
            templates,
            relays,
            sensors: own.iter().map(secrets::redacted).collect(),
            effective,
            status: self.status(machine).await?,
        })
    }

    /// Adds (`replace` None) or replaces (the sensor of id `replace`) one of a machine's own
    /// sensors. Returns the new version.
    pub async fn put_sensor(
        &self,
        machine: &str,
        replace: Option<&str>,
        input: serde_json::Value,
        who: &str,
    ) -> Result<u64, ManagedError> {
        let key = self.machine_key(machine).await?;
        let input: SensorInput = secrets::parse_sensor(input, "sensor").map_err(ManagedError::Invalid)?;
        let _one = self.lock.lock().await;
        let mut own = self.store.machine_sensors(machine).await?;
        let id = input.config.id();
        let at = match replace {
            Some(old) => Some(own.iter().position(|s| s.id() == old).ok_or_else(|| {
                ManagedError::NotFound(format!("{machine} has no sensor `{old}` of its own"))
            })?),
            None => None,
        };
        if own.iter().enumerate().any(|(i, s)| s.id() == id && Some(i) != at) {
            return Err(ManagedError::Conflict(format!(
                "{machine} already has a sensor `{id}`; edit that one, or give this one another name"
            )));
        }
        let previous = at.map(|i| own[i].clone());
        let sealed = secrets::seal_input(input, &key, previous.as_ref())?;
        let change = match (&previous, at) {
            (Some(p), Some(i)) => {
                own[i] = sealed;
                if p.id() == id {
                    format!("edited {id}")
                } else {
                    format!("edited {} (now {id})", p.id())
                }
            }
            _ => {
                own.push(sealed);
                format!("added {id}")
            }
        };
        let pending = Pending { own: HashMap::from([(machine.to_string(), own)]), ..Default::default() };
        Ok(self.commit(&[machine.to_string()], pending, who, &change).await?[0].1)
    }

    pub async fn remove_sensor(&self, machine: &str, id: &str, who: &str) -> Result<u64, ManagedError> {
        self.machine_key(machine).await?;
        let _one = self.lock.lock().await;
        let mut own = self.store.machine_sensors(machine).await?;
        let before = own.len();
        own.retain(|s| s.id() != id);
        if own.len() == before {
            return Err(ManagedError::NotFound(format!("{machine} has no sensor `{id}` of its own")));
        }
        let pending = Pending { own: HashMap::from([(machine.to_string(), own)]), ..Default::default() };
        Ok(self.commit(&[machine.to_string()], pending, who, &format!("removed {id}")).await?[0].1)
    }

    /// Sets the templates applied to a machine, in order.
    pub async fn set_templates(
        &self,
        machine: &str,
        names: Vec<String>,
        who: &str,
    ) -> Result<u64, ManagedError> {
        self.machine_key(machine).await?;
        if names.len() > MAX_TEMPLATES {
            return Err(invalid(
                "templates",
                format!("{} templates; a machine uses at most {MAX_TEMPLATES}", names.len()),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(invalid("templates", format!("template `{twice}` is listed twice")));
        }
        let _one = self.lock.lock().await;
        let change =
            format!("templates: {}", if names.is_empty() { "none".into() } else { names.join(", ") });
        let pending =
            Pending { assigned: HashMap::from([(machine.to_string(), names)]), ..Default::default() };
        Ok(self.commit(&[machine.to_string()], pending, who, &change).await?[0].1)
    }

    /// Replaces a machine's relay settings (names, locks, restore rules). The machine refuses
    /// them if its own config has no relay cards or names, restores or locks otherwise; its
    /// answer shows with the version, like a sensor problem.
    pub async fn set_relays(
        &self,
        machine: &str,
        relays: Vec<RelaySettings>,
        who: &str,
    ) -> Result<u64, ManagedError> {
        self.machine_key(machine).await?;
        let _one = self.lock.lock().await;
        let before = self.relays_for(machine, &Pending::default()).await?;
        let change = relay_change(&before, &relays);
        let pending =
            Pending { relays: HashMap::from([(machine.to_string(), relays)]), ..Default::default() };
        Ok(self.commit(&[machine.to_string()], pending, who, &change).await?[0].1)
    }

    pub async fn history(&self, machine: &str, limit: usize) -> Result<Vec<HistoryEntry>, ManagedError> {
        self.machine_key(machine).await?;
        let list = self.store.history(machine, limit).await?;
        Ok(list
            .into_iter()
            .map(|v| {
                let doc = v.document.peek_unverified().ok();
                let sensors = doc
                    .as_ref()
                    .map(|d| d.sensors.iter().map(secrets::redacted).collect())
                    .unwrap_or_default();
                let relays = doc.map(|d| d.relays).unwrap_or_default();
                HistoryEntry { version: v.version, at: v.at, who: v.who, change: v.change, sensors, relays }
            })
            .collect())
    }

    /// Issues a new version with the content of `version`. The machine's own sensors become that
    /// content minus what its current templates give unchanged, so later edits build on it.
    pub async fn roll_back(&self, machine: &str, version: u64, who: &str) -> Result<u64, ManagedError> {
        self.machine_key(machine).await?;
        let _one = self.lock.lock().await;
        let old = self.store.version(machine, version).await?.ok_or_else(|| {
            ManagedError::NotFound(format!("{machine} has no version {version} (any more)"))
        })?;
        let doc =
            old.document.verify(self.trust.key().public()).map_err(|e| CloudError::Corrupt(e.to_string()))?;
        // The rolled-back content is the machine's own from now on; its templates stay applied
        // and the old content wins over them (a machine's own sensor does), so the result is
        // version N's sensors plus whatever a template added since.
        let pending = Pending {
            own: HashMap::from([(machine.to_string(), doc.sensors)]),
            relays: HashMap::from([(machine.to_string(), doc.relays)]),
            ..Default::default()
        };
        Ok(self.commit(&[machine.to_string()], pending, who, &format!("rolled back to v{version}")).await?[0]
            .1)
    }

    /// `sample-now` of one sensor on the machine; the command's result carries the readings.
    pub async fn test_now(&self, machine: &str, id: &str, who: &str) -> Result<String, ManagedError> {
        self.machine_key(machine).await?;
        let rec = self
            .commands
            .create(
                self.trust.key(),
                machine,
                "sample-now",
                serde_json::json!({"sensor": id}),
                crate::commands::DEFAULT_TTL,
                who,
            )
            .await?;
        Ok(rec.id)
    }

    // ---- templates ----

    pub async fn templates(&self) -> Result<Vec<serde_json::Value>, ManagedError> {
        let mut out = Vec::new();
        for t in self.store.templates().await? {
            let machines = self.store.machines_using(&t.name).await?;
            out.push(template_view(&t, machines));
        }
        Ok(out)
    }

    pub async fn template(&self, name: &str) -> Result<serde_json::Value, ManagedError> {
        let t = self
            .store
            .template(name)
            .await?
            .ok_or_else(|| ManagedError::NotFound(format!("no template `{name}`")))?;
        let machines = self.store.machines_using(name).await?;
        Ok(template_view(&t, machines))
    }

    /// Creates (`create`) or replaces a template's sensors, and delivers a new version to every
    /// machine using it. A password left out keeps that sensor's (same id) password.
    pub async fn put_template(
        &self,
        name: &str,
        sensors: Vec<serde_json::Value>,
        create: bool,
        who: &str,
    ) -> Result<std::collections::BTreeMap<String, u64>, ManagedError> {
        check_template_name(name)?;
        let mut inputs = Vec::with_capacity(sensors.len());
        let mut problems = Vec::new();
        for (i, v) in sensors.into_iter().enumerate() {
            match secrets::parse_sensor(v, &format!("sensors[{i}]")) {
                Ok(s) => inputs.push(s),
                Err(p) => problems.extend(p),
            }
        }
        if !problems.is_empty() {
            return Err(ManagedError::Invalid(problems));
        }
        let _one = self.lock.lock().await;
        let old = self.store.template(name).await?;
        match (&old, create) {
            (Some(_), true) => {
                return Err(ManagedError::Conflict(format!("template `{name}` exists; edit it instead")))
            }
            (None, false) => return Err(ManagedError::NotFound(format!("no template `{name}`"))),
            _ => {}
        }
        let cloud = self.trust.key().public().clone();
        let previous: HashMap<String, SensorConfig> =
            old.iter().flat_map(|t| &t.sensors).map(|s| (s.id(), s.clone())).collect();
        let mut list = Vec::with_capacity(inputs.len());
        for input in inputs {
            let id = input.config.id();
            list.push(secrets::seal_input(input, &cloud, previous.get(&id))?);
        }
        // Checked on its own too, so a template no machine uses yet is still valid.
        let alone = SensorDocument {
            machine: self.trust.key().machine_id().clone(),
            version: 1,
            issued_at: Utc::now(),
            issued_by: who.to_string(),
            sensors: list.clone(),
            relays: vec![],
        };
        let origins = vec![Origin::Template(name.to_string()); list.len()];
        document::validate(&alone, &origins).map_err(ManagedError::Invalid)?;
        let change = template_change(name, old.as_ref().map(|t| t.sensors.as_slice()).unwrap_or(&[]), &list);
        let template = Template {
            name: name.to_string(),
            sensors: list,
            updated_by: who.to_string(),
            updated_at: Utc::now(),
        };
        let machines = self.store.machines_using(name).await?;
        let pending = Pending { template: Some(TemplateWrite::Put(template)), ..Default::default() };
        if machines.is_empty() {
            self.store.save(ManagedChange { template: pending.template, ..Default::default() }).await?;
            self.audit("", "sensors.template", who, serde_json::json!({"template": name, "change": change}))
                .await;
            return Ok(Default::default());
        }
        let versions = self.commit(&machines, pending, who, &change).await?;
        self.audit("", "sensors.template", who, serde_json::json!({"template": name, "change": change}))
            .await;
        Ok(versions.into_iter().collect())
    }

    /// Deletes a template no machine uses.
    pub async fn delete_template(&self, name: &str, who: &str) -> Result<(), ManagedError> {
        let _one = self.lock.lock().await;
        if self.store.template(name).await?.is_none() {
            return Err(ManagedError::NotFound(format!("no template `{name}`")));
        }
        let users = self.store.machines_using(name).await?;
        if !users.is_empty() {
            return Err(ManagedError::Conflict(format!(
                "template `{name}` is applied to {}; take it off those machines first",
                users.join(", ")
            )));
        }
        self.store
            .save(ManagedChange {
                template: Some(TemplateWrite::Delete(name.to_string())),
                ..Default::default()
            })
            .await?;
        self.audit("", "sensors.template", who, serde_json::json!({"template": name, "change": "deleted"}))
            .await;
        Ok(())
    }
}

/// The relay settings a version carries (none when its payload cannot be read: it was signed
/// here, so that is damage, and the next save starts the relays afresh rather than failing).
fn current_relays(v: &VersionRecord) -> Vec<RelaySettings> {
    v.document.peek_unverified().map(|d| d.relays).unwrap_or_default()
}

/// What a relay change did, in words for the history ("relays: locked 1/3, named 1/2 `fan`").
fn relay_change(old: &[RelaySettings], new: &[RelaySettings]) -> String {
    let label = |r: &RelaySettings| format!("{}/{}", r.card, r.relay);
    let mut said = Vec::new();
    for r in new {
        match old.iter().find(|o| (o.card, o.relay) == (r.card, r.relay)) {
            None => said.push(format!("set {}", label(r))),
            Some(o) if o != r => said.push(format!("changed {}", label(r))),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|r| (o.card, o.relay) == (r.card, r.relay)) {
            said.push(format!("cleared {}", label(o)));
        }
    }
    if said.is_empty() {
        "relays: unchanged".into()
    } else {
        format!("relays: {}", said.join(", "))
    }
}

/// Problems of one machine's document, said to be that machine's when a change reaches several.
fn on_machine(machine: &str, machines: usize, problems: Vec<FieldProblem>) -> Vec<FieldProblem> {
    if machines == 1 {
        return problems;
    }
    problems
        .into_iter()
        .map(|p| FieldProblem { message: format!("{} (on machine {machine})", p.message), ..p })
        .collect()
}

fn template_view(t: &Template, machines: Vec<String>) -> serde_json::Value {
    serde_json::json!({
        "name": t.name,
        "sensors": t.sensors.iter().map(secrets::redacted).collect::<Vec<_>>(),
        "machines": machines,
        "updated_by": t.updated_by,
        "updated_at": t.updated_at,
    })
}

fn check_template_name(name: &str) -> Result<(), ManagedError> {
    let ok = !name.trim().is_empty()
        && name.trim() == name
        && name.chars().count() <= MAX_TEMPLATE_NAME
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("a template name is 1 to {MAX_TEMPLATE_NAME} letters, digits, spaces, `-`, `_` or `.`"),
        ))
    }
}

/// "template `web`: added http.a, edited tcp.b, removed cpu" (passwords compared sealed: a new
/// password is an edit).
fn template_change(name: &str, old: &[SensorConfig], new: &[SensorConfig]) -> String {
    let old_by: HashMap<String, &SensorConfig> = old.iter().map(|s| (s.id(), s)).collect();
    let new_ids: std::collections::HashSet<String> = new.iter().map(|s| s.id()).collect();
    let mut parts = Vec::new();
    for s in new {
        match old_by.get(&s.id()) {
            None => parts.push(format!("added {}", s.id())),
            Some(o) if *o != s => parts.push(format!("edited {}", s.id())),
            _ => {}
        }
    }
    for s in old {
        if !new_ids.contains(&s.id()) {
            parts.push(format!("removed {}", s.id()));
        }
    }
    if parts.is_empty() {
        parts.push("saved unchanged".into());
    }
    format!("template `{name}`: {}", parts.join(", "))
}
