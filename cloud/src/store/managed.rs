//! What the cloud keeps of sensors managed from the cloud, behind one trait ([`ManagedStore`])
//! with the same two engines as readings: [`super::sled::managed`] and
//! [`super::postgres::managed`].
//!
//! It holds each machine's own sensors, the templates (a name and its sensors), which templates
//! apply to which machine (in order), each machine's history of signed documents (the newest is
//! its version counter; an older one is what a roll-back re-issues), and which command delivered
//! which version.
//!
//! Passwords are never here in plaintext: a machine's own sensors hold them sealed to that
//! machine's key, a template's sealed to the cloud's own key (a file in the data directory, never
//! in the database), so a copy of the database alone reveals none of them.
//!
//! **Durability.** Every write method returns after its data is durable: on sled after the
//! database's one group-commit flush, on PostgreSQL after COMMIT. [`ManagedStore::save`] is one
//! atomic step on both engines: the configuration and the new versions it causes are kept
//! together or not at all.

use crate::error::CloudError;
use chrono::{DateTime, Utc};
use outpost_shared::keys::Signed;
use outpost_shared::managed::SensorDocument;
use outpost_shared::sensor_config::SensorConfig;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Versions of one machine's history kept; older ones are deleted when a new one is saved (a
/// roll-back reaches this far back).
pub const HISTORY_KEPT: u64 = 200;

/// Deliveries kept per machine (newest first); older ones are deleted when one is noted.
pub const DELIVERIES_KEPT: usize = 50;

/// The handle the cloud passes around, either engine behind it.
pub type Managed = Arc<dyn ManagedStore>;

/// A named set of sensors applied to many machines.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Template {
    pub name: String,
    /// Passwords sealed to the cloud's own key; sealed again per machine when a document is built.
    pub sensors: Vec<SensorConfig>,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

/// One version of one machine's document, as signed and delivered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionRecord {
    pub machine: String,
    pub version: u64,
    pub at: DateTime<Utc>,
    /// Who saved it, as the audit trail names them.
    pub who: String,
    /// What changed, in words ("added http.web", "template `web`: edited tcp.db").
    pub change: String,
    pub document: Signed<SensorDocument>,
}

/// A command that carried a version to its machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    pub machine: String,
    pub version: u64,
    pub command: String,
    pub at: DateTime<Utc>,
}

/// A template written or deleted as part of a [`ManagedChange`].
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateWrite {
    Put(Template),
    Delete(String),
}

/// Everything one save changes, kept atomically by [`ManagedStore::save`].
#[derive(Debug, Clone, Default)]
pub struct ManagedChange {
    /// Machines whose own sensors are replaced by these.
    pub machine_sensors: Vec<(String, Vec<SensorConfig>)>,
    /// Machines whose template list is replaced by this one (in order).
    pub assignments: Vec<(String, Vec<String>)>,
    pub template: Option<TemplateWrite>,
    /// The new version of each machine the change reaches. Each must be exactly one above the
    /// machine's newest: otherwise someone else saved in between, and nothing is kept
    /// ([`CloudError::Conflict`]).
    pub versions: Vec<VersionRecord>,
}

/// See the module docs for what is kept and when a write is durable.
#[async_trait::async_trait]
pub trait ManagedStore: Send + Sync + 'static {
    /// A machine's own sensors (empty when it has none).
    async fn machine_sensors(&self, machine: &str) -> Result<Vec<SensorConfig>, CloudError>;

    /// The names of the templates applied to a machine, in the order they apply.
    async fn machine_templates(&self, machine: &str) -> Result<Vec<String>, CloudError>;

    /// Every template, by name.
    async fn templates(&self) -> Result<Vec<Template>, CloudError>;

    async fn template(&self, name: &str) -> Result<Option<Template>, CloudError>;

    /// The machines a template applies to, by id.
    async fn machines_using(&self, template: &str) -> Result<Vec<String>, CloudError>;

    /// The newest version of a machine's document: its version counter.
    async fn latest_version(&self, machine: &str) -> Result<Option<VersionRecord>, CloudError>;

    async fn version(&self, machine: &str, version: u64) -> Result<Option<VersionRecord>, CloudError>;

    /// A machine's versions, newest first, at most `limit`.
    async fn history(&self, machine: &str, limit: usize) -> Result<Vec<VersionRecord>, CloudError>;

    /// Every machine that has at least one version, by id.
    async fn managed_machines(&self) -> Result<Vec<String>, CloudError>;

    /// Applies a change atomically; durable on return. Versions older than [`HISTORY_KEPT`]
    /// below the new one are deleted with it.
    async fn save(&self, change: ManagedChange) -> Result<(), CloudError>;

    /// Remembers that `command` carries a version; durable on return. Keeps the machine's newest
    /// [`DELIVERIES_KEPT`].
    async fn note_delivery(&self, delivery: Delivery) -> Result<(), CloudError>;

    /// The commands that carried a machine's versions, newest version first (and newest command
    /// first within one), at most `limit`.
    async fn deliveries(&self, machine: &str, limit: usize) -> Result<Vec<Delivery>, CloudError>;
}

/// Checks the versions of a change against the machine's newest (the rule both engines apply).
pub(crate) fn check_next(machine: &str, newest: u64, next: u64) -> Result<(), CloudError> {
    if next == newest + 1 {
        Ok(())
    } else {
        Err(CloudError::Conflict(format!(
            "the sensors of {machine} changed meanwhile (now version {newest}); reload and save again"
        )))
    }
}
