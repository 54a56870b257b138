//! Signed documents: [`Signed<T>`] and the documents that travel in it.
//!
//! A document is serialized to JSON once, by its signer, and those bytes are what is signed and
//! what travels (base64 inside the envelope). Relays never re-serialize the payload, so key order,
//! whitespace or number formatting cannot differ between what was signed and what is checked,
//! and a connector cannot alter a command or a result without the signature failing.
//!
//! The signature (RSA-PSS, SHA-256) covers `outpost-signed-v1\n<kind>\n<payload bytes>`, so a
//! payload signed as one kind (a receipt) never verifies as another (a command).
//!
//! JSON form of the envelope:
//! `{"kind":"command","signer":"<machine id>","payload":"<base64>","signature":"<base64>"}`
//!
//! A command may instead carry `"signing_key": <Signed<CommandKey>>`: then `signature` is Ed25519
//! by the key that certificate names, and the certificate is RSA-signed by `signer` (see
//! [`super::command_key`]). [`Signed::verify`] refuses such documents; only the hub's command
//! check accepts them.

use super::error::{CommandRefused, DocumentError, KeyError};
use super::machine::{KeyPair, MachineId, PublicKey};
use super::pinning::CertFingerprint;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A document type that can be signed; `KIND` names it inside the signature.
pub trait SignedKind: Serialize + DeserializeOwned {
    const KIND: &'static str;
}

/// A payload signed by one machine key, carrying the exact bytes that were signed.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    /// `T::KIND`, in clear so a misrouted document is named in errors; the signature covers it.
    pub kind: String,
    /// Fingerprint of the key that signed.
    pub signer: MachineId,
    /// The JSON bytes of the document, standard base64.
    pub payload: String,
    /// RSA-PSS signature, standard base64 (Ed25519 when `signing_key` is set).
    pub signature: String,
    /// The certificate of the Ed25519 key that made `signature`, signed by `signer`'s RSA key.
    /// Only commands are signed that way (see [`super::command_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<Box<Signed<super::command_key::CommandKey>>>,
    #[serde(skip)]
    _doc: PhantomData<fn() -> T>,
}

pub(super) fn signed_message(kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut message = format!("outpost-signed-v1\n{kind}\n").into_bytes();
    message.extend_from_slice(payload);
    message
}

impl<T> Signed<T> {
    /// Hex SHA-256 of exactly this signed document (kind, signer, payload and signature). A
    /// command result names the digest of the envelope it answers, so a result can never be
    /// credited to an envelope the cloud did not issue, even one carrying a real command's id.
    pub fn digest(&self) -> String {
        let mut text = format!(
            "outpost-digest-v1\n{}\n{}\n{}\n{}",
            self.kind, self.signer, self.payload, self.signature
        );
        // The certificate is part of what was received; without one the digest is as it always was.
        if let Some(cert) = &self.signing_key {
            text.push('\n');
            text.push_str(&cert.digest());
        }
        hex::encode(super::sha256(text.as_bytes()))
    }

    /// A document made by a signer other than [`Signed::sign`] (the Ed25519 command key).
    pub(super) fn assemble(
        kind: &str,
        signer: MachineId,
        payload: &[u8],
        signature: &[u8],
        signing_key: Option<Box<Signed<super::command_key::CommandKey>>>,
    ) -> Signed<T> {
        Signed {
            kind: kind.to_string(),
            signer,
            payload: B64.encode(payload),
            signature: B64.encode(signature),
            signing_key,
            _doc: PhantomData,
        }
    }

    /// The signature, decoded from base64.
    pub(super) fn signature_bytes(&self) -> Result<Vec<u8>, DocumentError> {
        B64.decode(self.signature.as_bytes())
            .map_err(|_| DocumentError::Malformed("signature is not base64".into()))
    }
}

impl<T: SignedKind> Signed<T> {
    /// Serializes `document` and signs the bytes.
    pub fn sign(key: &KeyPair, document: &T) -> Result<Signed<T>, KeyError> {
        let payload = serde_json::to_vec(document).map_err(|e| KeyError::Serialize(e.to_string()))?;
        let signature = key.sign_pss(&signed_message(T::KIND, &payload))?;
        Ok(Signed::assemble(T::KIND, key.machine_id().clone(), &payload, &signature, None))
    }

    /// Checks the signature against `key` (which the caller trusts for this kind of document)
    /// and returns the document. A document signed by a certified key is refused here: only
    /// the hub's command check ([`super::CommandVerifier`]) takes those.
    pub fn verify(&self, key: &PublicKey) -> Result<T, DocumentError> {
        if self.signing_key.is_some() {
            return Err(DocumentError::Malformed(format!(
                "a {} signed by a certified key is not taken here; only commands may be",
                self.kind
            )));
        }
        self.check_frame(key)?;
        let payload = self.payload_bytes()?;
        let signature = self.signature_bytes()?;
        if !key.verify_pss(&signed_message(T::KIND, &payload), &signature) {
            return Err(DocumentError::BadSignature);
        }
        self.parse(&payload)
    }

    /// The signer is `key` and the kind is `T`'s.
    pub(super) fn check_frame(&self, key: &PublicKey) -> Result<(), DocumentError> {
        if &self.signer != key.machine_id() {
            return Err(DocumentError::WrongSigner {
                expected: key.machine_id().clone(),
                found: self.signer.clone(),
            });
        }
        if self.kind != T::KIND {
            return Err(DocumentError::Malformed(format!("expected a {}, got a {:?}", T::KIND, self.kind)));
        }
        Ok(())
    }

    /// The document in `payload` (bytes whose signature was checked).
    pub(super) fn parse(&self, payload: &[u8]) -> Result<T, DocumentError> {
        serde_json::from_slice(payload)
            .map_err(|e| DocumentError::Malformed(format!("{} payload is not valid: {e}", T::KIND)))
    }

    /// The document *without* checking the signature: for relays that must route it (a
    /// connector reads the target machine of a command) but never act on it.
    pub fn peek_unverified(&self) -> Result<T, DocumentError> {
        self.parse(&self.payload_bytes()?)
    }

    /// The signed bytes, decoded from base64.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, DocumentError> {
        B64.decode(self.payload.as_bytes())
            .map_err(|_| DocumentError::Malformed("payload is not base64".into()))
    }
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            kind: self.kind.clone(),
            signer: self.signer.clone(),
            payload: self.payload.clone(),
            signature: self.signature.clone(),
            signing_key: self.signing_key.clone(),
            _doc: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        (&self.kind, &self.signer, &self.payload, &self.signature, &self.signing_key)
            == (&other.kind, &other.signer, &other.payload, &other.signature, &other.signing_key)
    }
}

impl<T> std::fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signed({} by {}, {} base64 bytes)", self.kind, self.signer, self.payload.len())
    }
}

/// An order from the cloud to one machine, signed by the cloud key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Strict: a hub must not silently ignore a part of an order it does not understand.
#[serde(deny_unknown_fields)]
pub struct CommandEnvelope {
    /// Unique per command; the hub remembers it until expiry to refuse replays.
    pub id: String,
    /// The only machine that may run it.
    pub target: MachineId,
    /// What to do, e.g. `relay.set`; the hub's command table gives it meaning.
    pub action: String,
    /// Arguments of the action, e.g. `{"card": 1, "relay": 3, "on": true}`.
    #[serde(default)]
    pub parameters: serde_json::Value,
    pub issued_at: DateTime<Utc>,
    /// After this the command is refused: a command stuck in a queue must not run late.
    pub expires_at: DateTime<Utc>,
}

impl SignedKind for CommandEnvelope {
    const KIND: &'static str = "command";
}

/// Longest command id accepted; ids are kept in the replay log, one per line.
const MAX_ID_LEN: usize = 128;

impl CommandEnvelope {
    /// A new command with a random 128-bit id, valid from `now` for `ttl`.
    pub fn new(
        target: MachineId,
        action: impl Into<String>,
        parameters: serde_json::Value,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<CommandEnvelope, KeyError> {
        let id: [u8; 16] = super::random_bytes()?;
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        Ok(CommandEnvelope {
            id: hex::encode(id),
            target,
            action: action.into(),
            parameters,
            issued_at: now,
            expires_at: now.checked_add_signed(ttl).unwrap_or(DateTime::<Utc>::MAX_UTC),
        })
    }

    /// Checks what the type cannot: id and action shape, expiry after issue.
    pub fn validate(&self) -> Result<(), CommandRefused> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_ID_LEN
            && self.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !id_ok {
            return Err(CommandRefused::Malformed(format!(
                "command id {:?} must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 - _ . :",
                self.id.chars().take(MAX_ID_LEN + 8).collect::<String>()
            )));
        }
        if self.action.trim().is_empty() || self.action.len() > 128 {
            return Err(CommandRefused::Malformed(format!(
                "command {} has an empty or overlong action",
                self.id
            )));
        }
        if self.expires_at <= self.issued_at {
            return Err(CommandRefused::Malformed(format!(
                "command {} expires ({}) before it is issued ({})",
                self.id, self.expires_at, self.issued_at
            )));
        }
        Ok(())
    }
}

/// How a command ended on the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandStatus {
    Done,
    Failed,
    /// Not run: the envelope was refused (forged, expired, replayed, mis-targeted, malformed).
    Refused,
}

/// What a hub reports back for a command, signed by the hub's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command_id: String,
    /// The hub that ran (or refused) it.
    pub machine_id: MachineId,
    pub status: CommandStatus,
    /// Action output, or `{"error": "..."}` for `failed` and `refused`.
    #[serde(default)]
    pub output: serde_json::Value,
    pub finished_at: DateTime<Utc>,
    /// [`Signed::digest`] of the envelope this answers, exactly as the hub received it. The cloud
    /// records a result only when this is the envelope it issued under that id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<String>,
}

impl SignedKind for CommandResult {
    const KIND: &'static str = "command-result";
}

impl CommandResult {
    /// The result for a refused command, with the reason as `output.error`; `envelope` is the
    /// digest of what was received.
    pub fn refused(
        command_id: impl Into<String>,
        machine_id: MachineId,
        reason: &dyn std::fmt::Display,
        now: DateTime<Utc>,
        envelope: String,
    ) -> CommandResult {
        CommandResult {
            command_id: command_id.into(),
            machine_id,
            status: CommandStatus::Refused,
            output: serde_json::json!({ "error": reason.to_string() }),
            finished_at: now,
            envelope: Some(envelope),
        }
    }
}

/// A connector the cloud has authorised for a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizedConnector {
    /// The connector's machine id (fingerprint of its signing key).
    pub machine_id: MachineId,
    /// SHA-256 of its LAN TLS certificate, which hubs pin.
    pub lan_cert: CertFingerprint,
}

/// The cloud's answer to an enrollment, signed by the cloud key. A hub keeps it to know which
/// connectors it may send data to, and which LAN certificate each must present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentReceipt {
    /// The machine that enrolled.
    pub machine_id: MachineId,
    pub network_id: String,
    pub connectors: Vec<AuthorizedConnector>,
    /// Fingerprint of the cloud signing key (the same one the enrollment token carried).
    pub cloud_key: MachineId,
    pub issued_at: DateTime<Utc>,
    /// The role the cloud enrolled the machine in. A hub accepts only a receipt that names it a
    /// sensorhub; `None` only in receipts from before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::model::Role>,
}

impl SignedKind for EnrollmentReceipt {
    const KIND: &'static str = "enrollment-receipt";
}

impl EnrollmentReceipt {
    /// The authorised connector with this id, if any: a discovered connector not listed here is
    /// never sent data.
    pub fn connector(&self, id: &MachineId) -> Option<&AuthorizedConnector> {
        self.connectors.iter().find(|c| &c.machine_id == id)
    }
}
