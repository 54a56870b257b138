//! The error types of the key module, one enum per question a caller asks.

use super::machine::MachineId;
use chrono::{DateTime, Utc};
use std::path::PathBuf;

/// Loading, creating or using a key pair failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}: private key file is readable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}` and make sure only the service user owns it"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: not a PKCS#8 RSA private key (`BEGIN PRIVATE KEY` PEM): {reason}")]
    BadPrivateKey { path: PathBuf, reason: String },
    #[error("not an RSA public key (SPKI PEM or DER): {0}")]
    BadPublicKey(String),
    #[error("RSA key of {bits} bits refused: machine keys must have 2048 to 4096 bits")]
    KeySize { bits: usize },
    #[error("public key fingerprint {found} does not match the expected {expected}")]
    FingerprintMismatch { expected: MachineId, found: MachineId },
    #[error("invalid machine id {0:?}: expected 32 lowercase hexadecimal characters")]
    BadMachineId(String),
    #[error("invalid certificate fingerprint {0:?}: expected 64 hexadecimal characters (SHA-256)")]
    BadCertFingerprint(String),
    #[error("cannot serialize the document to sign: {0}")]
    Serialize(String),
    #[error("RSA operation failed: {0}")]
    Rsa(String),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

/// Why a signed HTTP request was not accepted. The variants map to distinct HTTP answers:
/// [`VerifyError::Unsigned`] and [`VerifyError::Malformed`] to 400, the rest to 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("request is not signed: header {0} is missing")]
    Unsigned(&'static str),
    #[error("request signature headers are malformed: {0}")]
    Malformed(String),
    #[error("request claims to be signed by {claimed}, but the key checked belongs to {expected}")]
    WrongSigner { claimed: MachineId, expected: MachineId },
    #[error(
        "request timestamp {timestamp} is {off_by_secs} s away from this machine's clock \
         (allowed: {allowed_secs} s); check the clocks of both machines (NTP)"
    )]
    Stale { timestamp: i64, off_by_secs: i64, allowed_secs: u64 },
    #[error("request signature does not verify: the request was altered or signed with another key")]
    BadSignature,
}

/// Why a [`Signed`](super::Signed) document was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("document is signed by {found}, expected a signature by {expected}")]
    WrongSigner { expected: MachineId, found: MachineId },
    #[error("document signature does not verify: the payload was altered or signed with another key")]
    BadSignature,
    #[error("malformed signed document: {0}")]
    Malformed(String),
}

/// Why a hub refused a command. Each refusal is logged with this message and reported back to
/// the cloud as a `refused` result.
#[derive(Debug, thiserror::Error)]
pub enum CommandRefused {
    #[error("forged command: {0}")]
    Forged(DocumentError),
    #[error("command {id} is addressed to machine {target}, not to this machine ({own})")]
    WrongTarget { id: String, target: MachineId, own: MachineId },
    #[error("command {id} expired at {expires_at} (now {now})")]
    Expired { id: String, expires_at: DateTime<Utc>, now: DateTime<Utc> },
    #[error(
        "command {id} claims to be issued at {issued_at}, in the future of this machine's clock \
         ({now}); check the clocks (NTP)"
    )]
    IssuedInFuture { id: String, issued_at: DateTime<Utc>, now: DateTime<Utc> },
    #[error("command {id} was already received once; replayed commands are refused")]
    Replayed { id: String },
    #[error("malformed command: {0}")]
    Malformed(String),
    /// The replay log could not be written: the command is refused rather than risk running it
    /// twice.
    #[error("replay log {path}: {source}; command refused because it could not be recorded")]
    Storage { path: PathBuf, source: std::io::Error },
}

/// Sealing or unsealing a secret failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("malformed sealed secret: {0}")]
    Malformed(String),
    #[error(
        "secret is sealed for machine {sealed_for}, this machine is {own}; seal it again for this machine"
    )]
    NotForThisMachine { sealed_for: MachineId, own: MachineId },
    #[error("sealed secret does not open with this machine's key: it was altered or sealed for another key")]
    Undecryptable,
    #[error("sealed secret is not UTF-8 text")]
    NotText,
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// An enrollment token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token expired at {0}; ask the cloud administrator for a new one")]
    Expired(DateTime<Utc>),
    #[error("cannot make a token: {0}")]
    Random(String),
}
