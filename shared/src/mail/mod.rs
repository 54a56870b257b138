//! Mail: alerts and reports over SMTP, always encrypted unless the config says otherwise.
//!
//! - [`config`]: `[mail]` ([`MailConfig`]): server, TLS mode, CA file, login, routes, timing.
//! - [`transport`]: [`SmtpTransport`], one SMTP conversation per mail over lettre + rustls:
//!   port 465 is implicit TLS, every other port must upgrade with STARTTLS (no downgrade), the
//!   certificate is checked against the configured CA or the system roots, the password may be
//!   sealed to this machine's key.
//! - [`alerts`]: [`Alerter`], pure logic from sensor state changes to grouped alert [`Mail`]s
//!   (grouping window, quiet period against flapping, no alerts for replayed backlog, routes).
//! - [`outbox`]: [`Outbox`], a sled queue on disk; a mail is durable once `enqueue` returns and is
//!   deleted only after the server accepted it. [`spawn_sender`] drains it with backoff.
//! - [`report`]: the periodic status report (text + HTML + CSV attachment) and its schedule.

pub mod alerts;
pub mod config;
mod error;
pub mod outbox;
pub mod report;
pub mod transport;

#[cfg(test)]
mod tests;

pub use alerts::{AlertEvent, Alerter, Observed, Silence, Silences, StateChange};
pub use config::{AlertTiming, MailConfig, Route, TlsMode};
pub use error::{OutboxError, SendError, SetupError};
pub use outbox::{spawn_sender, MailQueue, Outbox, Queued};
pub use transport::{SmtpTransport, Transport};

use serde::{Deserialize, Serialize};

/// One mail as Outpost composes it; the sender address comes from the transport's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mail {
    pub to: Vec<String>,
    pub subject: String,
    /// The plain-text part; always present, so every mail reader shows something.
    pub text: String,
    /// An HTML alternative of the same content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A file attached to a mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub filename: String,
    /// MIME type, e.g. `text/csv; charset=utf-8`.
    pub content_type: String,
    #[serde(with = "b64")]
    pub data: Vec<u8>,
}

/// Attachment bytes as base64 in the outbox, a quarter bigger instead of four times as JSON numbers.
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// Glob match: `*` any run of characters (dots included), `?` exactly one; everything else literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point: linear for the patterns a config holds.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
