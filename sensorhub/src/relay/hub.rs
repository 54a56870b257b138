//! The relay cards of a running hub: the driver and its poller, started from `[relay]`, and the
//! settings in force, which a managed document may change while the hub runs.

use super::config::RelayConfig;
use super::handle::RelayHandle;
use super::poller::spawn_poller;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The relay settings in force: the local `[relay]` section, with a managed document's names,
/// locks and restore rules added ([`RelayConfig::with_managed`]). Readers take the current one
/// for each decision, so a lock the cloud adds holds from the next command on. Cheap to clone.
#[derive(Clone)]
pub struct LiveSettings(Arc<watch::Sender<Arc<RelayConfig>>>);

impl LiveSettings {
    pub fn new(config: RelayConfig) -> LiveSettings {
        LiveSettings(Arc::new(watch::channel(Arc::new(config)).0))
    }

    pub fn current(&self) -> Arc<RelayConfig> {
        self.0.borrow().clone()
    }

    fn replace(&self, config: RelayConfig) {
        self.0.send_replace(Arc::new(config));
    }
}

/// A hub's relay cards. Cheap to clone; every clone drives the same port.
#[derive(Clone)]
pub struct Relays {
    /// The driver. It does not know about `locked`: whoever acts on a remote request checks
    /// [`RelayConfig::check_remote`] of [`Relays::settings`] first (the hub's command executor
    /// does).
    pub handle: RelayHandle,
    /// Names, locks and restore rules in force.
    pub settings: LiveSettings,
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
        let settings = LiveSettings::new(config);
        let poller = spawn_poller(handle.clone(), settings.clone(), out, shutdown);
        (Relays { handle, settings }, poller)
    }

    /// Puts `config` in force: names from the next reading, locks from the next command, restore
    /// rules from the next power-up the driver notices. The port and poll pacing stay as started
    /// (they are the local file's alone).
    pub async fn apply(&self, config: RelayConfig) {
        let restore = config.restore_masks();
        self.settings.replace(config);
        if let Err(e) = self.handle.set_restore(restore).await {
            tracing::warn!(error = %e, "the relay driver has stopped; new restore rules not taken");
        }
    }
}
