//! The cloud's command key: an Ed25519 key that signs commands in microseconds, certified by the
//! cloud's RSA key. An RSA-3072 signature costs the cloud about 2 ms per command, most of a
//! command's way to a hub on a quiet system; an Ed25519 signature costs about 20 µs.
//!
//! - The key is derived from the cloud's private key (HKDF-SHA-256 over its PKCS#8), like the
//!   session ticket keys: every node with the same `cloud.key` signs with the same command key,
//!   nothing new is stored anywhere, and whoever lacks `cloud.key` (a copy of the database, a
//!   connector) cannot make it.
//! - Its certificate, a [`Signed<CommandKey>`] by the cloud's RSA key, travels in each command
//!   (`signing_key`), so a hub needs nothing but the cloud key it pinned at enrollment. The hub
//!   checks the certificate once (then remembers its digest) and the Ed25519 signature each time.
//! - Only commands are accepted with a certified key: [`Signed::verify`] refuses any document that
//!   carries one, so the command key cannot pass for the cloud on a receipt, a network key list or
//!   a managed sensor document.
//! - It also signs the cloud's half of a machine-session login (an X25519 exchange, see
//!   [`super::session`]), over a text with its own prefix that no signed document's message
//!   starts with.
//! - A hub says it can check such commands by listing [`FEATURE`] in its batches; the cloud signs
//!   with RSA for every machine that has not, so hubs of earlier versions keep working.

use super::document::{signed_message, CommandEnvelope, Signed, SignedKind};
use super::error::{DocumentError, KeyError};
use super::machine::{KeyPair, MachineId, PublicKey};
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What a hub lists in [`crate::model::Batch::features`] when it checks commands signed with the
/// cloud's certified Ed25519 key.
pub const FEATURE: &str = "ed25519-commands";

/// The certificate's content: the Ed25519 public key the cloud signs commands with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandKey {
    /// The 32-byte Ed25519 public key, standard base64.
    pub ed25519: String,
}

impl SignedKind for CommandKey {
    const KIND: &'static str = "command-key";
}

/// Something that signs commands: the cloud's RSA key ([`KeyPair`]) or its command key.
pub trait SignsCommands: Send + Sync {
    fn sign_command(&self, command: &CommandEnvelope) -> Result<Signed<CommandEnvelope>, KeyError>;
}

impl SignsCommands for KeyPair {
    fn sign_command(&self, command: &CommandEnvelope) -> Result<Signed<CommandEnvelope>, KeyError> {
        Signed::sign(self, command)
    }
}

/// The cloud's command key with its certificate.
pub struct CommandKeyPair {
    key: Ed25519KeyPair,
    signer: MachineId,
    cert: Box<Signed<CommandKey>>,
}

impl std::fmt::Debug for CommandKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CommandKeyPair(certified by {})", self.signer)
    }
}

impl CommandKeyPair {
    /// Derives the command key from `cloud` and certifies it with `cloud` (one RSA signature).
    pub fn derive(cloud: &KeyPair) -> Result<CommandKeyPair, KeyError> {
        let pem = cloud.to_pkcs8_pem();
        let prk =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"outpost-command-key-v1").extract(pem.as_bytes());
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        prk.expand(&[b"ed25519 seed"], ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(seed.as_mut_slice()))
            .expect("32 bytes is a valid HKDF-SHA-256 output length");
        let key =
            Ed25519KeyPair::from_seed_unchecked(seed.as_slice()).expect("any 32 bytes are an Ed25519 seed");
        let public = CommandKey { ed25519: B64.encode(key.public_key().as_ref()) };
        let cert = Box::new(Signed::sign(cloud, &public)?);
        Ok(CommandKeyPair { key, signer: cloud.machine_id().clone(), cert })
    }

    /// The certificate commands carry.
    pub fn certificate(&self) -> &Signed<CommandKey> {
        &self.cert
    }

    /// Signs the cloud's half of an X25519 session login (`super::session`). Its text starts
    /// with its own prefix, never with a signed document's, so it cannot pass for a command.
    pub(super) fn sign_exchange(&self, exchange: &[u8]) -> Vec<u8> {
        debug_assert!(exchange.starts_with(b"outpost-session-v2-exchange\n"));
        self.key.sign(exchange).as_ref().to_vec()
    }
}

impl SignsCommands for CommandKeyPair {
    fn sign_command(&self, command: &CommandEnvelope) -> Result<Signed<CommandEnvelope>, KeyError> {
        let payload = serde_json::to_vec(command).map_err(|e| KeyError::Serialize(e.to_string()))?;
        let signature = self.key.sign(&signed_message(CommandEnvelope::KIND, &payload));
        Ok(Signed::assemble(
            CommandEnvelope::KIND,
            self.signer.clone(),
            &payload,
            signature.as_ref(),
            Some(self.cert.clone()),
        ))
    }
}

/// Certificates a hub has checked, by digest: each is RSA-verified once, not per command.
/// Bounded: a cloud of several nodes has one certificate per node (RSA-PSS signatures differ).
#[derive(Debug, Default)]
pub(super) struct CheckedCertificates(Mutex<Vec<(String, [u8; 32])>>);

const CHECKED_CERTIFICATES: usize = 8;

impl CheckedCertificates {
    /// Whether any certificate was checked so far.
    pub(super) fn any(&self) -> bool {
        !self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// The Ed25519 key `cert` certifies, if `cloud` signed it.
    pub(super) fn key_of(
        &self,
        cert: &Signed<CommandKey>,
        cloud: &PublicKey,
    ) -> Result<[u8; 32], DocumentError> {
        let digest = cert.digest();
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, key)) = known.iter().find(|(d, _)| *d == digest) {
            return Ok(*key);
        }
        let doc = cert.verify(cloud)?;
        let key: [u8; 32] =
            B64.decode(doc.ed25519.as_bytes()).ok().and_then(|k| k.try_into().ok()).ok_or_else(|| {
                DocumentError::Malformed("the command key is not 32 bytes of base64".into())
            })?;
        if known.len() >= CHECKED_CERTIFICATES {
            known.remove(0);
        }
        known.push((digest, key));
        Ok(key)
    }
}

/// Checks a command's signature: by `cloud` itself, or by a key whose certificate `cloud` signed.
pub(super) fn verify_command(
    signed: &Signed<CommandEnvelope>,
    cloud: &PublicKey,
    checked: &CheckedCertificates,
) -> Result<CommandEnvelope, DocumentError> {
    let Some(cert) = &signed.signing_key else {
        return signed.verify(cloud);
    };
    signed.check_frame(cloud)?;
    let key = checked.key_of(cert, cloud)?;
    let payload = signed.payload_bytes()?;
    let signature = signed.signature_bytes()?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&signed_message(CommandEnvelope::KIND, &payload), &signature)
        .map_err(|_| DocumentError::BadSignature)?;
    signed.parse(&payload)
}
