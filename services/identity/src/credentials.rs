//! Staff credentials: Argon2id password hashes (OWASP parameters) and TOTP
//! (RFC 6238) second factors.

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Shortest and longest accepted passwords.
pub const MIN_PASSWORD: usize = 12;
/// See [`MIN_PASSWORD`].
pub const MAX_PASSWORD: usize = 128;

fn argon2() -> Argon2<'static> {
    // OWASP Password Storage Cheat Sheet: Argon2id, 19 MiB, 2 iterations, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why a password is refused, as a rule for the caller.
pub fn password_rule_broken(password: &str) -> Option<String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        Some(format!("must be at least {MIN_PASSWORD} characters"))
    } else if n > MAX_PASSWORD {
        Some(format!("must be at most {MAX_PASSWORD} characters"))
    } else {
        None
    }
}

/// A PHC-format Argon2id hash of `password` with a fresh salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "random generator failed".to_owned())?;
    argon2()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the stored hash. A malformed hash never matches.
pub fn verify_password(password: &str, stored: &str) -> bool {
    stored
        .parse::<PasswordHash>()
        .is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash to verify against when the account does not exist, so that the
/// answer takes as long as for a real account.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not the password of anyone").unwrap_or_default())
}

/// A new 160-bit TOTP secret.
pub fn new_totp_secret() -> Result<Zeroizing<Vec<u8>>, String> {
    let mut secret = Zeroizing::new(vec![0u8; 20]);
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| "random generator failed".to_owned())?;
    Ok(secret)
}

fn totp(secret: &[u8]) -> Option<totp_rs::Totp> {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(secret.to_vec())
        .build()
        .ok()
}

/// Whether `code` is valid for `secret` at unix time `now` (one step of skew).
pub fn check_totp(secret: &[u8], code: &str, now: u64) -> bool {
    code.len() == 6
        && code.chars().all(|c| c.is_ascii_digit())
        && totp(secret).is_some_and(|t| t.check(code, now).is_some())
}

/// The current code (for tests and for enrolment screens that show one).
pub fn totp_code(secret: &[u8], now: u64) -> String {
    totp(secret)
        .map(|t| t.generate(now).to_string())
        .unwrap_or_default()
}

/// Base32 (RFC 4648, no padding) for authenticator apps.
pub fn base32(secret: &[u8]) -> String {
    ::base32::encode(::base32::Alphabet::Rfc4648 { padding: false }, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let hash = hash_password("correct horse battery staple").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse battery staple", &hash));
        assert!(!verify_password("correct horse battery stapler", &hash));
        assert!(!verify_password("anything", "not a hash"));
        assert!(password_rule_broken("short").is_some());
        assert!(password_rule_broken("long enough passphrase").is_none());
    }

    #[test]
    fn totp_matches_rfc_6238_test_vectors() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", 8 digits
        // there; the last 6 digits are the 6-digit codes.
        let secret = b"12345678901234567890";
        assert_eq!(totp_code(secret, 59), "287082");
        assert_eq!(totp_code(secret, 1_111_111_109), "081804");
        assert_eq!(totp_code(secret, 2_000_000_000), "279037");
        assert!(check_totp(secret, "287082", 59 + 30), "one step of skew");
        assert!(!check_totp(secret, "287082", 59 + 90));
        assert!(!check_totp(secret, "28708", 59));
    }

    #[test]
    fn base32_matches_rfc_4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(
            base32(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
    }
}
