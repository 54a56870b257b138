//! Signed HTTP requests. A hub or connector signs each request it sends; the cloud (or a connector
//! for its LAN side) looks up the signer's public key by the machine id in the headers and checks
//! the signature and the time.
//!
//! The signature (RSA-PSS, SHA-256) covers this canonical text, fields separated by `\n`:
//!
//! ```text
//! outpost-request-v1
//! <METHOD, upper case>
//! <byte length of path-and-query>:<path-and-query, exactly as on the request line>
//! <timestamp, unix seconds>
//! <SHA-256 of the body, lowercase hex>
//! <signer machine id>
//! ```
//!
//! The length prefix makes the split unambiguous whatever the path holds. Because the whole body
//! is hashed, a connector that forwards a hub's batch with the same method, path, body and headers
//! forwards a request the cloud can still verify as the hub's, and cannot change a byte of it.
//!
//! Signatures stop forgery and tampering; they do not stop a captured request from being sent
//! again within the skew window. The API is built so that does no harm (batches are stored once
//! per `(machine_id, seq)`); commands, which must not run twice, have their own replay log.

use super::error::{KeyError, VerifyError};
use super::machine::{KeyPair, MachineId, PublicKey};
use base64::Engine;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Header with the signer's [`MachineId`].
pub const HEADER_MACHINE: &str = "x-outpost-machine";
/// Header with the signing time in unix seconds.
pub const HEADER_TIMESTAMP: &str = "x-outpost-timestamp";
/// Header with the RSA-PSS signature, standard base64.
pub const HEADER_SIGNATURE: &str = "x-outpost-signature";
/// How far a request's timestamp may be from the verifier's clock, either way.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(5 * 60);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The three signature headers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub machine_id: MachineId,
    /// Unix seconds.
    pub timestamp: i64,
    pub signature_b64: String,
}

impl SignedHeaders {
    /// Reads the headers of an incoming request (axum and reqwest share this `HeaderMap`).
    pub fn from_header_map(headers: &reqwest::header::HeaderMap) -> Result<SignedHeaders, VerifyError> {
        let get = |name: &'static str| -> Result<Option<&str>, VerifyError> {
            headers
                .get(name)
                .map(|v| v.to_str().map_err(|_| VerifyError::Malformed(format!("{name} is not ASCII"))))
                .transpose()
        };
        SignedHeaders::from_values(get(HEADER_MACHINE)?, get(HEADER_TIMESTAMP)?, get(HEADER_SIGNATURE)?)
    }

    /// Builds the headers from their raw values; a missing one means the request is unsigned.
    pub fn from_values(
        machine: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
    ) -> Result<SignedHeaders, VerifyError> {
        let machine = machine.ok_or(VerifyError::Unsigned(HEADER_MACHINE))?;
        let timestamp = timestamp.ok_or(VerifyError::Unsigned(HEADER_TIMESTAMP))?;
        let signature = signature.ok_or(VerifyError::Unsigned(HEADER_SIGNATURE))?;
        let machine_id = MachineId::parse(machine.trim())
            .map_err(|e| VerifyError::Malformed(format!("{HEADER_MACHINE}: {e}")))?;
        let timestamp = timestamp.trim().parse::<i64>().map_err(|_| {
            VerifyError::Malformed(format!("{HEADER_TIMESTAMP} must be unix seconds, got {timestamp:?}"))
        })?;
        Ok(SignedHeaders { machine_id, timestamp, signature_b64: signature.trim().to_string() })
    }

    /// `(name, value)` pairs to add to an outgoing request.
    pub fn to_pairs(&self) -> [(&'static str, String); 3] {
        [
            (HEADER_MACHINE, self.machine_id.to_string()),
            (HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_SIGNATURE, self.signature_b64.clone()),
        ]
    }
}

fn canonical(method: &str, path_and_query: &str, timestamp: i64, body: &[u8], signer: &MachineId) -> Vec<u8> {
    format!(
        "outpost-request-v1\n{}\n{}:{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path_and_query.len(),
        path_and_query,
        timestamp,
        hex::encode(super::sha256(body)),
        signer
    )
    .into_bytes()
}

/// Signs a request about to be sent. `path_and_query` is what goes on the request line
/// (`/v1/batches?x=1`), without scheme or host.
pub fn sign_request(
    key: &KeyPair,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<SignedHeaders, KeyError> {
    let timestamp = now.timestamp();
    let message = canonical(method, path_and_query, timestamp, body, key.machine_id());
    let signature = key.sign_pss(&message)?;
    Ok(SignedHeaders {
        machine_id: key.machine_id().clone(),
        timestamp,
        signature_b64: B64.encode(signature),
    })
}

/// Checks a received request against the public key of the machine it claims to come from.
/// Checks, in order: that `key` belongs to the claimed signer, the time window, the signature.
pub fn verify_request(
    key: &PublicKey,
    headers: &SignedHeaders,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now: DateTime<Utc>,
    max_skew: Duration,
) -> Result<(), VerifyError> {
    if &headers.machine_id != key.machine_id() {
        return Err(VerifyError::WrongSigner {
            claimed: headers.machine_id.clone(),
            expected: key.machine_id().clone(),
        });
    }
    // The time check comes before the RSA operation: old requests are turned away cheaply.
    let off_by = now.timestamp().saturating_sub(headers.timestamp).saturating_abs();
    let allowed = max_skew.as_secs();
    if off_by as u64 > allowed {
        return Err(VerifyError::Stale {
            timestamp: headers.timestamp,
            off_by_secs: off_by,
            allowed_secs: allowed,
        });
    }
    let signature = B64
        .decode(headers.signature_b64.as_bytes())
        .map_err(|_| VerifyError::Malformed(format!("{HEADER_SIGNATURE} is not base64")))?;
    let message = canonical(method, path_and_query, headers.timestamp, body, &headers.machine_id);
    if key.verify_pss(&message, &signature) {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}
