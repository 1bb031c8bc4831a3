//! Access tokens: short-lived JWTs signed with Ed25519 (EdDSA), each naming
//! its key id; the JWKS that lets every service verify them locally; and
//! rotation by listing a new key first while the old ones still verify.

use std::path::PathBuf;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

pub use confidant_runtime::auth::{AUDIENCE, Claims, TokenVerifier};

/// Errors of token keys and tokens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No key configured.
    #[error("identity.token_key_files names no key")]
    NoKey,
    /// A key file is unreadable or not an Ed25519 PKCS#8 key.
    #[error("{0}: not a readable Ed25519 PKCS#8 key")]
    BadKey(String),
    /// The token does not verify (signature, expiry, issuer, audience, key).
    #[error("invalid token")]
    Invalid,
}

impl From<confidant_runtime::auth::InvalidToken> for Error {
    fn from(_: confidant_runtime::auth::InvalidToken) -> Self {
        Error::Invalid
    }
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    public: Vec<u8>,
}

/// The identity service's token keys: the first signs, all verify.
pub struct TokenKeys {
    keys: Vec<SigningKey>,
    issuer: String,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field(
                "kids",
                &self.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The key id of a public key: base64url of the first 12 bytes of its SHA-256.
fn kid(public: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public);
    URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12])
}

impl TokenKeys {
    /// Loads the key files; the first is the active signing key.
    pub fn load(files: &[PathBuf], trust_domain: &str) -> Result<Self, Error> {
        let mut keys = Vec::new();
        for path in files {
            let bad = || Error::BadKey(path.display().to_string());
            let der = zeroize::Zeroizing::new(std::fs::read(path).map_err(|_| bad())?);
            let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| bad())?;
            let public = pair.public_key().as_ref().to_vec();
            keys.push(SigningKey {
                kid: kid(&public),
                encoding: EncodingKey::from_ed_der(&der),
                public,
            });
        }
        if keys.is_empty() {
            return Err(Error::NoKey);
        }
        Ok(Self {
            keys,
            issuer: format!("{trust_domain}/identity"),
        })
    }

    /// The issuer named in tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs any claims with the active key.
    pub fn sign_any<T: serde::Serialize>(&self, claims: &T) -> Result<String, Error> {
        let key = self.keys.first().ok_or(Error::NoKey)?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(|_| Error::Invalid)
    }

    /// Signs `claims` with the active key.
    pub fn sign(&self, claims: &Claims) -> Result<String, Error> {
        let key = self.keys.first().ok_or(Error::NoKey)?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).map_err(|_| Error::Invalid)
    }

    /// The JSON Web Key Set of every key (RFC 7517, OKP/Ed25519 per RFC 8037).
    pub fn jwks(&self) -> String {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(&k.public),
                    "kid": k.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &std::path::Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        confidant_runtime::keys::write_new_ed25519_key(&path).unwrap();
        path
    }

    fn claims(exp_in: i64) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: "t/identity".into(),
            aud: AUDIENCE.into(),
            sub: "staff-1".into(),
            sid: "session-1".into(),
            roles: vec!["associate".into()],
            iat: now,
            exp: now + exp_in,
            jti: "j".into(),
        }
    }

    #[test]
    fn tokens_verify_from_the_jwks_and_rotation_keeps_old_tokens_valid() {
        let dir = tempfile::tempdir().unwrap();
        let old = key_file(dir.path(), "old.key");
        let keys = TokenKeys::load(std::slice::from_ref(&old), "t").unwrap();
        let token = keys.sign(&claims(600)).unwrap();
        let verifier = TokenVerifier::from_jwks(&keys.jwks(), "t/identity").unwrap();
        assert_eq!(verifier.verify(&token).unwrap().sub, "staff-1");

        // Rotation: a new key signs; the old one still verifies its tokens.
        let new = key_file(dir.path(), "new.key");
        let rotated = TokenKeys::load(&[new, old], "t").unwrap();
        let fresh = rotated.sign(&claims(600)).unwrap();
        let verifier = TokenVerifier::from_jwks(&rotated.jwks(), "t/identity").unwrap();
        assert!(verifier.verify(&token).is_ok());
        assert!(verifier.verify(&fresh).is_ok());
        assert_ne!(
            jsonwebtoken::decode_header(&token).unwrap().kid,
            jsonwebtoken::decode_header(&fresh).unwrap().kid
        );
    }

    #[test]
    fn expired_tampered_or_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::load(&[key_file(dir.path(), "k")], "t").unwrap();
        let verifier = TokenVerifier::from_jwks(&keys.jwks(), "t/identity").unwrap();
        assert!(
            verifier.verify(&keys.sign(&claims(-120)).unwrap()).is_err(),
            "expired"
        );
        let token = keys.sign(&claims(600)).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged_body = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin"}"#);
        parts[1] = &forged_body;
        assert!(verifier.verify(&parts.join(".")).is_err(), "tampered");
        let other = TokenKeys::load(&[key_file(dir.path(), "other")], "t").unwrap();
        assert!(
            verifier.verify(&other.sign(&claims(600)).unwrap()).is_err(),
            "foreign key"
        );
        let wrong_issuer = TokenVerifier::from_jwks(&keys.jwks(), "elsewhere/identity").unwrap();
        assert!(wrong_issuer.verify(&token).is_err());
    }
}
