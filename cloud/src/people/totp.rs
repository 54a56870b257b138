//! TOTP (RFC 6238) as authenticator apps speak it, for people's second factor: HMAC-SHA1, 6
//! digits, 30-second steps from the Unix epoch, secrets in base32 without padding. A code is
//! accepted for the current step and one step either side (clocks a little apart), and only for a
//! step later than the last one accepted, so a code seen over a shoulder works once.

use ring::hmac;

/// Seconds per step.
pub const STEP: u64 = 30;
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A new 160-bit secret, base32 (what apps take typed or from a QR code).
pub fn new_secret() -> Result<String, crate::CloudError> {
    Ok(encode(&super::secret::random::<20>()?))
}

fn encode(bytes: &[u8]) -> String {
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

fn decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase())? as u64;
        acc = ((acc << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The 6-digit code of `key` for time step `step`.
fn code_at(key: &[u8], step: u64) -> u32 {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key), &step.to_be_bytes());
    let h = tag.as_ref();
    let off = (h[h.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    bin % 1_000_000
}

/// The step `code` is valid for at `unix_now` (this step or one either side) and later than
/// `after`; None when it is not (wrong, too old, used, not six digits).
pub fn check(secret: &str, code: &str, unix_now: u64, after: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = code.parse().ok()?;
    let key = decode(secret)?;
    let now = unix_now / STEP;
    let mut found = None;
    // Every candidate is computed, so the answer takes the same time whichever matched.
    for step in [now.saturating_sub(1), now, now + 1] {
        if code_at(&key, step) == want && step > after {
            found = Some(step);
        }
    }
    found
}

/// The code an app would show for `secret` at `unix` (tests play the app).
#[cfg(test)]
pub(crate) fn code_for(secret: &str, unix: u64) -> String {
    format!("{:06}", code_at(&decode(secret).expect("base32"), unix / STEP))
}

/// The `otpauth://` URI apps import (as a QR code or a link).
pub fn uri(secret: &str, user: &str) -> String {
    let label: String = user
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

    #[test]
    fn rfc_6238_vectors_and_one_use_per_step() {
        // RFC 6238 appendix B, SHA-1 key "12345678901234567890": the low six digits.
        let secret = encode(b"12345678901234567890");
        assert_eq!(decode(&secret).unwrap(), b"12345678901234567890");
        assert_eq!(check(&secret, "287082", 59, 0), Some(1));
        assert_eq!(check(&secret, "081804", 1111111109, 0), Some(1111111109 / 30));
        assert_eq!(check(&secret, "081804", 1111111109, 1111111109 / 30), None, "used");
        assert_eq!(check(&secret, "081804", 1111111109 + 300, 0), None, "too old");
        for bad in ["", "28708", "2870820", "abcdef", " 287082x"] {
            assert_eq!(check(&secret, bad, 59, 0), None, "{bad}");
        }
        assert!(uri(&secret, "al ice").starts_with("otpauth://totp/Outpost:al%20ice?secret="));
        assert_eq!(new_secret().unwrap().len(), 32);
    }
}
