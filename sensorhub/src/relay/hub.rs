//! The relay cards of a running hub: the driver and its poller started from `[relay]`, and the one
//! door through which remote commands switch relays, so the `locked` setting cannot be bypassed.

use super::config::RelayConfig;
use super::error::RelayError;
use super::handle::RelayHandle;
use super::poller::spawn_poller;
use super::protocol::relay_bit;
use outpost_shared::model::Sample;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A hub's relay cards. Cheap to clone; every clone drives the same port.
#[derive(Clone)]
pub struct Relays {
    /// The driver: local switching (and reads) go straight through it, `locked` does not apply.
    pub handle: RelayHandle,
    /// The `[relay]` section the hub was started with: names, locks, restore rules.
    pub config: Arc<RelayConfig>,
}

impl Relays {
    /// Starts the driver and the poller that sends relay readings to `out` (the sensors' sample
    /// channel) until `shutdown`. Returns at once: cards that cannot be reached yet are retried
    /// in the background, and until then their readings say `unavailable`. The returned task ends
    /// when the poller has stopped; the driver stays open until [`RelayHandle::shutdown`].
    pub fn start(
        config: RelayConfig,
        out: mpsc::Sender<Vec<Sample>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (Relays, JoinHandle<()>) {
        let handle = RelayHandle::spawn(config.driver_settings());
        let poller = spawn_poller(handle.clone(), config.clone(), out, shutdown);
        (Relays { handle, config: Arc::new(config) }, poller)
    }

    /// Switches relay `relay` (1..=8) of `card` on or off as a remote command asks; returns the
    /// card's states read back afterwards. A relay with `locked = true` is refused with
    /// [`RelayError::Locked`] before anything is sent to the card.
    pub async fn switch_remote(&self, card: u8, relay: u8, on: bool) -> Result<u8, RelayError> {
        let bit = relay_bit(relay).ok_or(RelayError::BadRelay(relay))?;
        self.config.check_remote(card, bit)?;
        self.handle.switch(card, relay, on).await
    }
}
