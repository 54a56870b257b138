//! The connector's mail settings besides `[mail]` (the shared [`MailConfig`] table: server,
//! sender, recipients, alert timing): `[outage_alerts]`, when the connector mails alerts itself.
//!
//! [`MailConfig`]: outpost_shared::mail::MailConfig

use outpost_shared::config::Problem;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[outage_alerts]`: alerts from the connector while the cloud is unreachable (needs `[mail]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutageAlerts {
    pub enabled: bool,
    /// Forwarding to the cloud must have failed this long before the connector mails alerts.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
}

impl Default for OutageAlerts {
    fn default() -> Self {
        OutageAlerts { enabled: true, after: Duration::from_secs(120) }
    }
}

impl OutageAlerts {
    pub fn check(&self, problems: &mut Vec<Problem>) {
        if self.after < Duration::from_secs(1) {
            problems.push(Problem::new("outage_alerts.after", "must be at least 1s"));
        }
    }
}
