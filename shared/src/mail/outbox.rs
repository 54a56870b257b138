//! The outbox: mails on disk until the mail server has accepted them.
//!
//! Durability: [`Outbox::enqueue`] returns after sled flushed the entry, so an alert survives a
//! crash or a power cut from then on. The sender deletes an entry only after the server answered
//! 250 to its DATA, so a mail server that is down, slow or refusing the login delays mail but loses
//! none. A crash between that answer and the delete sends the mail once more; its `Message-ID`
//! is the same both times, so mail clients show it once.
//!
//! Mails go out oldest first, one at a time; a mail the server refuses for good (5xx for the
//! message itself) is moved to the `dead` tree and logged, so one bad recipient cannot block every
//! later alert. The queue is bounded by [`MAX_QUEUED`]: when full the *oldest* mail is moved to
//! `dead` (a fresh alert matters more than a stale one) and counted in the log.

use super::error::OutboxError;
use super::transport::Transport;
use super::Mail;
use crate::backoff::Backoff;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Mails kept waiting at most; beyond this the oldest is set aside (see the module doc).
pub const MAX_QUEUED: usize = 10_000;

#[derive(Serialize, Deserialize)]
struct Entry {
    message_id: String,
    mail: Mail,
}

/// The durable queue; cheap to clone (one sled database shared).
#[derive(Clone)]
pub struct Outbox {
    db: sled::Db,
    /// Enqueues, deletions and the roles' state trees share flushes, one at a time.
    flusher: crate::group_flush::GroupFlush,
    queue: sled::Tree,
    dead: sled::Tree,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("queued", &self.queue.len()).finish()
    }
}

impl Outbox {
    /// Opens (or creates) the outbox in directory `path`.
    pub fn open(path: &Path) -> Result<Outbox, OutboxError> {
        let db = sled::Config::new()
            .path(path)
            // A few mails in flight: no need for sled's 1 GiB default page cache.
            .cache_capacity(4 * 1024 * 1024)
            .open()
            .map_err(|source| OutboxError::Open { path: path.display().to_string(), source })?;
        let queue = db.open_tree("queue")?;
        let dead = db.open_tree("dead")?;
        let flusher = crate::group_flush::GroupFlush::new(db.clone());
        Ok(Outbox { db, flusher, queue, dead, wake: Arc::new(Notify::new()) })
    }

    /// Adds a mail; it is on disk when this returns. Returns its queue id.
    pub async fn enqueue(&self, mail: &Mail) -> Result<u64, OutboxError> {
        let id = self.db.generate_id()?;
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).map_err(|e| OutboxError::Corrupt { id, detail: e.to_string() })?;
        let entry = Entry { message_id: format!("{id}.{}@outpost", hex::encode(rnd)), mail: mail.clone() };
        let bytes =
            serde_json::to_vec(&entry).map_err(|e| OutboxError::Corrupt { id, detail: e.to_string() })?;
        self.queue.insert(id.to_be_bytes(), bytes)?;
        while self.queue.len() > MAX_QUEUED {
            if let Some((k, v)) = self.queue.pop_min()? {
                tracing::error!(queued = MAX_QUEUED, "mail outbox full: oldest mail set aside unsent");
                self.dead.insert(k, v)?;
            }
        }
        self.flusher.flush().await?;
        self.wake.notify_one();
        Ok(id)
    }

    /// Another tree in the outbox's database, for a role's small mail state that must be durable
    /// with the mails (a connector's outage notes, the mail gateway's replay memory).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, OutboxError> {
        Ok(self.db.open_tree(name)?)
    }

    /// A number never handed out before by this database (keys for [`Outbox::tree`] entries).
    pub fn next_id(&self) -> Result<u64, OutboxError> {
        Ok(self.db.generate_id()?)
    }

    /// Waits until every write to the database so far is on disk.
    pub async fn flush(&self) -> Result<(), OutboxError> {
        self.flusher.flush().await?;
        Ok(())
    }

    /// Mails waiting to be sent.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Mails the server refused for good (or that overflowed the queue), kept for inspection.
    pub fn dead_len(&self) -> usize {
        self.dead.len()
    }

    /// The oldest waiting mail.
    fn first(&self) -> Result<Option<(u64, Entry)>, OutboxError> {
        let Some((k, v)) = self.queue.first()? else { return Ok(None) };
        let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
        match serde_json::from_slice::<Entry>(&v) {
            Ok(e) => Ok(Some((id, e))),
            Err(e) => {
                // Unreadable: set aside rather than loop on it forever.
                self.dead.insert(k.clone(), v)?;
                self.queue.remove(k)?;
                Err(OutboxError::Corrupt { id, detail: e.to_string() })
            }
        }
    }

    async fn remove(&self, id: u64) -> Result<(), OutboxError> {
        self.queue.remove(id.to_be_bytes())?;
        self.flusher.flush().await?;
        Ok(())
    }

    async fn bury(&self, id: u64) -> Result<(), OutboxError> {
        if let Some(v) = self.queue.remove(id.to_be_bytes())? {
            self.dead.insert(id.to_be_bytes(), v)?;
        }
        self.flusher.flush().await?;
        Ok(())
    }
}

/// A mail waiting in a queue, as the sender takes it.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The queue's id of the entry, for [`MailQueue::remove`] and [`MailQueue::bury`].
    pub id: u64,
    /// The same on every attempt, so a mail sent twice (a crash between the server's answer and
    /// the delete) is shown once.
    pub message_id: String,
    pub mail: Mail,
}

/// A durable mail queue that [`spawn_sender`] drains and [`super::alerts::spawn_alerts`] fills:
/// the sled [`Outbox`] here, or another engine (the cloud keeps its outbox in its own database).
///
/// Durability, for every implementation: a mail is durable once [`MailQueue::enqueue`] returned
/// `Ok`; [`MailQueue::remove`] and [`MailQueue::bury`] are durable on return. An engine that cannot
/// be reached answers [`OutboxError::Unavailable`] and keeps nothing of the failed call.
pub trait MailQueue: Clone + Send + Sync + 'static {
    /// Adds a mail; durable on return. Returns its id.
    fn enqueue(&self, mail: &Mail) -> impl Future<Output = Result<u64, OutboxError>> + Send;
    /// The oldest waiting mail. An unreadable entry is set aside and reported as an error.
    fn first(&self) -> impl Future<Output = Result<Option<Queued>, OutboxError>> + Send;
    /// Deletes a mail the server accepted.
    fn remove(&self, id: u64) -> impl Future<Output = Result<(), OutboxError>> + Send;
    /// Sets aside a mail the server refused for good.
    fn bury(&self, id: u64) -> impl Future<Output = Result<(), OutboxError>> + Send;
    /// Mails waiting, for the log.
    fn waiting(&self) -> impl Future<Output = usize> + Send;
    /// Returns when new mail may have arrived (the sender then looks again).
    fn wait_for_mail(&self) -> impl Future<Output = ()> + Send;
}

impl MailQueue for Outbox {
    async fn enqueue(&self, mail: &Mail) -> Result<u64, OutboxError> {
        Outbox::enqueue(self, mail).await
    }

    async fn first(&self) -> Result<Option<Queued>, OutboxError> {
        Ok(Outbox::first(self)?.map(|(id, e)| Queued { id, message_id: e.message_id, mail: e.mail }))
    }

    async fn remove(&self, id: u64) -> Result<(), OutboxError> {
        Outbox::remove(self, id).await
    }

    async fn bury(&self, id: u64) -> Result<(), OutboxError> {
        Outbox::bury(self, id).await
    }

    async fn waiting(&self) -> usize {
        self.len()
    }

    async fn wait_for_mail(&self) {
        self.wake.notified().await
    }
}

/// The retry policy of the sender: 5 s doubling to 10 min.
pub fn default_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(5), Duration::from_secs(600), 0.3).expect("valid constants")
}

/// Sends what is in the outbox, oldest first, until `shutdown` resolves. Waits for new mail
/// without polling; after a failure waits [`Backoff`]'s delay (or less, if `shutdown` comes).
pub fn spawn_sender<T: Transport, Q: MailQueue>(
    outbox: Q,
    transport: T,
    backoff: Backoff,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        let mut backoff = backoff;
        loop {
            let next = match outbox.first().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "mail outbox");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        _ = &mut shutdown => return,
                    }
                }
            };
            let Some(Queued { id, message_id, mail }) = next else {
                tokio::select! {
                    _ = outbox.wait_for_mail() => continue,
                    _ = &mut shutdown => return,
                }
            };
            let result = tokio::select! {
                r = transport.send(&mail, &message_id) => r,
                _ = &mut shutdown => return,
            };
            let done = match result {
                Ok(()) => {
                    tracing::info!(id, to = ?mail.to, subject = %mail.subject, "mail sent");
                    backoff.reset();
                    outbox.remove(id).await
                }
                Err(e) if e.is_permanent() => {
                    tracing::error!(id, error = %e, subject = %mail.subject, "mail refused for good; set aside");
                    outbox.bury(id).await
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    let waiting = outbox.waiting().await;
                    tracing::warn!(id, error = %e, retry_in = ?delay, waiting, "mail not sent");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => Ok(()),
                        _ = &mut shutdown => return,
                    }
                }
            };
            if let Err(e) = done {
                tracing::error!(error = %e, "mail outbox");
                // Disk trouble: do not spin.
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = &mut shutdown => return,
                }
            }
        }
    })
}
