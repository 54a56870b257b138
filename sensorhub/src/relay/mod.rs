//! Conrad 8-relay serial cards (order no. 197720 / 967720): driver, simulator, `relais` command
//! line and readings.
//!
//! - [`protocol`]: the 4-byte frames, command codes and timing of the card.
//! - [`RelayHandle`]: the driver. One thread owns the serial port (serialport is blocking) and
//!   serves requests from a bounded queue; callers await answers. It counts the cards with SETUP,
//!   checks every answer's checksum, retries damaged or missing answers (never a TOGGLE blindly),
//!   resynchronises after garbage, reopens a vanished port with jittered backoff, and reports
//!   only states it read back from a card.
//!   A port that vanishes while the driver is idle is noticed at its next exchange (the poller
//!   makes one every poll interval); from then on it is reopened in the background.
//! - [`Relays`]: what a hub with `[relay]` runs: the driver and the poller.
//! - [`spawn_poller`]: turns states into readings (`relay.<card>`, `relay.<card>.k1`…`k8`), every
//!   poll interval and at once after a change.
//! - [`run_simulator`] (Unix): cascaded cards on a real pseudo-terminal, with fault injection.
//! - [`relay_cli`]: `outpost relay -off -s1 -s3` → `OK: 5`.
//!
//! # Power-up rule (restore after a card lost power)
//!
//! A card numbers itself only when SETUP passes through it, and forgets that number when it loses
//! power ("after switching on, the card must first be initialised"). A card without a number
//! passes frames on unchanged, so a command to it comes back exactly as sent. Hence:
//! - During operation, a command that comes back unchanged means its card has been powered up:
//!   the driver counts the chain again, restores that card (config `restore`) and resends.
//! - Whenever the driver counts the chain (start, port back after unplugging, the case above) it
//!   first sends GET PORT to every known address; each that comes back unchanged is a card that
//!   was powered up. Beyond the known chain (at the very first start: from card 1) probing stops
//!   at the first such address, and every card from there on counts as powered up. So a hub
//!   starting after a site-wide power loss restores all cards, a restarted hub restores none.
//!
//! Restoring switches the `restore = "on"` relays on and the `"off"` ones off; `unset` relays stay
//! as the card came up (off). The count per card is in [`Snapshot::power_ups`].
//! Not detectable: a card that lost power while the hub was down but whose predecessor did not
//! is restored anyway at the hub's next start (the probe stops at the first echo).

pub mod cli;
pub mod config;
mod driver;
pub mod error;
mod handle;
mod hub;
mod poller;
pub mod protocol;
#[cfg(unix)]
pub mod simulator;

pub use cli::{relay_cli, run_cli};
pub use config::{DriverSettings, RelayConfig, RelaySettings, Restore, RestoreMask};
pub use driver::Snapshot;
pub use error::RelayError;
pub use handle::RelayHandle;
pub use hub::{LiveSettings, Relays};
pub use poller::{error_sample, spawn_poller, state_samples};
pub use protocol::{serial_floor, CardOptions, Command, Frame, FRAME_TIME};
#[cfg(unix)]
pub use simulator::{run_simulator, run_simulator_with, SimOptions, SimulatorHandle};

#[cfg(all(test, unix))]
mod tests;
