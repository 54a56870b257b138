//! Everything that can go wrong between the hub and its relay cards, each worded to say what to do.

use super::protocol::Frame;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(
        "serial port {} does not exist; check the port setting (`relay.port`, --port or \
         OUTPOST_RELAY_PORT) and that the adapter is plugged in",
        path.display()
    )]
    PortMissing { path: PathBuf },

    #[error(
        "no permission to open serial port {}; add this user to the group that owns it \
         (often `dialout`) and log in again",
        path.display()
    )]
    PortDenied { path: PathBuf },

    #[error(
        "serial port {} is in use by another program (a running sensorhub?); stop it, or switch \
         the relays through it",
        path.display()
    )]
    PortBusy { path: PathBuf },

    #[error("cannot open serial port {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: serialport::Error,
    },

    #[error("serial port {} went away ({source}); it is reopened as soon as it is back", path.display())]
    Disconnected {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "no relay card answers on {}; check the cable, the cards' power supply and that this is \
         the right port",
        path.display()
    )]
    NoCards { path: PathBuf },

    #[error(
        "no reply from card {card} within {} ms; check cabling and power of every card in the chain",
        timeout.as_millis()
    )]
    NoReply { card: u8, timeout: Duration },

    #[error(
        "no complete answer to the broadcast within {} ms ({replies} card(s) answered); check \
         cabling and power of every card in the chain",
        timeout.as_millis()
    )]
    BroadcastIncomplete { replies: usize, timeout: Duration },

    #[error(
        "card {card} does not exist: {cards} card(s) answer on this port; use a card number from 1 \
         to {cards}"
    )]
    NoSuchCard { card: u8, cards: u8 },

    #[error("card number 0 is the broadcast address; cards are numbered from 1")]
    BroadcastNotACard,

    #[error(
        "card {card} did not accept the command after {attempts} attempt(s){}; check the cable \
         for noise and that nothing else writes to the port",
        reply.map(|r| format!(" (last reply {r})")).unwrap_or_default()
    )]
    BadReply { card: u8, attempts: u32, reply: Option<Frame> },

    #[error("relay {0} does not exist; relays are numbered 1 to 8 (K1 to K8)")]
    BadRelay(u8),

    #[error(
        "relay K{relay} of card {card} is locked in the config (`locked = true`); remote switching refused"
    )]
    Locked { card: u8, relay: u8 },

    #[error("the relay driver has stopped; restart the sensorhub")]
    Stopped,

    #[error("cannot run the relay simulator: {0}")]
    Simulator(String),
}

impl RelayError {
    /// The frame a card answered with, when the failure is a card's answer rather than silence or a
    /// port problem: what `relais` prints after `FAIL:`.
    pub fn reply(&self) -> Option<Frame> {
        match self {
            RelayError::BadReply { reply, .. } => *reply,
            _ => None,
        }
    }

    /// Whether the serial port itself is the problem (missing, busy, gone), as opposed to the cards.
    pub fn is_port_problem(&self) -> bool {
        matches!(
            self,
            RelayError::PortMissing { .. }
                | RelayError::PortDenied { .. }
                | RelayError::PortBusy { .. }
                | RelayError::Open { .. }
                | RelayError::Disconnected { .. }
        )
    }
}
