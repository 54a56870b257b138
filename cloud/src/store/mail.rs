//! What the cloud's mail keeps: the outbox (mails waiting for the mail server, behind
//! [`MailStore`], drained by `outpost_shared::mail::spawn_sender` through [`Outbox`]) and when
//! each network's last status report ended ([`ReportRuns`]).
//!
//! **Durability.** Every write is durable when it returns `Ok`: on sled after that database's
//! flush, on PostgreSQL after COMMIT. A mail is deleted only after the server accepted it, so a
//! crash in between sends it once more (same Message-ID), never not at all.

use crate::error::CloudError;
use chrono::{DateTime, Utc};
use outpost_shared::mail::{Mail, MailQueue, OutboxError, Queued};
use std::sync::Arc;

/// The outbox's storage. See the module docs for durability.
#[async_trait::async_trait]
pub trait MailStore: Send + Sync + 'static {
    /// Adds a mail; durable on return. Returns its id.
    async fn enqueue(&self, mail: &Mail) -> Result<u64, OutboxError>;
    /// The oldest waiting mail.
    async fn first(&self) -> Result<Option<Queued>, OutboxError>;
    /// Deletes a mail the server accepted.
    async fn remove(&self, id: u64) -> Result<(), OutboxError>;
    /// Sets aside a mail the server refused for good.
    async fn bury(&self, id: u64) -> Result<(), OutboxError>;
    async fn waiting(&self) -> usize;
    /// Returns when new mail may have arrived: on PostgreSQL also mail queued by another node.
    async fn wait_for_mail(&self);
}

/// The cloud's outbox handle, either engine behind it.
#[derive(Clone)]
pub struct Outbox(pub Arc<dyn MailStore>);

impl MailQueue for Outbox {
    async fn enqueue(&self, mail: &Mail) -> Result<u64, OutboxError> {
        self.0.enqueue(mail).await
    }
    async fn first(&self) -> Result<Option<Queued>, OutboxError> {
        self.0.first().await
    }
    async fn remove(&self, id: u64) -> Result<(), OutboxError> {
        self.0.remove(id).await
    }
    async fn bury(&self, id: u64) -> Result<(), OutboxError> {
        self.0.bury(id).await
    }
    async fn waiting(&self) -> usize {
        self.0.waiting().await
    }
    async fn wait_for_mail(&self) {
        self.0.wait_for_mail().await
    }
}

/// The sled engine of the outbox is the one hubs and connectors use too.
#[async_trait::async_trait]
impl MailStore for outpost_shared::mail::Outbox {
    async fn enqueue(&self, mail: &Mail) -> Result<u64, OutboxError> {
        MailQueue::enqueue(self, mail).await
    }
    async fn first(&self) -> Result<Option<Queued>, OutboxError> {
        MailQueue::first(self).await
    }
    async fn remove(&self, id: u64) -> Result<(), OutboxError> {
        MailQueue::remove(self, id).await
    }
    async fn bury(&self, id: u64) -> Result<(), OutboxError> {
        MailQueue::bury(self, id).await
    }
    async fn waiting(&self) -> usize {
        self.len()
    }
    async fn wait_for_mail(&self) {
        MailQueue::wait_for_mail(self).await
    }
}

/// When each network's last status report ended. Durable on return.
#[async_trait::async_trait]
pub trait ReportRuns: Send + Sync + 'static {
    async fn last(&self, network: &str) -> Result<Option<DateTime<Utc>>, CloudError>;
    async fn set(&self, network: &str, until: DateTime<Utc>) -> Result<(), CloudError>;
}

pub type Reports = Arc<dyn ReportRuns>;
