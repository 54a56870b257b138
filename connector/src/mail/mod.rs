//! The connector's mail.
//!
//! - [`outage`]: the connector watches the readings it takes into custody and, while the cloud
//!   is unreachable, mails the alerts itself ([`Watch`]), without the cloud mailing them again.
//! - [`gateway`]: commands by mail (`[mail_commands]`): an SMTP listener on the LAN, TOTP codes,
//!   replay memory, answers by mail; relay commands are issued by the cloud.
//! - [`config`]: `[outage_alerts]`, `[mail_commands]`; the server and recipients are the shared
//!   `[mail]` table.
//!
//! Mails go through a durable outbox in `<data_dir>/mail-outbox` and the LAN mail server.

pub mod config;
pub mod gateway;
pub mod outage;
#[cfg(test)]
mod tests;

pub use outage::Watch;

use crate::{ConnectorConfig, ConnectorError};
use outpost_shared::keys::KeyPair;
use outpost_shared::mail::{alerts, Alerter, Outbox, SmtpTransport};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The mail side of a running connector.
pub(crate) struct MailSide {
    pub watch: Arc<Watch>,
    pub outbox: Outbox,
}

/// Starts the outbox sender, the alerter and the outage timer from the config; `None` when the
/// connector has no `[mail]`.
pub(crate) fn start(
    config: &ConnectorConfig,
    key: &KeyPair,
    dir: &Path,
    hostname: &str,
    shutdown: &CancellationToken,
) -> Result<Option<MailSide>, ConnectorError> {
    let Some(mail) = &config.mail else { return Ok(None) };
    let err = |e: String| ConnectorError::Mail(e);
    let transport = SmtpTransport::new(mail, Some(key)).map_err(|e| err(e.to_string()))?;
    let outbox = Outbox::open(&dir.join("mail-outbox")).map_err(|e| err(e.to_string()))?;
    outpost_shared::mail::spawn_sender(
        outbox.clone(),
        transport,
        outpost_shared::mail::outbox::default_backoff(),
        shutdown.clone().cancelled_owned(),
    );
    let alerts_tx = if config.outage_alerts.enabled {
        let (tx, rx) = tokio::sync::mpsc::channel(alerts::CHANNEL_CAPACITY);
        let note = format!(
            "Sent by the Outpost connector {hostname} ({}) because it could not reach the cloud for \
             more than {}: the cloud could not send this alert. The cloud takes over again once it \
             is reachable, and will not repeat this alert.",
            key.machine_id(),
            humantime::format_duration(config.outage_alerts.after)
        );
        let alerter = Alerter::new(mail).with_origin("connector", &note);
        alerts::spawn_alerts(alerter, rx, outbox.clone(), shutdown.clone().cancelled_owned());
        Some(tx)
    } else {
        None
    };
    let watch = Arc::new(
        Watch::new(config.outage_alerts.after, alerts_tx, Some(outbox.clone()))
            .map_err(|e| err(e.to_string()))?,
    );
    let timer = watch.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move { timer.run_timer(stop).await });
    Ok(Some(MailSide { watch, outbox }))
}

/// Starts the mail command gateway when `[mail_commands]` is enabled; returns the address it
/// listens on. `tls` is the LAN certificate's config, offered with STARTTLS.
pub(crate) async fn start_gateway(
    config: &ConnectorConfig,
    side: &MailSide,
    key: &Arc<KeyPair>,
    tls: Arc<rustls::ServerConfig>,
    hostname: &str,
    shutdown: &CancellationToken,
) -> Result<Option<std::net::SocketAddr>, ConnectorError> {
    let cfg = &config.mail_commands;
    if !cfg.enabled {
        return Ok(None);
    }
    let err = |e: String| ConnectorError::Mail(e);
    let cloud = match &config.cloud.url {
        Some(url) => Some(gateway::CloudLink {
            client: outpost_shared::tls::https_client(config.cloud.ca_file.as_deref(), config.cloud.timeout)?,
            base: url.trim_end_matches('/').to_string(),
            key: key.clone(),
        }),
        None => None,
    };
    let gw =
        gateway::Gateway::new(cfg, key, side.outbox.clone(), side.watch.clone(), cloud, hostname.to_string())
            .map_err(|e| err(e.to_string()))?;
    let addr = gateway::start(cfg, gw, Some(tls), hostname.to_string(), shutdown.clone())
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(Some(addr))
}
