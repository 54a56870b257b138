//! The cloud's mail: alerts on sensor state changes and the periodic status report of each
//! network, both through one durable outbox (`<data_dir>/mail-outbox`) drained by one sender.
//! [`start`] wires them from `[mail]`; ingest feeds the alerter through the returned channel.

mod reports;

pub use reports::{report_for, ReportRuns};

use crate::error::CloudError;
use crate::store::Store;
use crate::trust::Trust;
use outpost_shared::mail::{alerts, AlertEvent, Alerter, MailConfig, Outbox, SmtpTransport};
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// Starts the sender, the alerter and the report schedule; returns where ingest sends state
/// changes.
pub fn start(
    mail: &MailConfig,
    dir: &Path,
    store: &Store,
    sled: &crate::store::sled::SledStore,
    trust: &Trust,
    shutdown: &CancellationToken,
) -> Result<tokio::sync::mpsc::Sender<AlertEvent>, CloudError> {
    let transport =
        SmtpTransport::new(mail, Some(trust.key())).map_err(|e| CloudError::Mail(e.to_string()))?;
    let outbox = Outbox::open(&dir.join("mail-outbox")).map_err(|e| CloudError::Mail(e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(alerts::CHANNEL_CAPACITY);
    // Queued durably first, sent by its own task: a mail server that is down delays alerts and
    // reports, it does not lose them.
    outpost_shared::mail::spawn_sender(
        outbox.clone(),
        transport,
        outpost_shared::mail::outbox::default_backoff(),
        shutdown.clone().cancelled_owned(),
    );
    alerts::spawn_alerts(Alerter::new(mail), rx, outbox.clone(), shutdown.clone().cancelled_owned());
    if mail.daily_report_at().is_some() {
        let runs = ReportRuns::open(sled.db(), sled.flusher())?;
        reports::spawn(store.clone(), trust.clone(), mail.clone(), outbox, runs, shutdown.clone());
    }
    Ok(tx)
}
