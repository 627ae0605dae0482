//! TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s steps, one step of skew), using
//! the `totp-rs` crate. A code is accepted at most once (replay protection by step).

use totp_rs::{Algorithm, Secret, TOTP};

pub const DIGITS: usize = 6;
pub const STEP: u64 = 30;

fn totp(secret: &[u8], account: &str) -> Option<TOTP> {
    TOTP::new(Algorithm::SHA1, DIGITS, 1, STEP, secret.to_vec(), Some("Chartledger".into()), account.into())
        .ok()
}

/// A new random 160-bit secret.
pub fn new_secret() -> Vec<u8> {
    let mut s = vec![0u8; 20];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut s);
    s
}

/// The secret in base32, and the `otpauth://` URL an authenticator app scans.
pub fn provisioning(secret: &[u8], account: &str) -> Option<(String, String)> {
    let t = totp(secret, account)?;
    let b32 = Secret::Raw(secret.to_vec()).to_encoded().to_string();
    Some((b32, t.get_url()))
}

/// The time step a code matches (now, one before, or one after), if any.
pub fn matching_step(secret: &[u8], code: &str, unix_secs: u64) -> Option<u64> {
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret, "")?;
    let step = unix_secs / STEP;
    [step.saturating_sub(1), step, step + 1].into_iter().find(|s| {
        let expected = t.generate(s * STEP);
        constant_time_eq(expected.as_bytes(), code.as_bytes())
    })
}

/// The code for a time (tests and the demo seed use it to log in).
pub fn code_at(secret: &[u8], unix_secs: u64) -> String {
    totp(secret, "").map(|t| t.generate(unix_secs)).unwrap_or_default()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vector() {
        // RFC 6238 appendix B: secret "12345678901234567890", T = 59 -> 94287082 (8 digits);
        // the 6-digit code is its last six digits.
        let secret = b"12345678901234567890";
        assert_eq!(code_at(secret, 59), "287082");
        assert_eq!(matching_step(secret, "287082", 59), Some(1));
        assert_eq!(matching_step(secret, "287082", 59 + 30), Some(1), "one step of skew");
        assert_eq!(matching_step(secret, "287082", 59 + 90), None);
        assert_eq!(matching_step(secret, "28708", 59), None);
        assert_eq!(matching_step(secret, "abcdef", 59), None);
    }

    #[test]
    fn provisioning_url_names_the_issuer() {
        let (b32, url) = provisioning(&new_secret(), "dr.house").unwrap_or_default();
        assert_eq!(b32.len(), 32);
        assert!(url.starts_with("otpauth://totp/Chartledger:dr.house?"));
    }
}
