//! What may be said about one relay of a Conrad card: its name, a lock against remote switching,
//! and what to do after the card lost power. The hub's `[[relay.relays]]` tables and the
//! `relays` of a managed [`crate::managed::SensorDocument`] both hold these, checked by the same
//! [`validate_relay_settings`].

use crate::config::Problem;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Longest relay name: it is shown with every reading of the relay.
pub const MAX_RELAY_NAME: usize = 64;

/// Cards one chain holds at most (the card's address byte; 0 is the broadcast address).
pub const MAX_CARD: u8 = 255;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySettings {
    /// Card in the chain, 1 = the one at the PC.
    #[serde(default = "default_card")]
    pub card: u8,
    /// 1 = K1 … 8 = K8.
    pub relay: u8,
    /// Shown with the relay's readings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Refuse switching this relay by remote command (local `outpost relay` still works).
    #[serde(default)]
    pub locked: bool,
    /// What to do with this relay when its card is found to have lost power.
    #[serde(default)]
    pub restore: Restore,
}

/// A card comes back from a power loss with every relay off. `Restore` says what the driver does
/// about that relay as soon as it notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restore {
    /// Switch the relay on again.
    On,
    /// Switch the relay off (explicitly, in case the card came up otherwise).
    Off,
    /// Leave the relay as the card came up.
    #[default]
    Unset,
}

fn default_card() -> u8 {
    1
}

impl RelaySettings {
    /// Settings for one relay with nothing said about it yet.
    pub fn new(card: u8, relay: u8) -> RelaySettings {
        RelaySettings { card, relay, name: None, locked: false, restore: Restore::Unset }
    }
}

/// Checks a list of relay settings; problem keys are `{prefix}[i].field`.
pub fn validate_relay_settings(relays: &[RelaySettings], prefix: &str, problems: &mut Vec<Problem>) {
    let mut seen = BTreeSet::new();
    for (i, r) in relays.iter().enumerate() {
        let key = |k: &str| format!("{prefix}[{i}].{k}");
        if r.card == 0 {
            problems
                .push(Problem::new(key("card"), "cards are numbered from 1 (0 is the broadcast address)"));
        }
        if !(1..=8).contains(&r.relay) {
            problems.push(Problem::new(key("relay"), "relays are numbered 1 to 8 (K1 to K8)"));
        }
        if let Some(name) = &r.name {
            if name.trim().is_empty() {
                problems.push(Problem::new(key("name"), "must not be empty; leave it out instead"));
            } else if name.chars().count() > MAX_RELAY_NAME {
                problems
                    .push(Problem::new(key("name"), format!("must be at most {MAX_RELAY_NAME} characters")));
            } else if name.chars().any(char::is_control) {
                problems.push(Problem::new(key("name"), "must not hold control characters"));
            }
        }
        if !seen.insert((r.card, r.relay)) {
            problems.push(Problem::new(
                key("relay"),
                format!("card {} relay {} is configured twice", r.card, r.relay),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(relays: &[RelaySettings]) -> Vec<String> {
        let mut p = Vec::new();
        validate_relay_settings(relays, "relays", &mut p);
        p.iter().map(|p| format!("{}: {}", p.key, p.message)).collect()
    }

    #[test]
    fn each_problem_names_the_entry_and_field() {
        let named = |name: &str| RelaySettings { name: Some(name.into()), ..RelaySettings::new(1, 2) };
        assert!(problems(&[named("pump"), RelaySettings::new(2, 8)]).is_empty());
        assert!(problems(&[RelaySettings::new(0, 1)])[0].starts_with("relays[0].card"));
        assert!(problems(&[RelaySettings::new(1, 9)])[0].starts_with("relays[0].relay"));
        assert!(problems(&[RelaySettings::new(1, 0)])[0].starts_with("relays[0].relay"));
        assert!(problems(&[named(" ")])[0].starts_with("relays[0].name"));
        assert!(problems(&[named(&"x".repeat(MAX_RELAY_NAME + 1))])[0].starts_with("relays[0].name"));
        assert!(problems(&[named("pump\u{1b}[2J")])[0].starts_with("relays[0].name"));
        let twice = problems(&[RelaySettings::new(1, 3), named("again")]);
        assert_eq!(twice.len(), 0, "different relays");
        let twice = problems(&[named("a"), named("b")]);
        assert!(twice[0].starts_with("relays[1].relay") && twice[0].contains("twice"), "{twice:?}");
    }

    #[test]
    fn the_wire_form_is_small_and_strict() {
        let r: RelaySettings = serde_json::from_str(r#"{"relay":3,"locked":true}"#).unwrap();
        assert_eq!(r, RelaySettings { locked: true, ..RelaySettings::new(1, 3) });
        assert!(serde_json::from_str::<RelaySettings>(r#"{"relay":3,"port":"/dev/ttyS0"}"#).is_err());
        assert!(serde_json::from_str::<RelaySettings>(r#"{"relay":3,"restore":"maybe"}"#).is_err());
    }
}
