//! Secrets of people: argon2id password hashes, random session ids and API tokens, and how each
//! is kept (hashes only) and compared (in constant time).

use crate::error::CloudError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use subtle::ConstantTimeEq;

/// Shortest password accepted: long passphrases beat composition rules.
pub const MIN_PASSWORD: usize = 10;
/// Longest password accepted (bytes): hashing is work, and nobody types more.
pub const MAX_PASSWORD: usize = 1024;

/// `n` random bytes from the operating system.
pub fn random<const N: usize>() -> Result<[u8; N], CloudError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| CloudError::Keys(format!("no randomness from the system: {e}")))?;
    Ok(b)
}

/// 256 random bits, URL-safe base64 without padding (session ids, token secrets, setup links).
pub fn random_secret() -> Result<String, CloudError> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<32>()?))
}

/// Hex SHA-256: how session ids and token secrets are kept.
pub fn digest(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Constant-time equality of two strings (their lengths are not secret).
pub fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Checks a new password's length; the text says what to change.
pub fn check_password(password: &str) -> Result<(), CloudError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return Err(CloudError::Invalid(format!(
            "a password must have at least {MIN_PASSWORD} characters (and at most {MAX_PASSWORD} bytes); a few words make a good one"
        )));
    }
    Ok(())
}

/// argon2id (the crate's defaults: 19 MiB, 2 passes, 1 lane) with a fresh 128-bit salt, as a PHC
/// string. CPU work of some tens of milliseconds: call it off the async workers.
pub fn hash_password(password: &str) -> Result<String, CloudError> {
    let salt = SaltString::encode_b64(&random::<16>()?)
        .map_err(|e| CloudError::Keys(format!("password salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CloudError::Keys(format!("password hash: {e}")))
}

/// Does `password` match the PHC string? An unreadable stored hash matches nothing. Off the async
/// workers, like [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// The prefix every API token starts with, so scanners and people recognise one.
pub const TOKEN_PREFIX: &str = "opt_";

/// A new API token: `opt_<id>_<secret>`, with the id (public, 16 hex digits) and the hash of the
/// secret to keep.
pub fn new_api_token() -> Result<(String, String, String), CloudError> {
    let id = hex::encode(random::<8>()?);
    let secret = random_secret()?;
    let hash = digest(&secret);
    Ok((format!("{TOKEN_PREFIX}{id}_{secret}"), id, hash))
}

/// Splits a presented API token into id and secret; None when it is not shaped like one.
pub fn split_api_token(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty() && secret.len() <= 64)
        .then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_a_salt_of_their_own() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "same password, different salts");
        assert!(!a.contains("correct horse"));
        assert!(verify_password("correct horse battery", &a));
        assert!(!verify_password("correct horse batterY", &a));
        assert!(!verify_password("x", "not a phc string"));
        assert!(check_password("short").is_err());
        assert!(check_password(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn api_tokens_are_prefixed_and_only_their_hash_is_kept() {
        let (token, id, hash) = new_api_token().unwrap();
        let (pid, secret) = split_api_token(&token).unwrap();
        assert_eq!(pid, id);
        assert_eq!(digest(secret), hash);
        assert!(!hash.contains(secret));
        for bad in ["", "opt_", "opt_zz_x", "opt_0123456789abcdef_", "Bearer x", "opt_0123456789abcde_x"] {
            assert!(split_api_token(bad).is_none(), "{bad}");
        }
    }
}
