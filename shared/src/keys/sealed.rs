//! Secrets sealed to one machine: the cloud and connectors store and forward only the sealed
//! form of a sensor password; the hub it is meant for opens it in memory when it uses it.
//!
//! Format: `sealed:v1:<recipient machine id>:<base64url, no padding>` where the base64 part is
//!
//! ```text
//! u16 big-endian length of the wrapped key | wrapped key | 12-byte nonce | ciphertext + 16-byte tag
//! ```
//!
//! The wrapped key is a fresh AES-256 key encrypted with RSA-OAEP (SHA-256, MGF1-SHA-256) to the
//! recipient's public key; the ciphertext is AES-256-GCM with the additional data
//! `outpost-sealed-v1:<recipient machine id>`. The recipient id is in clear so a blob sent to the
//! wrong machine is named as such; it is also bound by the GCM tag and by the key wrap, so editing
//! it does not make the blob open anywhere else.

use super::error::SealError;
use super::machine::{KeyPair, MachineId, PublicKey};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use base64::Engine;
use std::fmt;
use zeroize::Zeroizing;

const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 12;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A secret in memory: never printed (`Debug` and `Display` show `***`), wiped on drop. Call
/// [`Secret::expose`] at the one place the value is used.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(Zeroizing::new(value.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

// As the plain (or sealed) text: that is how a config file holds it.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// Whether `text` looks like a sealed secret (so a config value can be either sealed or plain).
pub fn is_sealed(text: &str) -> bool {
    text.trim_start().starts_with(PREFIX)
}

fn aad(recipient: &MachineId) -> Vec<u8> {
    format!("outpost-sealed-v1:{recipient}").into_bytes()
}

/// Seals `plaintext` so that only the holder of `recipient`'s private key can read it.
pub fn seal(recipient: &PublicKey, plaintext: &str) -> Result<String, SealError> {
    let content_key: Zeroizing<[u8; 32]> = Zeroizing::new(super::random_bytes()?);
    let nonce: [u8; NONCE_LEN] = super::random_bytes()?;
    let wrapped = recipient.oaep_encrypt(content_key.as_slice())?;
    let cipher = Aes256Gcm::new_from_slice(content_key.as_slice()).expect("32-byte AES-256 key");
    let aad = aad(recipient.machine_id());
    let ciphertext = cipher
        .encrypt(&nonce.into(), Payload { msg: plaintext.as_bytes(), aad: &aad })
        .map_err(|_| SealError::Malformed("secret too long to seal".into()))?;
    let wrapped_len = u16::try_from(wrapped.len()).expect("RSA-4096 ciphertext fits u16");
    let mut blob = Vec::with_capacity(2 + wrapped.len() + NONCE_LEN + ciphertext.len());
    blob.extend_from_slice(&wrapped_len.to_be_bytes());
    blob.extend_from_slice(&wrapped);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ciphertext);
    Ok(format!("{PREFIX}{}:{}", recipient.machine_id(), B64.encode(blob)))
}

/// Opens a secret sealed to this machine.
pub fn unseal(key: &KeyPair, sealed: &str) -> Result<Secret, SealError> {
    let malformed = |m: &str| SealError::Malformed(m.to_string());
    let rest = sealed.trim().strip_prefix(PREFIX).ok_or_else(|| {
        malformed("does not start with `sealed:v1:`; seal the secret with the recipient's key")
    })?;
    let (recipient, b64) = rest.split_once(':').ok_or_else(|| malformed("recipient machine id missing"))?;
    let recipient = MachineId::parse(recipient).map_err(|e| SealError::Malformed(e.to_string()))?;
    if &recipient != key.machine_id() {
        return Err(SealError::NotForThisMachine { sealed_for: recipient, own: key.machine_id().clone() });
    }
    let blob = B64.decode(b64.as_bytes()).map_err(|_| malformed("payload is not base64url"))?;
    let (len, rest) = blob.split_first_chunk::<2>().ok_or_else(|| malformed("truncated"))?;
    let wrapped_len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < wrapped_len + NONCE_LEN + 16 {
        return Err(malformed("truncated"));
    }
    let (wrapped, rest) = rest.split_at(wrapped_len);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let content_key = key.oaep_decrypt(wrapped).ok_or(SealError::Undecryptable)?;
    let cipher = Aes256Gcm::new_from_slice(&content_key).map_err(|_| SealError::Undecryptable)?;
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    let aad = aad(key.machine_id());
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(&nonce.into(), Payload { msg: ciphertext, aad: &aad })
            .map_err(|_| SealError::Undecryptable)?,
    );
    let text = std::str::from_utf8(&plaintext).map_err(|_| SealError::NotText)?;
    Ok(Secret::new(text))
}
