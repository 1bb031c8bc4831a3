//! Private key files: Ed25519 keys (PKCS#8 DER) written once, readable by
//! their owner only, never overwritten.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use zeroize::Zeroizing;

/// Errors of key files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Key generation failed.
    #[error("key generation failed")]
    Generate,
    /// The file could not be created (it may exist already) or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// A new Ed25519 private key, PKCS#8 DER.
pub fn generate_ed25519_pkcs8() -> Result<Zeroizing<Vec<u8>>, Error> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| Error::Generate)?;
    Ok(Zeroizing::new(doc.as_ref().to_vec()))
}

/// Writes a new Ed25519 key to `path` (mode 0600). Refuses to overwrite: a
/// lost signing key orphans everything it signed.
pub fn write_new_ed25519_key(path: &Path) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let key = generate_ed25519_pkcs8()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(&key).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Writes 32 random bytes to `path` (mode 0600) unless it exists: a secret
/// key for keyed hashes. Returns whether it wrote.
pub fn ensure_secret_file(path: &Path) -> Result<bool, Error> {
    use aws_lc_rs::rand::SecureRandom;
    if path.exists() {
        return Ok(false);
    }
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut secret = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(secret.as_mut())
        .map_err(|_| Error::Generate)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(secret.as_ref()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(true)
}
