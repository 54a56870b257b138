//! TOTP for people's second factor, over the one implementation in `outpost_shared::totp`
//! (RFC 6238: HMAC-SHA1, 6 digits, 30-second steps, base32 secrets). A code is accepted for the
//! current step and one step either side (clocks a little apart), and only for a step later than
//! the last one accepted, so a code seen over a shoulder works once.

use outpost_shared::totp;

pub use totp::{uri, STEP};

/// A new 160-bit secret, base32 (what apps take typed or from a QR code).
pub fn new_secret() -> Result<String, crate::CloudError> {
    Ok(totp::encode_secret(&super::secret::random::<20>()?))
}

/// The step `code` is valid for at `unix_now` (this step or one either side) and later than
/// `after`; None when it is not (wrong, too old, used, not six digits, a broken secret).
pub fn check(secret: &str, code: &str, unix_now: u64, after: u64) -> Option<u64> {
    let key = totp::decode_secret(secret).ok()?;
    totp::verify_after(&key, code.trim(), unix_now, Some(after))
}

/// The code an app would show for `secret` at `unix` (tests play the app).
#[cfg(test)]
pub(crate) fn code_for(secret: &str, unix: u64) -> String {
    totp::code_at(&totp::decode_secret(secret).expect("base32"), unix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_per_step_and_only_near_now() {
        let secret = new_secret().unwrap();
        let code = code_for(&secret, 1_111_111_109);
        let step = check(&secret, &code, 1_111_111_109, 0).expect("the app's code");
        assert_eq!(check(&secret, &code, 1_111_111_109, step), None, "used once already");
        assert_eq!(check(&secret, &code, 1_111_111_109 + 300, 0), None, "too old");
        assert_eq!(check("not base32!", &code, 1_111_111_109, 0), None);
    }
}
