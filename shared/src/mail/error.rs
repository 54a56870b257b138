//! Mail errors. TLS failures are named in words an operator can act on (unknown authority, wrong
//! host name, expired, clock wrong) rather than passed through as library jargon.

use crate::keys::SealError;
use crate::tls::TlsError;

/// The transport could not be built from the config (nothing was sent).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("mail.password is sealed but no machine key was given to open it")]
    SealedWithoutKey,
    #[error("mail.password: {0}")]
    Unseal(#[from] SealError),
    #[error("mail.ca_file: {0}")]
    Roots(#[from] TlsError),
    #[error("mail.{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// One delivery attempt failed. [`SendError::is_permanent`] tells whether trying the same mail
/// again can ever help.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(
        "mail server {server}: its certificate is signed by an unknown authority (self-signed or a \
         private CA); set mail.ca_file to that authority's PEM file"
    )]
    UnknownCa { server: String },
    #[error(
        "mail server {server}: its certificate is not valid for the host name `{server}` ({detail}); \
         set mail.server to a name the certificate lists"
    )]
    WrongHost { server: String, detail: String },
    #[error(
        "mail server {server}: its certificate has expired (or this machine's clock is ahead; check \
         the clock)"
    )]
    Expired { server: String },
    #[error(
        "mail server {server}: its certificate is not valid yet; this machine's clock is probably \
         wrong (behind)"
    )]
    NotYetValid { server: String },
    #[error("mail server {server}: certificate refused: {detail}")]
    BadCertificate { server: String, detail: String },
    #[error("mail server {server}: TLS handshake failed: {detail}")]
    Tls { server: String, detail: String },
    #[error(
        "mail server {server} does not offer STARTTLS, so no mail and no password were sent; use its \
         TLS port (465, tls = \"smtps\") or, on a trusted link only, set tls = \"none\""
    )]
    NoStartTls { server: String },
    #[error("mail server {server} refused the login: {detail}; check mail.username and mail.password")]
    Auth { server: String, detail: String },
    #[error("mail server {server} refused this mail for good: {detail}")]
    Rejected { server: String, detail: String },
    #[error("mail server {server} refused this mail for now: {detail}")]
    Deferred { server: String, detail: String },
    #[error("mail server {server}: no answer within {seconds}s")]
    Timeout { server: String, seconds: u64 },
    #[error("mail server {server}: cannot connect: {detail}")]
    Connect { server: String, detail: String },
    #[error("mail cannot be built: {0}")]
    Message(String),
}

impl SendError {
    /// The mail itself is unacceptable: retrying it can never succeed, so the outbox sets it aside.
    /// Configuration failures (TLS, login) are not permanent: they are fixed by the operator and the
    /// mail must still go out then.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Rejected { .. } | SendError::Message(_))
    }
}

/// The outbox on disk failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("mail outbox {path}: {source}; move the directory aside to start with an empty outbox")]
    Open { path: String, source: sled::Error },
    #[error("mail outbox: {0}")]
    Db(#[from] sled::Error),
    /// The queue's storage cannot be reached now (a database restarting); nothing was kept.
    #[error("mail outbox unavailable: {0}; retry later")]
    Unavailable(String),
    #[error("mail outbox entry {id} is unreadable: {detail}")]
    Corrupt { id: u64, detail: String },
}
