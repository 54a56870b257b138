//! The cloud's mail: alerts on sensor state changes and the periodic status report of each
//! network, both through one durable outbox (on sled `<data_dir>/mail-outbox`, on PostgreSQL a
//! table) drained by one sender.
//! [`start`] wires them from `[mail]`; ingest feeds the alerter through the returned channel.

mod reports;

pub use reports::report_for;

use crate::error::CloudError;
use crate::nodes::Leader;
use crate::store::mail::Outbox;
use crate::store::Engines;
use crate::trust::Trust;
use outpost_shared::mail::{
    alerts, AlertEvent, Alerter, Mail, MailConfig, MailQueue, OutboxError, Queued, SmtpTransport,
};
use tokio_util::sync::CancellationToken;

/// Starts the sender, the alerter and the report schedule; returns where ingest sends state
/// changes.
pub fn start(
    mail: &MailConfig,
    engines: &Engines,
    trust: &Trust,
    silences: &crate::silences::Silences,
    leader: &Leader,
    shutdown: &CancellationToken,
) -> Result<tokio::sync::mpsc::Sender<AlertEvent>, CloudError> {
    let transport =
        SmtpTransport::new(mail, Some(trust.key())).map_err(|e| CloudError::Mail(e.to_string()))?;
    let outbox = engines
        .outbox
        .clone()
        .ok_or_else(|| CloudError::Mail("the storage engine was opened without an outbox".into()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(alerts::CHANNEL_CAPACITY);
    // Queued durably first, sent by its own task: a mail server that is down delays alerts and
    // reports, it does not lose them.
    outpost_shared::mail::spawn_sender(
        Gated { outbox: outbox.clone(), leader: leader.clone() },
        transport,
        outpost_shared::mail::outbox::default_backoff(),
        shutdown.clone().cancelled_owned(),
    );
    // Acknowledged problems and machines in maintenance are not mailed about.
    let alerter = Alerter::new(mail).with_silences(std::sync::Arc::new(silences.clone()));
    alerts::spawn_alerts(alerter, rx, outbox.clone(), shutdown.clone().cancelled_owned());
    if mail.daily_report_at().is_some() {
        reports::spawn(
            engines.readings.clone(),
            trust.clone(),
            mail.clone(),
            outbox,
            engines.reports.clone(),
            leader.clone(),
            shutdown.clone(),
        );
    }
    Ok(tx)
}

/// The outbox as the sender sees it: empty while this node is not the one running the
/// once-only jobs (several nodes share the outbox on PostgreSQL; one of them sends).
#[derive(Clone)]
struct Gated {
    outbox: Outbox,
    leader: Leader,
}

impl MailQueue for Gated {
    async fn enqueue(&self, mail: &Mail) -> Result<u64, OutboxError> {
        self.outbox.enqueue(mail).await
    }
    async fn first(&self) -> Result<Option<Queued>, OutboxError> {
        if !self.leader.holds() {
            return Ok(None);
        }
        self.outbox.first().await
    }
    async fn remove(&self, id: u64) -> Result<(), OutboxError> {
        self.outbox.remove(id).await
    }
    async fn bury(&self, id: u64) -> Result<(), OutboxError> {
        self.outbox.bury(id).await
    }
    async fn waiting(&self) -> usize {
        self.outbox.waiting().await
    }
    async fn wait_for_mail(&self) {
        if self.leader.holds() {
            self.outbox.wait_for_mail().await
        } else {
            // Look again when this node may have taken over.
            tokio::time::sleep(crate::nodes::TAKE_OVER).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that does not hold the jobs lock sends nothing, though the mail waits in the shared
    /// outbox; it still queues mail of its own.
    #[tokio::test]
    async fn only_the_node_running_the_jobs_takes_mail_out_of_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let inner = outpost_shared::mail::Outbox::open(dir.path()).unwrap();
        let outbox = Outbox(std::sync::Arc::new(inner));
        let mail = Mail {
            to: vec!["a@b.c".into()],
            subject: "s".into(),
            text: "t".into(),
            html: None,
            attachments: vec![],
        };
        let idle = Gated { outbox: outbox.clone(), leader: crate::nodes::Leader::standby() };
        idle.enqueue(&mail).await.unwrap();
        assert!(idle.first().await.unwrap().is_none(), "not this node's to send");
        let running = Gated { outbox, leader: crate::nodes::Leader::alone() };
        assert_eq!(running.first().await.unwrap().map(|q| q.mail.subject), Some("s".into()));
    }
}
