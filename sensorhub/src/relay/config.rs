//! The `[relay]` section of the hub's TOML, and the settings the driver is built from.
//!
//! ```toml
//! [relay]
//! port = "/dev/ttyUSB0"
//! poll_interval = "5s"
//!
//! [[relay.relays]]
//! card = 1
//! relay = 3
//! name = "pump"
//! locked = true      # the cloud may not switch it
//! restore = "on"     # switch it on again after the card lost power
//! ```

use super::error::RelayError;
use super::protocol::relay_bit;
use outpost_shared::config::{Problem, Validate};
use outpost_shared::relay_settings::validate_relay_settings;
pub use outpost_shared::relay_settings::{RelaySettings, Restore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The config section name the hub embeds [`RelayConfig`] under; problem keys start with it.
pub const SECTION: &str = "relay";

/// A commented example of the section, for `outpost config default`.
pub const EXAMPLE: &str = r#"[relay]
# Serial port of the first Conrad relay card (19200 baud 8N1 is fixed by the card).
port = "/dev/ttyUSB0"
# How often every card's relay states are read and sent; changes are sent at once anyway.
poll_interval = "5s"
# How long to wait for a card's answer (plus one frame time per card in the chain), and how often
# to send a command again after a damaged or missing answer.
reply_timeout = "200ms"
retries = 2

# One table per relay that needs a name, a lock or a state to restore after a power cycle.
[[relay.relays]]
card = 1
relay = 1
name = "pump"
locked = false
restore = "on"    # on, off or unset
"#;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The serial device; a stable name such as `/dev/serial/by-id/…` survives replugging.
    pub port: PathBuf,
    /// Every card is read this often; a change seen in between is sent at once.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Wait for an answer this long, plus [`FRAME_TIME`](super::FRAME_TIME) per card in the chain.
    #[serde(default = "default_reply_timeout", with = "humantime_serde")]
    pub reply_timeout: Duration,
    /// Extra attempts after a damaged or missing answer.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Per-relay settings; relays not listed are unnamed, unlocked and not restored.
    #[serde(default)]
    pub relays: Vec<RelaySettings>,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_reply_timeout() -> Duration {
    Duration::from_millis(200)
}

fn default_retries() -> u32 {
    2
}

impl Validate for RelayConfig {
    fn validate(&self, problems: &mut Vec<Problem>) {
        let key = |k: &str| format!("{SECTION}.{k}");
        if self.port.as_os_str().is_empty() {
            problems.push(Problem::new(key("port"), "must name the serial device, e.g. \"/dev/ttyUSB0\""));
        }
        if self.poll_interval < Duration::from_millis(100) {
            problems.push(Problem::new(key("poll_interval"), "must be at least 100ms"));
        }
        if self.reply_timeout < Duration::from_millis(10) || self.reply_timeout > Duration::from_secs(10) {
            problems.push(Problem::new(key("reply_timeout"), "must be between 10ms and 10s"));
        }
        if self.retries > 10 {
            problems.push(Problem::new(key("retries"), "must be at most 10"));
        }
        validate_relay_settings(&self.relays, &key("relays"), problems);
    }
}

impl RelayConfig {
    /// A config for `port` with every default and no per-relay settings.
    pub fn new(port: impl Into<PathBuf>) -> RelayConfig {
        RelayConfig {
            port: port.into(),
            poll_interval: default_poll_interval(),
            reply_timeout: default_reply_timeout(),
            retries: default_retries(),
            relays: Vec::new(),
        }
    }

    /// This local config with the cloud's settings (a managed document's `relays`) added. Field by
    /// field, what the local file says stays: the cloud names and restores relays the file says
    /// nothing about, and may lock any relay, but never unlocks one, renames one the file names
    /// or changes a restore rule the file sets. Asking to is a conflict, reported with the
    /// cloud's entry (`relays[i].name: …`), never resolved silently.
    pub fn with_managed(&self, managed: &[RelaySettings]) -> Result<RelayConfig, Vec<String>> {
        let mut merged = self.clone();
        let mut problems = Vec::new();
        for (i, m) in managed.iter().enumerate() {
            let Some(local) = merged.relays.iter_mut().find(|l| l.card == m.card && l.relay == m.relay)
            else {
                merged.relays.push(m.clone());
                continue;
            };
            let what = format!("card {} relay {}", m.card, m.relay);
            match (&local.name, &m.name) {
                (Some(mine), Some(theirs)) if mine != theirs => problems.push(format!(
                    "relays[{i}].name: {what} is named `{mine}` in the hub's local [relay] section; the cloud may not rename it"
                )),
                (None, Some(theirs)) => local.name = Some(theirs.clone()),
                _ => {}
            }
            match (local.restore, m.restore) {
                (mine, theirs) if mine != Restore::Unset && theirs != Restore::Unset && mine != theirs => {
                    problems.push(format!(
                        "relays[{i}].restore: the hub's local [relay] section sets {what} to restore {}; the cloud may not change that",
                        restore_word(mine)
                    ))
                }
                (Restore::Unset, theirs) => local.restore = theirs,
                _ => {}
            }
            local.locked |= m.locked;
        }
        if problems.is_empty() {
            Ok(merged)
        } else {
            Err(problems)
        }
    }

    pub fn relay(&self, card: u8, relay: u8) -> Option<&RelaySettings> {
        self.relays.iter().find(|r| r.card == card && r.relay == relay)
    }

    pub fn name(&self, card: u8, relay: u8) -> Option<&str> {
        self.relay(card, relay).and_then(|r| r.name.as_deref())
    }

    /// Bits of the relays of `card` that remote commands may not switch.
    pub fn locked_mask(&self, card: u8) -> u8 {
        self.relays
            .iter()
            .filter(|r| r.card == card && r.locked)
            .filter_map(|r| relay_bit(r.relay))
            .fold(0, |m, b| m | b)
    }

    /// For the hub's command handler: refuses a remote command that would switch any locked relay
    /// among the bits of `mask` (for SET PORT: `old ^ new`).
    pub fn check_remote(&self, card: u8, mask: u8) -> Result<(), RelayError> {
        let locked = self.locked_mask(card) & mask;
        if locked == 0 {
            return Ok(());
        }
        Err(RelayError::Locked { card, relay: locked.trailing_zeros() as u8 + 1 })
    }

    /// What the driver switches on and off on each card found to have lost power.
    pub fn restore_masks(&self) -> BTreeMap<u8, RestoreMask> {
        let mut masks: BTreeMap<u8, RestoreMask> = BTreeMap::new();
        for r in &self.relays {
            let Some(bit) = relay_bit(r.relay) else { continue };
            let m = masks.entry(r.card).or_default();
            match r.restore {
                Restore::On => m.on |= bit,
                Restore::Off => m.off |= bit,
                Restore::Unset => {}
            }
        }
        masks.retain(|_, m| m.on | m.off != 0);
        masks
    }

    /// The driver's settings; reconnect pacing keeps its defaults.
    pub fn driver_settings(&self) -> DriverSettings {
        DriverSettings {
            reply_timeout: self.reply_timeout,
            retries: self.retries,
            restore: self.restore_masks(),
            ..DriverSettings::new(&self.port)
        }
    }
}

/// Relays to switch on and off on a card after a power-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreMask {
    pub on: u8,
    pub off: u8,
}

/// What the driver needs; built from [`RelayConfig::driver_settings`] or, for the command line,
/// [`DriverSettings::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct DriverSettings {
    pub port: PathBuf,
    pub reply_timeout: Duration,
    pub retries: u32,
    /// Per card: what to restore after the card lost power.
    pub restore: BTreeMap<u8, RestoreMask>,
    /// Bounds of the jittered backoff between attempts to reopen a vanished port.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl DriverSettings {
    pub fn new(port: impl Into<PathBuf>) -> DriverSettings {
        DriverSettings {
            port: port.into(),
            reply_timeout: default_reply_timeout(),
            retries: default_retries(),
            restore: BTreeMap::new(),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

fn restore_word(r: Restore) -> &'static str {
    match r {
        Restore::On => "on",
        Restore::Off => "off",
        Restore::Unset => "nothing",
    }
}
