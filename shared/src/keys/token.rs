//! Enrollment tokens: what an administrator pastes into `outpost install` to join a machine to a
//! network. Format (five fields separated by dots, all URL- and shell-safe):
//!
//! ```text
//! OPT1.<network id>.<secret: 32 random bytes, base64url>.<cloud key fingerprint>.<expiry, unix seconds>
//! ```
//!
//! The cloud key fingerprint lets the new machine check cloud-signed answers from the first
//! contact on, even when they reach it through a connector it does not know yet. The secret is
//! what makes the token worth something; the cloud stores only [`hash_token_secret`] of it, and
//! deletes the hash when the token is used (one-time) or expires. 256 random bits need no slow
//! password hash: SHA-256 cannot be reversed and guessing is hopeless.

use super::error::{KeyError, TokenError};
use super::machine::MachineId;
use base64::Engine;
use chrono::{DateTime, Utc};
use std::fmt;

const VERSION: &str = "OPT1";
const SECRET_BYTES: usize = 32;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A parsed enrollment token. `Debug` hides the secret; [`EnrollmentToken::encode`] gives the
/// full token text.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    /// 1 to 64 characters of `A-Z a-z 0-9 - _`.
    pub network_id: String,
    secret: String,
    /// Fingerprint of the cloud signing key the enrolling machine must pin.
    pub cloud_key: MachineId,
    pub expires_at: DateTime<Utc>,
}

impl EnrollmentToken {
    /// A new token with a fresh random secret. Store [`EnrollmentToken::secret_hash`], hand out
    /// [`EnrollmentToken::encode`], then forget the token.
    pub fn generate(
        network_id: &str,
        cloud_key: MachineId,
        expires_at: DateTime<Utc>,
    ) -> Result<EnrollmentToken, TokenError> {
        check_network_id(network_id)?;
        let secret: [u8; SECRET_BYTES] =
            super::random_bytes().map_err(|e: KeyError| TokenError::Random(e.to_string()))?;
        Ok(EnrollmentToken {
            network_id: network_id.to_string(),
            secret: B64.encode(secret),
            cloud_key,
            // Whole seconds: that is what the text form carries.
            expires_at: DateTime::from_timestamp(expires_at.timestamp(), 0).unwrap_or(expires_at),
        })
    }

    /// Parses a token and refuses it if it has expired by the system clock.
    pub fn parse(text: &str) -> Result<EnrollmentToken, TokenError> {
        EnrollmentToken::parse_at(text, Utc::now())
    }

    /// [`EnrollmentToken::parse`] against a given clock.
    pub fn parse_at(text: &str, now: DateTime<Utc>) -> Result<EnrollmentToken, TokenError> {
        let malformed = |m: String| TokenError::Malformed(m);
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [version, network_id, secret, cloud_key, expiry] = parts[..] else {
            return Err(malformed(format!(
                "expected 5 fields separated by '.' ({VERSION}.<network>.<secret>.<cloud key>.<expiry>), got {}",
                parts.len()
            )));
        };
        if version != VERSION {
            return Err(malformed(format!("unknown version {version:?}, expected {VERSION}")));
        }
        check_network_id(network_id)?;
        match B64.decode(secret) {
            Ok(bytes) if bytes.len() == SECRET_BYTES => {}
            _ => return Err(malformed(format!("secret must be {SECRET_BYTES} bytes of base64url"))),
        }
        let cloud_key = MachineId::parse(cloud_key)
            .map_err(|_| malformed("cloud key fingerprint must be 32 lowercase hex characters".into()))?;
        let expires_at = expiry
            .parse::<i64>()
            .ok()
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .ok_or_else(|| malformed(format!("expiry {expiry:?} is not a unix time in seconds")))?;
        if now >= expires_at {
            return Err(TokenError::Expired(expires_at));
        }
        Ok(EnrollmentToken {
            network_id: network_id.to_string(),
            secret: secret.to_string(),
            cloud_key,
            expires_at,
        })
    }

    /// The token text, secret included: show it once to whoever installs the machine.
    pub fn encode(&self) -> String {
        format!(
            "{VERSION}.{}.{}.{}.{}",
            self.network_id,
            self.secret,
            self.cloud_key,
            self.expires_at.timestamp()
        )
    }

    /// What the cloud stores instead of the secret.
    pub fn secret_hash(&self) -> String {
        hash_token_secret(&self.secret)
    }
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("network_id", &self.network_id)
            .field("secret", &"***")
            .field("cloud_key", &self.cloud_key)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

fn check_network_id(id: &str) -> Result<(), TokenError> {
    let ok = (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(TokenError::Malformed(format!("network id {id:?} must be 1 to 64 characters of A-Z a-z 0-9 - _")))
    }
}

/// Hex SHA-256 of a token secret (domain-separated), for storage and lookup on the cloud.
pub fn hash_token_secret(secret: &str) -> String {
    let mut input = b"outpost-enrollment-secret-v1\n".to_vec();
    input.extend_from_slice(secret.as_bytes());
    hex::encode(super::sha256(&input))
}

/// Whether a presented token matches a stored hash, compared in constant time.
pub fn token_secret_matches(stored_hash: &str, presented: &EnrollmentToken) -> bool {
    super::constant_time_eq(stored_hash.as_bytes(), presented.secret_hash().as_bytes())
}

/// What a machine seals to the cloud key when it enrolls through a connector: the token and every
/// fact the cloud will record about the machine. The connector carries ciphertext only, so it can
/// neither read the token nor rewrite the role, host name or LAN certificate on the way; and since
/// the machine id inside must match the public key sent alongside, a connector that copies the
/// sealed token into a request of its own gets refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedEnrollment {
    pub token: String,
    pub machine_id: MachineId,
    pub role: crate::model::Role,
    pub hostname: String,
    #[serde(default)]
    pub lan_cert: Option<String>,
}

/// Seals `enrollment` for `cloud`, which must be the key whose fingerprint the token names.
pub fn seal_token(
    cloud: &super::PublicKey,
    token: &EnrollmentToken,
    enrollment: &SealedEnrollment,
) -> Result<String, super::SealError> {
    if cloud.machine_id() != &token.cloud_key {
        return Err(super::SealError::Malformed(format!(
            "key {} is not the cloud key {} the token names",
            cloud.machine_id(),
            token.cloud_key
        )));
    }
    let mut inner = enrollment.clone();
    inner.token = token.encode();
    super::seal(cloud, &serde_json::to_string(&inner).expect("serialises"))
}

/// Opens an enrollment sealed by [`seal_token`] and checks it was sealed by the machine
/// `enrolling`. The caller must take role, host name and LAN certificate from the answer, never
/// from fields a relay could have rewritten.
pub fn unseal_token(
    cloud: &super::KeyPair,
    sealed: &str,
    enrolling: &MachineId,
) -> Result<SealedEnrollment, TokenError> {
    let plain =
        super::unseal(cloud, sealed).map_err(|e| TokenError::Malformed(format!("sealed token: {e}")))?;
    let inner: SealedEnrollment = serde_json::from_str(plain.expose())
        .map_err(|e| TokenError::Malformed(format!("sealed token: {e}")))?;
    if &inner.machine_id != enrolling {
        return Err(TokenError::Malformed(
            "the sealed token was sealed for another machine key; it cannot be reused".into(),
        ));
    }
    Ok(inner)
}
