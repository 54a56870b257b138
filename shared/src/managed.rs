//! Sensors managed from the cloud: the [`SensorDocument`] the cloud signs for one machine, and
//! what the hub answers when it applies one.
//!
//! The cloud keeps each machine's sensors (its own and those of the templates applied to it),
//! validates them with the hub's rules ([`crate::sensor_config::validate_sensors_for`]), seals every
//! password to the machine's public key, and signs the result with its cloud key as a
//! [`Signed<SensorDocument>`]. The document travels inside a command (action [`APPLY_ACTION`],
//! parameter `document`) and is also what the hub keeps on disk to run offline after a restart,
//! so it is verified on its own, independent of the command that carried it: the cloud's
//! signature, the machine it is addressed to, and a version above the one the hub runs.

use crate::config::Problem;
use crate::keys::{MachineId, SignedKind};
use crate::relay_settings::{validate_relay_settings, RelaySettings};
use crate::sensor_config::{validate_sensors_for, Files, SensorConfig};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The command action that delivers a document: parameters `{"document": Signed<SensorDocument>}`.
pub const APPLY_ACTION: &str = "sensors.apply";

/// Most sensors one document may hold: a hub runs one task per sensor, and a document is read
/// whole into memory on the hub.
pub const MAX_SENSORS: usize = 500;

/// Most relay entries one document may hold (a long chain of cards, eight relays each).
pub const MAX_RELAYS: usize = 8 * 32;

/// The sensors the cloud wants one machine to run, besides the ones its local config names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SensorDocument {
    /// The machine this document is for; a hub refuses a document addressed to another.
    pub machine: MachineId,
    /// Rises with every change saved for this machine. A hub applies only a version above the
    /// one it runs, so an older document replayed later changes nothing.
    pub version: u64,
    pub issued_at: DateTime<Utc>,
    /// Who saved this version, as the cloud's audit trail names them.
    pub issued_by: String,
    /// Passwords are sealed to the machine's key (`keys::seal`); a plaintext one is refused.
    pub sensors: Vec<SensorConfig>,
    /// Names, locks and restore rules for the machine's relay cards. Left out when empty, so a
    /// document without relays reads the same to a hub that predates them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<RelaySettings>,
}

impl SignedKind for SensorDocument {
    const KIND: &'static str = "sensor-document";
}

impl SensorDocument {
    /// The checks that need no key: the hub's rules for every sensor, names unique, passwords
    /// sealed, a bounded count. Problems name the field (`sensor[2].warn`).
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        if self.sensors.len() > MAX_SENSORS {
            problems.push(Problem::new(
                "sensors",
                format!("{} sensors; a document holds at most {MAX_SENSORS}", self.sensors.len()),
            ));
            return Err(problems);
        }
        if self.relays.len() > MAX_RELAYS {
            problems.push(Problem::new(
                "relays",
                format!("{} relays; a document holds at most {MAX_RELAYS}", self.relays.len()),
            ));
            return Err(problems);
        }
        validate_relay_settings(&self.relays, "relays", &mut problems);
        // The files a sensor names are on the hub: the hub checks them when it builds the set.
        validate_sensors_for(&self.sensors, &mut problems, Files::Elsewhere);
        for (i, s) in self.sensors.iter().enumerate() {
            if s.password.as_ref().is_some_and(|p| !crate::keys::is_sealed(p.expose())) {
                problems.push(Problem::new(
                    format!("sensor[{i}].password"),
                    "is not sealed to the machine's key; a managed password travels only sealed",
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// What a hub reports for an [`APPLY_ACTION`] command (the result's `output`): the version it
/// runs now, and why it refused the delivered one, if it did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ApplyReport {
    /// The document version the hub runs after this command; none before the first.
    pub running: Option<u64>,
    /// The version this command delivered.
    pub delivered: u64,
    /// Why the delivered version was refused (the hub then keeps running `running`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor_config::{Secret, SensorKind};

    fn doc(sensors: Vec<SensorConfig>) -> SensorDocument {
        SensorDocument {
            machine: MachineId::parse(&"ab".repeat(16)).unwrap(),
            version: 1,
            issued_at: Utc::now(),
            issued_by: "user:test".into(),
            sensors,
            relays: vec![],
        }
    }

    fn http(name: &str) -> SensorConfig {
        let mut s = SensorConfig::new(SensorKind::Http);
        s.name = Some(name.into());
        s.url = Some("https://intranet.example/health".into());
        s
    }

    #[test]
    fn hub_rules_apply_and_problems_name_the_field() {
        assert!(doc(vec![http("web")]).validate().is_ok());
        let mut bad = http("web");
        bad.warn = Some(90.0);
        bad.error = Some(80.0);
        let problems = doc(vec![http("ok"), bad]).validate().unwrap_err();
        assert!(problems.iter().any(|p| p.to_string().contains("sensor[1]")), "{problems:?}");
        let twice = doc(vec![http("web"), http("web")]).validate().unwrap_err();
        assert!(!twice.is_empty(), "two sensors of one name were accepted");
    }

    #[test]
    fn files_on_the_hub_are_not_looked_for_where_the_document_is_made() {
        let mut s = http("web");
        s.ca_file = Some("/etc/outpost/only-on-the-hub/ca.pem".into());
        assert!(doc(vec![s.clone()]).validate().is_ok(), "the cloud cannot see the hub's files");
        let mut problems = Vec::new();
        crate::sensor_config::validate_sensors(&[s], &mut problems);
        assert!(problems.iter().any(|p| p.to_string().contains("ca_file")), "{problems:?}");
    }

    #[test]
    fn a_plaintext_password_is_refused() {
        let mut s = http("web");
        s.username = Some("monitor".into());
        s.password = Some(Secret::new("hunter2"));
        let problems = doc(vec![s]).validate().unwrap_err();
        assert!(problems.iter().any(|p| p.to_string().contains("sensor[0].password")), "{problems:?}");
    }

    #[test]
    fn relay_entries_follow_the_hubs_rules_and_a_document_without_them_reads_as_before() {
        let mut d = doc(vec![http("web")]);
        let plain = serde_json::to_value(&d).unwrap();
        assert!(plain.get("relays").is_none(), "no relays, no field: older hubs read it unchanged");
        d.relays = vec![RelaySettings { locked: true, ..RelaySettings::new(1, 3) }, RelaySettings::new(1, 9)];
        let problems = d.validate().unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "relays[1].relay");
        d.relays =
            (0..=MAX_RELAYS).map(|i| RelaySettings::new(1 + (i / 8) as u8, 1 + (i % 8) as u8)).collect();
        assert_eq!(d.validate().unwrap_err()[0].key, "relays");
    }

    #[test]
    fn too_many_sensors_are_refused_before_anything_else() {
        let many = (0..=MAX_SENSORS).map(|i| http(&format!("s{i}"))).collect();
        assert_eq!(doc(many).validate().unwrap_err().len(), 1);
    }
}
