//! The relay cards of a running hub: the driver and its poller, started from `[relay]`.

use super::config::RelayConfig;
use super::handle::RelayHandle;
use super::poller::spawn_poller;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A hub's relay cards. Cheap to clone; every clone drives the same port.
#[derive(Clone)]
pub struct Relays {
    /// The driver. It does not know about `locked`: whoever acts on a remote request checks
    /// [`RelayConfig::check_remote`] first (the hub's command executor does).
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
        out: mpsc::Sender<crate::writer::Batch>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (Relays, JoinHandle<()>) {
        let handle = RelayHandle::spawn(config.driver_settings());
        let poller = spawn_poller(handle.clone(), config.clone(), out, shutdown);
        (Relays { handle, config: Arc::new(config) }, poller)
    }
}
