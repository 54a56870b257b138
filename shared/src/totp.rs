//! TOTP (RFC 6238) as authenticator apps speak it: HMAC-SHA1, 6 digits, 30-second steps from the
//! Unix epoch, secrets in base32 (RFC 4648, no padding needed). A code is accepted for the current
//! step and one step either side, so clocks a little apart still agree. One implementation for the
//! connector's commands by mail and the cloud's second factor for people.

use ring::hmac;

/// Seconds per step.
pub const STEP: u64 = 30;
/// Shortest secret accepted (RFC 4226 asks for at least 128 bits).
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a secret is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("not base32 (letters A-Z and digits 2-7): `{0}` at position {1}")]
    NotBase32(char, usize),
    #[error("too short: {0} bytes, at least {MIN_SECRET_BYTES} are needed (26 base32 characters)")]
    TooShort(usize),
}

/// Decodes base32 (RFC 4648), case-insensitive; spaces, dashes and `=` padding are ignored, as
/// apps show secrets in groups.
pub fn decode_secret(text: &str) -> Result<Vec<u8>, SecretError> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut acc, mut bits) = (0u64, 0u32);
    for (i, c) in text.chars().enumerate() {
        let v = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u64 - 'A' as u64,
            c @ '2'..='7' => c as u64 - '2' as u64 + 26,
            ' ' | '-' | '=' => continue,
            _ => return Err(SecretError::NotBase32(c, i)),
        };
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if out.len() < MIN_SECRET_BYTES {
        return Err(SecretError::TooShort(out.len()));
    }
    Ok(out)
}

/// Encodes bytes as base32 without padding (for new secrets).
pub fn encode_secret(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for b in bytes {
        acc = (acc << 8) | *b as u64;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A fresh random secret of 20 bytes (160 bits, as RFC 4226 recommends), base32.
pub fn new_secret() -> String {
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw).expect("the system's random source works");
    encode_secret(&raw)
}

/// HOTP (RFC 4226) with 6 digits.
fn hotp(secret: &[u8], counter: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let h = tag.as_ref();
    let offset = (h[h.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[offset] & 0x7f, h[offset + 1], h[offset + 2], h[offset + 3]]);
    bin % 1_000_000
}

/// The step a Unix time falls in.
pub fn step_at(unix: u64) -> u64 {
    unix / STEP
}

/// The 6-digit code at a Unix time, zero-padded.
pub fn code_at(secret: &[u8], unix: u64) -> String {
    format!("{:06}", hotp(secret, step_at(unix)))
}

/// The step whose code `code` is, among the current step and one either side; `None` when it
/// matches none. Compared in constant time so response times reveal nothing.
pub fn verify(secret: &[u8], code: &str, unix: u64) -> Option<u64> {
    verify_after(secret, code, unix, None)
}

/// As [`verify`], for a step later than `after` only: a code accepted once (its step recorded)
/// is refused when seen again, even within its step. Every candidate is computed and compared in
/// constant time, so the answer takes the same time whichever matched.
pub fn verify_after(secret: &[u8], code: &str, unix: u64, after: Option<u64>) -> Option<u64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_at(unix);
    let mut found = None;
    for step in [now.saturating_sub(1), now, now + 1] {
        let expect = format!("{:06}", hotp(secret, step));
        let same = expect.bytes().zip(code.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same && found.is_none() && after.is_none_or(|a| step > a) {
            found = Some(step);
        }
    }
    found
}

/// The `otpauth://` URI authenticator apps import (as a QR code or a link), for `account` at
/// issuer Outpost.
pub fn uri(secret: &str, account: &str) -> String {
    let label: String = account
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b".-_".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!(
        "otpauth://totp/Outpost:{label}?secret={secret}&issuer=Outpost&algorithm=SHA1&digits=6&period={STEP}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 key "12345678901234567890": the low six digits.
    #[test]
    fn rfc_6238_vectors_and_one_use_per_step() {
        let key = b"12345678901234567890";
        let secret = encode_secret(key);
        assert_eq!(decode_secret(&secret).unwrap(), key);
        assert_eq!(code_at(key, 59), "287082");
        assert_eq!(verify_after(key, "081804", 1111111109, None), Some(1111111109 / 30));
        assert_eq!(verify_after(key, "081804", 1111111109, Some(1111111109 / 30)), None, "used");
        assert_eq!(verify_after(key, "081804", 1111111109 + 300, None), None, "too old");
        for bad in ["", "28708", "2870820", "abcdef", " 287082"] {
            assert_eq!(verify(key, bad, 59), None, "{bad}");
        }
        assert!(uri(&secret, "al ice").starts_with("otpauth://totp/Outpost:al%20ice?secret="));
        assert_eq!(new_secret().len(), 32);
    }
}
