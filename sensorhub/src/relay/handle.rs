//! The async face of the driver: a cloneable handle that queues requests for the driver thread
//! and awaits their answers.

use super::config::{DriverSettings, RestoreMask};
use super::driver::{Driver, Snapshot};
use super::error::RelayError;
use super::protocol::{relay_bit, CardOptions, Command, Frame};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

type Job = Box<dyn FnOnce(&mut Driver) + Send>;

/// Requests waiting for the driver thread. When the queue is full, callers wait (backpressure):
/// every request has someone awaiting its answer, so none is ever dropped. The serial line
/// handles a few hundred requests a second, so a full queue means a caller is flooding it.
const QUEUE: usize = 32;

/// Talks to the relay cards on one serial port. Cheap to clone; the driver thread stops when the
/// last clone is dropped, closing the port.
#[derive(Clone)]
pub struct RelayHandle {
    jobs: mpsc::Sender<Job>,
    snapshot: watch::Receiver<Snapshot>,
    port: Arc<PathBuf>,
}

impl RelayHandle {
    /// Starts the driver thread and returns at once. If the cards cannot be reached yet, the
    /// driver keeps trying in the background (jittered backoff) and every request tries too.
    pub fn spawn(settings: DriverSettings) -> RelayHandle {
        Self::start(settings, None)
    }

    /// Starts the driver thread and waits until the port is open and the cards are counted;
    /// fails (and stops the thread) if that does not work the first time.
    pub async fn connect(settings: DriverSettings) -> Result<RelayHandle, RelayError> {
        let (tx, rx) = oneshot::channel();
        let handle = Self::start(settings, Some(tx));
        rx.await.map_err(|_| RelayError::Stopped)??;
        Ok(handle)
    }

    fn start(
        settings: DriverSettings,
        first: Option<oneshot::Sender<Result<(), RelayError>>>,
    ) -> RelayHandle {
        let driver = Driver::new(settings);
        let snapshot = driver.subscribe();
        let port = Arc::new(driver.port().to_path_buf());
        let (jobs, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("relay-driver".into())
            .spawn(move || run(driver, rx, first))
            .expect("the OS refused to start the relay driver thread");
        RelayHandle { jobs, snapshot, port }
    }

    /// Runs `f` on the driver thread and returns its result.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Driver) -> Result<T, RelayError> + Send + 'static,
    ) -> Result<T, RelayError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |d| {
            let _ = tx.send(f(d));
        });
        self.jobs.send(job).await.map_err(|_| RelayError::Stopped)?;
        rx.await.map_err(|_| RelayError::Stopped)?
    }

    /// Closes the port and stops the driver thread, for every clone of this handle; returns once
    /// the port is closed, so it can be opened again at once. Requests still queued, and any made
    /// afterwards, fail with [`RelayError::Stopped`]. (Merely dropping the last handle also stops
    /// the driver, but without waiting for it.)
    pub async fn shutdown(&self) {
        let _ = self
            .call(|d| {
                d.close();
                Ok(())
            })
            .await;
    }

    pub fn port(&self) -> &Path {
        &self.port
    }

    /// Cards counted by the last SETUP (0 before the first success).
    pub fn cards(&self) -> u8 {
        self.snapshot.borrow().cards
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// Changes whenever the driver learns something: states read back, a lost or regained port.
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.clone()
    }

    /// Counts the cards again with SETUP (restoring cards found to have lost power).
    pub async fn recount(&self) -> Result<u8, RelayError> {
        self.call(|d| d.establish()).await
    }

    pub async fn nop(&self, card: u8) -> Result<(), RelayError> {
        self.call(move |d| d.nop(card)).await
    }

    /// The relay states of `card`, bit 0 = K1.
    pub async fn get(&self, card: u8) -> Result<u8, RelayError> {
        self.call(move |d| d.get_port(card)).await
    }

    /// Every card's states; the outer error means no card could be reached at all.
    pub async fn read_all(&self) -> Result<Vec<Result<u8, RelayError>>, RelayError> {
        self.call(|d| d.read_all()).await
    }

    /// Sets all eight relays of `card`; returns the states read back afterwards.
    pub async fn set_port(&self, card: u8, states: u8) -> Result<u8, RelayError> {
        self.call(move |d| d.set_port(card, states)).await
    }

    /// Switches on the relays in `mask`; returns the card's new states.
    pub async fn set_single(&self, card: u8, mask: u8) -> Result<u8, RelayError> {
        self.call(move |d| d.set_single(card, mask)).await
    }

    /// Switches off the relays in `mask`; returns the card's new states.
    pub async fn del_single(&self, card: u8, mask: u8) -> Result<u8, RelayError> {
        self.call(move |d| d.del_single(card, mask)).await
    }

    /// Flips the relays in `mask` (exactly once, even if an answer is lost).
    pub async fn toggle_mask(&self, card: u8, mask: u8) -> Result<u8, RelayError> {
        self.call(move |d| d.toggle(card, mask)).await
    }

    /// Switches relay `relay` (1..=8) on or off; returns the card's new states.
    pub async fn switch(&self, card: u8, relay: u8, on: bool) -> Result<u8, RelayError> {
        let bit = relay_bit(relay).ok_or(RelayError::BadRelay(relay))?;
        if on {
            self.set_single(card, bit).await
        } else {
            self.del_single(card, bit).await
        }
    }

    /// Flips relay `relay` (1..=8); returns the card's new states.
    pub async fn toggle(&self, card: u8, relay: u8) -> Result<u8, RelayError> {
        let bit = relay_bit(relay).ok_or(RelayError::BadRelay(relay))?;
        self.toggle_mask(card, bit).await
    }

    /// Replaces what the driver restores on cards found to have lost power (the managed
    /// document's restore rules took effect); applies from the next power-up it notices.
    pub async fn set_restore(&self, restore: BTreeMap<u8, RestoreMask>) -> Result<(), RelayError> {
        self.call(move |d| {
            d.set_restore(restore);
            Ok(())
        })
        .await
    }

    pub async fn get_option(&self, card: u8) -> Result<CardOptions, RelayError> {
        self.call(move |d| d.get_option(card)).await
    }

    /// Sets the broadcast options of `card`; returns them as read back.
    pub async fn set_option(&self, card: u8, options: CardOptions) -> Result<CardOptions, RelayError> {
        self.call(move |d| d.set_option(card, options)).await
    }

    /// Sends `command` with `data` to every card at once (sent once, never retried); returns the
    /// answers in chain order. Cards whose options refuse broadcasts do not answer.
    pub async fn broadcast(&self, command: Command, data: u8) -> Result<Vec<Frame>, RelayError> {
        self.call(move |d| d.broadcast(command, data)).await
    }

    /// Broadcast SET PORT; returns every card's states as read back afterwards (index card - 1).
    pub async fn broadcast_set_port(&self, states: u8) -> Result<Vec<u8>, RelayError> {
        self.call(move |d| d.broadcast_set_port(states)).await
    }
}

/// The driver thread. A tiny current-thread runtime only lets it wait for requests with a
/// deadline, so a vanished port is retried on the backoff schedule even when nobody asks.
fn run(
    mut driver: Driver,
    mut jobs: mpsc::Receiver<Job>,
    first: Option<oneshot::Sender<Result<(), RelayError>>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the relay driver");
            return;
        }
    };
    let started = driver.establish().map(|_| ());
    match (first, started) {
        (Some(tx), result) => {
            let failed = result.is_err();
            let _ = tx.send(result);
            if failed {
                return;
            }
        }
        (None, Err(e)) => {
            tracing::warn!(port = %driver.port().display(), error = %e, "relay cards not reachable yet; retrying")
        }
        (None, Ok(())) => {}
    }
    loop {
        let job = if driver.is_disconnected() {
            let wait = driver.until_next_attempt();
            match rt.block_on(async { tokio::time::timeout(wait, jobs.recv()).await }) {
                Ok(job) => job,
                Err(_) => {
                    if driver.establish().is_ok() {
                        tracing::info!(port = %driver.port().display(), "relay port back");
                    }
                    continue;
                }
            }
        } else {
            rt.block_on(jobs.recv())
        };
        match job {
            Some(job) => job(&mut driver),
            None => break,
        }
        if driver.is_closed() {
            break;
        }
    }
}
