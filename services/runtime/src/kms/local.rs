//! The local KMS: AES-256-GCM key wrapping under master keys kept in a
//! keyring file. For development only — the master key lies on the same disk
//! as the data — and refused in production unless explicitly allowed.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::{DataKey, EncryptionContext, Error, Kms, SecretKey, WrappedKey};

const MAGIC: &[u8; 4] = b"cfk1";

/// The local provider. Its keyring file holds one master key per line,
/// `<key-id> <base64 key>`; the last line is the active key, and
/// [`LocalKms::rotate`] appends a new one.
#[derive(Debug)]
pub struct LocalKms {
    path: PathBuf,
    keys: RwLock<Vec<(String, SecretKey)>>,
}

fn keyring_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Keyring(format!("{}: {e}", path.display()))
}

fn random_key() -> Result<SecretKey, Error> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| Error::Other("random generator failed".into()))?;
    SecretKey::from_slice(bytes.as_ref())
}

impl LocalKms {
    /// Opens the keyring at `path`, creating it with one key if missing.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let kms = Self {
            path: path.to_owned(),
            keys: RwLock::new(Vec::new()),
        };
        if path.exists() {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path).map_err(|e| keyring_error(path, e))?,
            );
            let mut keys = Vec::new();
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let (id, encoded) = line.split_once(' ').ok_or_else(|| {
                    keyring_error(path, format!("line {} is not `<id> <key>`", n + 1))
                })?;
                let bytes =
                    zeroize::Zeroizing::new(STANDARD.decode(encoded.trim()).map_err(|_| {
                        keyring_error(path, format!("line {} is not base64", n + 1))
                    })?);
                keys.push((id.to_owned(), SecretKey::from_slice(&bytes)?));
            }
            if keys.is_empty() {
                return Err(keyring_error(path, "holds no key"));
            }
            *kms.keys
                .write()
                .map_err(|_| Error::Other("keyring lock poisoned".into()))? = keys;
        } else {
            kms.rotate()?;
        }
        Ok(kms)
    }

    /// Adds a new master key and makes it the active one; returns its id.
    /// Keys wrapped under older keys still unwrap.
    pub fn rotate(&self) -> Result<String, Error> {
        let id = Self::new_key_id();
        self.rotate_to(&id)?;
        Ok(id)
    }

    /// A fresh id for a master key, for [`LocalKms::rotate_to`]: so that a
    /// rotation can be recorded under the key's id before it happens.
    pub fn new_key_id() -> String {
        format!("local-{}", uuid::Uuid::now_v7())
    }

    /// As [`LocalKms::rotate`], the new key taking the id `id`, which no
    /// key of the keyring may have.
    pub fn rotate_to(&self, id: &str) -> Result<(), Error> {
        let key = random_key()?;
        let mut keys = self
            .keys
            .write()
            .map_err(|_| Error::Other("keyring lock poisoned".into()))?;
        if id.is_empty() || id.contains(char::is_whitespace) || keys.iter().any(|(k, _)| k == id) {
            return Err(keyring_error(
                &self.path,
                format!("{id:?} cannot be a new key's id"),
            ));
        }
        let mut kept = keys.clone();
        kept.push((id.to_owned(), key));
        self.save(&kept)?;
        *keys = kept;
        Ok(())
    }

    /// The ids of the master keys, oldest first; the last is the active one.
    pub fn key_ids(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .keys
            .read()
            .map_err(|_| Error::Other("keyring lock poisoned".into()))?
            .iter()
            .map(|(id, _)| id.clone())
            .collect())
    }

    /// Removes the master key `id` from the keyring for good: whatever it
    /// still wraps can never be unwrapped again, so the caller first makes
    /// sure nothing does (a rotation and its rewraps). The active key is
    /// refused.
    pub fn retire(&self, id: &str) -> Result<(), Error> {
        let mut keys = self
            .keys
            .write()
            .map_err(|_| Error::Other("keyring lock poisoned".into()))?;
        let i = self.retirable_in(&keys, id)?;
        let mut kept = keys.clone();
        // The removed key is zeroized as it drops.
        kept.remove(i);
        self.save(&kept)?;
        *keys = kept;
        Ok(())
    }

    /// Whether [`LocalKms::retire`] would take `id`: the error it would give
    /// if not (an unknown key, the active key), checked before any work
    /// that the retirement depends on.
    pub fn check_retirable(&self, id: &str) -> Result<(), Error> {
        let keys = self
            .keys
            .read()
            .map_err(|_| Error::Other("keyring lock poisoned".into()))?;
        self.retirable_in(&keys, id).map(|_| ())
    }

    /// The position of `id` in `keys` if it may be retired.
    fn retirable_in(&self, keys: &[(String, SecretKey)], id: &str) -> Result<usize, Error> {
        match keys.iter().position(|(k, _)| k == id) {
            None => Err(Error::KeyNotUsable(format!("no local key {id}"))),
            Some(i) if i + 1 == keys.len() => Err(keyring_error(
                &self.path,
                format!("{id} is the active key; rotate to a new one first"),
            )),
            Some(i) => Ok(i),
        }
    }

    /// Writes `keys` as the keyring file (mode 0600): to a temporary file,
    /// flushed to disk, then renamed over the keyring, so that a crash never
    /// leaves a half-written keyring.
    fn save(&self, keys: &[(String, SecretKey)]) -> Result<(), Error> {
        let mut text = zeroize::Zeroizing::new(String::new());
        for (id, key) in keys {
            text.push_str(id);
            text.push(' ');
            text.push_str(&STANDARD.encode(key.expose()));
            text.push('\n');
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| keyring_error(&self.path, e))?;
        }
        let tmp = self.path.with_extension("tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| keyring_error(&tmp, e))?;
            file.write_all(text.as_bytes())
                .map_err(|e| keyring_error(&tmp, e))?;
            file.sync_all().map_err(|e| keyring_error(&tmp, e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| keyring_error(&self.path, e))
    }

    fn key(&self, id: &str) -> Result<SecretKey, Error> {
        let keys = self
            .keys
            .read()
            .map_err(|_| Error::Other("keyring lock poisoned".into()))?;
        keys.iter()
            .find(|(k, _)| k == id)
            .map(|(_, key)| key.clone())
            .ok_or_else(|| Error::KeyNotUsable(format!("no local key {id}")))
    }

    fn aad(key_id: &str, context: &EncryptionContext) -> Vec<u8> {
        let mut aad = key_id.as_bytes().to_vec();
        aad.push(0);
        aad.extend(context.canonical_bytes());
        aad
    }

    fn wrap(
        &self,
        key_id: &str,
        plaintext: &SecretKey,
        context: &EncryptionContext,
    ) -> Result<WrappedKey, Error> {
        let master = self.key(key_id)?;
        let sealing = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, master.expose())
                .map_err(|_| Error::InvalidKeyMaterial)?,
        );
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Other("random generator failed".into()))?;
        let mut buf = plaintext.expose().to_vec();
        sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(key_id, context)),
                &mut buf,
            )
            .map_err(|_| Error::Other("sealing failed".into()))?;
        let mut ciphertext = MAGIC.to_vec();
        ciphertext.extend_from_slice(&nonce);
        ciphertext.extend_from_slice(&buf);
        Ok(WrappedKey {
            key_id: key_id.to_owned(),
            ciphertext,
        })
    }
}

#[async_trait]
impl Kms for LocalKms {
    fn active_key_id(&self) -> String {
        self.keys
            .read()
            .ok()
            .and_then(|k| k.last().map(|(id, _)| id.clone()))
            .unwrap_or_default()
    }

    async fn generate_data_key(&self, context: &EncryptionContext) -> Result<DataKey, Error> {
        let plaintext = random_key()?;
        let wrapped = self.wrap(&self.active_key_id(), &plaintext, context)?;
        Ok(DataKey { plaintext, wrapped })
    }

    async fn decrypt(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
    ) -> Result<SecretKey, Error> {
        let body = wrapped
            .ciphertext
            .strip_prefix(MAGIC)
            .ok_or(Error::InvalidCiphertext)?;
        if body.len() < NONCE_LEN {
            return Err(Error::InvalidCiphertext);
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let master = self.key(&wrapped.key_id)?;
        let opening = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, master.expose())
                .map_err(|_| Error::InvalidKeyMaterial)?,
        );
        let mut buf = zeroize::Zeroizing::new(sealed.to_vec());
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::InvalidCiphertext)?;
        let plain = opening
            .open_in_place(
                nonce,
                Aad::from(Self::aad(&wrapped.key_id, context)),
                &mut buf,
            )
            .map_err(|_| Error::InvalidCiphertext)?;
        SecretKey::from_slice(plain)
    }

    async fn rewrap(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        destination_key_id: Option<&str>,
    ) -> Result<WrappedKey, Error> {
        let plaintext = self.decrypt(wrapped, context).await?;
        let destination = destination_key_id.map_or_else(|| self.active_key_id(), str::to_owned);
        self.wrap(&destination, &plaintext, context)
    }
}
