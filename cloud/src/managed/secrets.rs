//! Passwords of managed sensors: taken in plaintext from the API only, sealed before anything
//! is stored, never printed or returned (answers say `"password": {"set": true}`).
//!
//! A machine's own sensor is sealed to that machine's key. A template's is sealed to the cloud's
//! own key (`cloud.key` in the data directory, never in the database), because it must be sealed
//! again for every machine the template reaches, including machines that join later; that
//! happens in memory when a document is built ([`reseal`]).

use super::FieldProblem;
use outpost_shared::keys::{is_sealed, seal, unseal, KeyPair, PublicKey, Secret};
use outpost_shared::sensor_config::SensorConfig;

/// What a request said about a sensor's password.
pub enum PasswordInput {
    /// Absent, or `{"set": true}` (what an answer shows): keep the one the sensor has.
    Keep,
    /// `null` or `{"set": false}`: remove it.
    Clear,
    /// A new password, plaintext until [`seal_input`] seals it.
    New(Secret),
}

/// A sensor as a request sent it: the table without its password, and the password apart.
pub struct SensorInput {
    pub config: SensorConfig,
    pub password: PasswordInput,
}

/// Reads one sensor of a request. Problems are keyed by `at` (e.g. `sensor` or `sensors[2]`);
/// no message ever quotes the password.
pub fn parse_sensor(value: serde_json::Value, at: &str) -> Result<SensorInput, Vec<FieldProblem>> {
    let serde_json::Value::Object(mut fields) = value else {
        return Err(vec![FieldProblem::new(at, "a sensor is a JSON object with at least `kind`")]);
    };
    let password = match fields.remove("password") {
        None => PasswordInput::Keep,
        Some(serde_json::Value::Null) => PasswordInput::Clear,
        Some(serde_json::Value::String(text)) => {
            if text.is_empty() {
                return Err(vec![FieldProblem::new(
                    format!("{at}.password"),
                    "is empty; leave `password` out to keep the one set, or send null to remove it",
                )]);
            }
            if is_sealed(&text) {
                return Err(vec![FieldProblem::new(
                    format!("{at}.password"),
                    "is already sealed; send the password itself: the cloud seals it to the right key",
                )]);
            }
            PasswordInput::New(Secret::new(text))
        }
        Some(serde_json::Value::Object(o))
            if o.len() == 1 && o.get("set").is_some_and(|v| v.is_boolean()) =>
        {
            if o["set"] == serde_json::Value::Bool(true) {
                PasswordInput::Keep
            } else {
                PasswordInput::Clear
            }
        }
        Some(_) => {
            return Err(vec![FieldProblem::new(
                format!("{at}.password"),
                "must be the password as a string, {\"set\": true} to keep it, or null to remove it",
            )])
        }
    };
    match serde_json::from_value::<SensorConfig>(serde_json::Value::Object(fields)) {
        Ok(config) => Ok(SensorInput { config, password }),
        Err(e) => Err(vec![FieldProblem::new(at, e.to_string())]),
    }
}

/// The stored form of a sensor: `input` with its password sealed to `recipient`, or the
/// `previous` version's sealed password kept, or none.
pub fn seal_input(
    input: SensorInput,
    recipient: &PublicKey,
    previous: Option<&SensorConfig>,
) -> Result<SensorConfig, outpost_shared::keys::SealError> {
    let mut config = input.config;
    config.password = match input.password {
        PasswordInput::New(plain) => Some(Secret::new(seal(recipient, plain.expose())?)),
        PasswordInput::Keep => previous.and_then(|p| p.password.clone()),
        PasswordInput::Clear => None,
    };
    Ok(config)
}

/// A template's password (sealed to the cloud) sealed again to one machine, in memory.
pub fn reseal(
    cloud: &KeyPair,
    machine: &PublicKey,
    sealed: &Secret,
) -> Result<Secret, outpost_shared::keys::SealError> {
    let plain = unseal(cloud, sealed.expose())?;
    Ok(Secret::new(seal(machine, plain.expose())?))
}

/// A sensor as answers show it: everything but the password, which is only said to be set.
pub fn redacted(s: &SensorConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("a sensor serialises");
    if let Some(o) = v.as_object_mut() {
        if o.contains_key("password") {
            o.insert("password".into(), serde_json::json!({"set": true}));
        }
    }
    v
}

/// The parameters of a command as answers show them: a `sensors.apply` document is summed up
/// (machine, version, sensor ids) instead of shown, so no answer carries even a sealed password.
/// The full signed document stays in the command record, where the hub's poll needs it.
pub fn shown_parameters(action: &str, parameters: &serde_json::Value) -> serde_json::Value {
    if action != outpost_shared::managed::APPLY_ACTION {
        return parameters.clone();
    }
    let doc =
        serde_json::from_value::<outpost_shared::keys::Signed<outpost_shared::managed::SensorDocument>>(
            parameters.get("document").cloned().unwrap_or_default(),
        )
        .ok()
        .and_then(|d| d.peek_unverified().ok());
    match doc {
        Some(d) => serde_json::json!({"document": {
            "machine": d.machine,
            "version": d.version,
            "issued_by": d.issued_by,
            "sensors": d.sensors.iter().map(|s| s.id()).collect::<Vec<_>>(),
        }}),
        None => serde_json::json!({"document": "(not a readable sensor document)"}),
    }
}
