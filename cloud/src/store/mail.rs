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

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::store::testing::Keep;
    use crate::store::Engines;

    crate::both_engines!(
        the_outbox_sends_oldest_first_and_sets_refused_mail_aside,
        report_runs_remember_each_network
    );

    fn mail(subject: &str) -> Mail {
        Mail {
            to: vec!["ops@example.org".into()],
            subject: subject.into(),
            text: "t".into(),
            html: None,
            attachments: Vec::new(),
        }
    }

    async fn the_outbox_sends_oldest_first_and_sets_refused_mail_aside(e: Engines, _k: &Keep) {
        let outbox = e.outbox.clone().expect("an outbox on both engines in tests");
        assert!(outbox.first().await.unwrap().is_none());
        let one = outbox.enqueue(&mail("one")).await.unwrap();
        let two = outbox.enqueue(&mail("two")).await.unwrap();
        outbox.enqueue(&mail("three")).await.unwrap();
        assert_eq!(outbox.waiting().await, 3);
        let first = outbox.first().await.unwrap().unwrap();
        assert_eq!((first.id, first.mail.subject.as_str()), (one, "one"));
        let again = outbox.first().await.unwrap().unwrap();
        assert_eq!(again.message_id, first.message_id, "the same Message-ID on every attempt");
        outbox.remove(one).await.unwrap();
        outbox.bury(two).await.unwrap();
        assert_eq!(outbox.first().await.unwrap().unwrap().mail.subject, "three");
        assert_eq!(outbox.waiting().await, 1, "sent and refused mail wait no more");
        // A waiting sender is woken by new mail.
        let waiter = {
            let o = outbox.clone();
            tokio::spawn(async move { o.wait_for_mail().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        outbox.enqueue(&mail("four")).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(2), waiter).await.expect("woken").unwrap();
    }

    async fn report_runs_remember_each_network(e: Engines, _k: &Keep) {
        let runs = e.reports.clone();
        assert_eq!(runs.last("plant").await.unwrap(), None);
        let t = chrono::DateTime::parse_from_rfc3339("2026-03-01T07:00:00Z").unwrap().with_timezone(&Utc);
        runs.set("plant", t).await.unwrap();
        runs.set("office", t - chrono::Duration::days(1)).await.unwrap();
        runs.set("plant", t + chrono::Duration::days(1)).await.unwrap();
        assert_eq!(runs.last("plant").await.unwrap(), Some(t + chrono::Duration::days(1)));
        assert_eq!(runs.last("office").await.unwrap(), Some(t - chrono::Duration::days(1)));
    }
}
