//! Keys, signatures and sealed secrets: the cryptographic side of the trust rules in the
//! architecture. Every machine (hub, connector, cloud) owns one RSA-3072 [`KeyPair`]; its
//! [`MachineId`] is the fingerprint of the public key, so an id cannot be claimed without the key.
//!
//! - [`machine`]: the key pair, its 0600 PKCS#8 file, public keys and fingerprints.
//! - [`request`]: RSA-PSS signatures over HTTP requests (method, path, time, body hash, signer),
//!   carried in three headers, checked against a clock-skew window.
//! - [`document`]: [`Signed<T>`], an envelope whose exact payload bytes travel unchanged through a
//!   connector, and the three documents signed that way: [`CommandEnvelope`] (cloud),
//!   [`CommandResult`] (hub) and [`EnrollmentReceipt`] (cloud).
//! - [`network`]: [`NetworkKeys`], the cloud-signed list of a network's machine keys that a
//!   connector checks hub batches against.
//! - [`command`]: the hub's [`CommandVerifier`]: pinned cloud key, target, expiry, and a replay
//!   log on disk so a command runs at most once, even across restarts.
//! - [`command_key`]: the cloud's Ed25519 command key, derived from its RSA key and certified by
//!   it, which signs commands in microseconds for hubs that say they check it.
//! - [`sealed`]: secrets sealed to one machine's public key (RSA-OAEP + AES-256-GCM), and
//!   [`Secret`], which never prints its content.
//! - [`session`]: the login (once, bound to a cloud challenge: an X25519 exchange signed by the
//!   machine key and the command key, or RSA-OAEP with clouds of earlier versions) and the
//!   per-request HMAC that replace a signature per request; [`session_client`] is a machine's
//!   holder of one session (open lazily, renew, re-open on expiry, fall back to signatures).
//! - [`token`]: one-time enrollment tokens that carry the cloud key's fingerprint.
//! - [`pinning`]: TLS certificate fingerprints and a rustls verifier that accepts exactly one.
//!
//! Every signature has a domain prefix naming what is signed, so bytes signed as one thing (a
//! request, a command, a receipt) can never be passed off as another.

pub mod command;
pub mod command_key;
pub mod document;
mod error;
pub mod machine;
pub mod network;
pub mod pinning;
pub mod request;
pub mod sealed;
pub mod session;
pub mod session_client;
pub mod token;

#[cfg(test)]
mod tests;

pub use command::{CommandVerifier, ReplayLog, DEFAULT_MAX_LIFETIME};
pub use command_key::{CommandKey, CommandKeyPair, SignsCommands};
pub use document::{
    AuthorizedConnector, CommandEnvelope, CommandResult, CommandStatus, EnrollmentReceipt, Signed, SignedKind,
};
pub use error::{CommandRefused, DocumentError, KeyError, SealError, TokenError, VerifyError};
pub use machine::{KeyPair, MachineId, PublicKey, KEY_BITS};
pub use network::{IngestLimits, NetworkKeys, NetworkMachine, PollManyAnswer};
pub use pinning::{
    enrollment_https_client, pinned_client_config, pinned_https_client, CertFingerprint, PinnedCertVerifier,
};
pub use request::{
    sign_request, verify_request, SignedHeaders, DEFAULT_MAX_SKEW, HEADER_MACHINE, HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
};
pub use sealed::{is_sealed, seal, unseal, Secret};
pub use session::{SessionError, SessionHeaders, Ticket, TicketKeys};
pub use session_client::SessionClient;
pub use token::{
    hash_token_secret, seal_token, token_secret_matches, unseal_token, EnrollmentToken, SealedEnrollment,
};

/// SHA-256 of `bytes`, as an array (the one hash every module here uses).
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Fills a fresh array from the operating system's random source.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(out)
}

/// Compares two byte strings in time that depends only on their lengths, for secrets and tags.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
