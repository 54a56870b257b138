//! The connector's mail settings besides `[mail]` (the shared [`MailConfig`] table: server,
//! sender, recipients, alert timing): `[outage_alerts]`, when the connector mails alerts itself.
//!
//! [`MailConfig`]: outpost_shared::mail::MailConfig

use outpost_shared::config::Problem;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
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

/// `[mail_commands]`: the SMTP listener that takes commands by mail (off by default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MailCommands {
    pub enabled: bool,
    /// Address and port of the listener, e.g. `192.168.1.10:2525` (LAN side only).
    pub listen: SocketAddr,
    /// Source networks (CIDR, e.g. `192.168.1.0/24`) whose clients may connect; all others are
    /// refused at the greeting.
    pub allow_from: Vec<String>,
    /// Largest message taken (announced with SIZE).
    #[serde(with = "outpost_shared::config::size")]
    pub max_message_size: u64,
    /// Clients served at once; more are told to come back later.
    pub max_connections: usize,
    /// Longest wait for the next line from a client.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest session.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Offer STARTTLS with the connector's LAN certificate.
    pub starttls: bool,
    /// Take commands only over TLS (after STARTTLS): a code read off the LAN in clear is of no use
    /// after its step, but the mail also names machines and relays. On by default.
    pub require_tls: bool,
    /// Who may send commands.
    #[serde(rename = "sender")]
    pub senders: Vec<MailSender>,
}

/// `[[mail_commands.sender]]`: one person allowed to send commands.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MailSender {
    /// Their mail address; the envelope sender and the `From:` address must both be this.
    pub address: String,
    /// Their TOTP secret (base32, at least 128 bits: `outpost mail-code --new`), in clear or sealed
    /// to this connector's key (`outpost secret seal`).
    pub secret: String,
    /// May switch relays; without it only STATUS.
    #[serde(default)]
    pub write: bool,
}

impl std::fmt::Debug for MailSender {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailSender").field("address", &self.address).field("write", &self.write).finish()
    }
}

impl Default for MailCommands {
    fn default() -> Self {
        MailCommands {
            enabled: false,
            listen: "0.0.0.0:2525".parse().expect("valid literal"),
            allow_from: Vec::new(),
            max_message_size: 64 << 10,
            max_connections: 8,
            idle_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(120),
            starttls: true,
            require_tls: true,
            senders: Vec::new(),
        }
    }
}

impl MailCommands {
    pub fn check(&self, has_mail: bool, problems: &mut Vec<Problem>) {
        if !self.enabled {
            return;
        }
        if !has_mail {
            problems.push(Problem::new(
                "mail_commands.enabled",
                "needs a [mail] table: answers and refusals are sent through it",
            ));
        }
        if self.require_tls && !self.starttls {
            problems.push(Problem::new(
                "mail_commands.require_tls",
                "needs starttls = true (or set require_tls = false to take commands in clear on a trusted LAN)",
            ));
        }
        if self.allow_from.is_empty() {
            problems.push(Problem::new(
                "mail_commands.allow_from",
                "give the source networks allowed to send commands, e.g. [\"192.168.1.0/24\"]",
            ));
        }
        for a in &self.allow_from {
            if let Err(e) = a.parse::<super::gateway::Cidr>() {
                problems.push(Problem::new("mail_commands.allow_from", format!("`{a}`: {e}")));
            }
        }
        if !(1024..=10 << 20).contains(&self.max_message_size) {
            problems.push(Problem::new("mail_commands.max_message_size", "must be between 1KiB and 10MiB"));
        }
        if !(1..=1024).contains(&self.max_connections) {
            problems.push(Problem::new("mail_commands.max_connections", "must be between 1 and 1024"));
        }
        if self.idle_timeout < Duration::from_secs(1) {
            problems.push(Problem::new("mail_commands.idle_timeout", "must be at least 1s"));
        }
        if self.session_timeout < self.idle_timeout {
            problems.push(Problem::new("mail_commands.session_timeout", "must not be below idle_timeout"));
        }
        if self.senders.is_empty() {
            problems.push(Problem::new("mail_commands.sender", "give at least one [[mail_commands.sender]]"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.senders.iter().enumerate() {
            let key = |k: &str| format!("mail_commands.sender[{i}].{k}");
            if let Err(e) = outpost_shared::mail::config::check_address(&s.address) {
                problems.push(Problem::new(
                    key("address"),
                    format!("`{}` is not a mail address: {e}", s.address),
                ));
            }
            if !seen.insert(s.address.to_ascii_lowercase()) {
                problems.push(Problem::new(key("address"), "listed twice"));
            }
            if !outpost_shared::keys::is_sealed(&s.secret) {
                if let Err(e) = super::gateway::totp::decode_secret(&s.secret) {
                    problems.push(Problem::new(key("secret"), e.to_string()));
                }
            }
        }
    }
}
