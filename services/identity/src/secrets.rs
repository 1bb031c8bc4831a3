//! Secrets the identity service must be able to read back (TOTP seeds),
//! sealed with AES-256-GCM under a data key that is stored only wrapped by
//! the KMS (envelope encryption), each bound to its owner by associated data.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use chrono::Utc;
use confidant_runtime::kms::{EncryptionContext, Kms, WrappedKey};
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Database;
use zeroize::Zeroizing;

const MAGIC: &[u8; 3] = b"sb1";

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The KMS refused or is unreachable.
    #[error(transparent)]
    Kms(#[from] confidant_runtime::kms::Error),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A sealed value does not open (wrong owner, tampered).
    #[error("sealed secret does not open")]
    Corrupt,
}

/// Seals and opens the service's secrets.
pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

fn context() -> EncryptionContext {
    EncryptionContext::new()
        .with("confidant:service", "identity")
        .with("confidant:purpose", "secrets")
}

impl SecretBox {
    /// Unwraps the service's data key, creating it on first start.
    pub async fn open_or_create(db: &Database, kms: &dyn Kms) -> Result<Self, SecretError> {
        let read = |db: Database| async move {
            let row: Option<(String, Vec<u8>)> = db
                .fetch_optional(
                    "SELECT key_id, wrapped FROM identity_data_keys WHERE id = 1",
                    vec![],
                )
                .await
                .map_err(crate::store::StoreError::from)?;
            Ok::<_, SecretError>(row)
        };
        let row = match read(db.clone()).await? {
            Some(row) => row,
            None => {
                let fresh = kms.generate_data_key(&context()).await?;
                db.transact(
                    vec![Statement::new(
                        "INSERT INTO identity_data_keys (id, key_id, wrapped, created_at) VALUES (1, $1, $2, $3) \
                         ON CONFLICT (id) DO NOTHING",
                        vec![
                            Value::Text(fresh.wrapped.key_id.clone()),
                            Value::Bytes(fresh.wrapped.ciphertext.clone()),
                            Value::Time(Utc::now()),
                        ],
                    )],
                    &[],
                )
                .await
                .map_err(crate::store::StoreError::from)?;
                // Another replica may have won: use what is stored.
                read(db.clone()).await?.ok_or(SecretError::Corrupt)?
            }
        };
        let (key_id, ciphertext) = row;
        let plain = kms
            .decrypt(&WrappedKey { key_id, ciphertext }, &context())
            .await?;
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, plain.expose()).map_err(|_| SecretError::Corrupt)?,
        );
        Ok(Self { key })
    }

    /// Seals `secret` for `owner` (e.g. a staff id).
    pub fn seal(&self, owner: &[u8], secret: &[u8]) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Corrupt)?;
        let mut buf = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(owner),
                &mut buf,
            )
            .map_err(|_| SecretError::Corrupt)?;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens a value sealed for `owner`.
    pub fn open(&self, owner: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let body = sealed.strip_prefix(MAGIC).ok_or(SecretError::Corrupt)?;
        if body.len() < NONCE_LEN {
            return Err(SecretError::Corrupt);
        }
        let (nonce, ct) = body.split_at(NONCE_LEN);
        let mut buf = Zeroizing::new(ct.to_vec());
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Corrupt)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(owner), &mut buf)
            .map_err(|_| SecretError::Corrupt)?;
        Ok(Zeroizing::new(plain.to_vec()))
    }
}
