//! Secrets a service must be able to read back (identity: TOTP seeds;
//! intake: the contact address of an invitation), sealed with AES-256-GCM
//! under the service's own data key, which is stored only wrapped by the KMS
//! (envelope encryption); each bound to its owner by associated data.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use chrono::Utc;
use zeroize::Zeroizing;

use crate::ServiceName;
use crate::kms::{EncryptionContext, Kms, WrappedKey};
use crate::portable::{Statement, TransactError, Value};
use crate::storage::Database;

const MAGIC: &[u8; 3] = b"sb1";

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The KMS refused or is unreachable.
    #[error(transparent)]
    Kms(#[from] crate::kms::Error),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    /// The key could not be stored.
    #[error(transparent)]
    Transact(#[from] TransactError),
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

fn context(service: ServiceName) -> EncryptionContext {
    EncryptionContext::new()
        .with("confidant:service", service.as_str())
        .with("confidant:purpose", "secrets")
}

/// Rewraps `service`'s data key, stored as `wrapped` under a KMS key that is
/// no longer the active one, under the active key: the data key itself, and
/// so every secret sealed with it, stays the same. The change and its audit
/// event are written together, and only over the wrapping that was read (a
/// replica starting at the same time does it once). A failure leaves the
/// old wrapping, which still opens, for the next start to retry.
async fn rewrap_under_active(
    db: &Database,
    kms: &dyn Kms,
    service: ServiceName,
    trust_domain: &str,
    wrapped: &WrappedKey,
) {
    let moved = match kms.rewrap(wrapped, &context(service), None).await {
        Ok(moved) => moved,
        Err(e) => {
            tracing::warn!(service = %service, error = %e, from = %wrapped.key_id, "the service's data key stays under a KMS key that is not the active one; retried at the next start");
            return;
        }
    };
    let mut event = crate::audit::service_event(
        service,
        trust_domain,
        crate::audit::Action::ServiceDataKeyRewrapped,
        confidant_proto::audit::v1::Outcome::Allowed,
    );
    // A reason is a short code; the service's log names both KMS keys.
    event.reason = "kms_key_rotated".to_owned();
    let written = db
        .transact(
            vec![
                Statement::new(
                    "UPDATE service_data_keys SET key_id = $1, wrapped = $2 WHERE id = 1 AND key_id = $3",
                    vec![
                        Value::Text(moved.key_id.clone()),
                        Value::Bytes(moved.ciphertext.clone()),
                        Value::Text(wrapped.key_id.clone()),
                    ],
                )
                .expecting(1),
            ],
            &[event],
        )
        .await;
    match written {
        Ok(_) => {
            tracing::info!(service = %service, from = %wrapped.key_id, to = %moved.key_id, "the service's data key was rewrapped under the active KMS key");
        }
        // Another replica moved it first.
        Err(TransactError::Unmet { .. }) => {}
        Err(e) => {
            tracing::warn!(service = %service, error = %e, "the service's rewrapped data key was not stored; retried at the next start");
        }
    }
}

/// Whether the service's data key in `db` (if it has one yet) is wrapped
/// under the KMS key `key_id`.
pub async fn data_key_wrapped_under(db: &Database, key_id: &str) -> Result<bool, sqlx::Error> {
    let row: Option<(String,)> = db
        .fetch_optional("SELECT key_id FROM service_data_keys WHERE id = 1", vec![])
        .await?;
    Ok(row.is_some_and(|(k,)| k == key_id))
}

impl SecretBox {
    /// Unwraps `service`'s data key (in its own database), creating it on
    /// first start. After a KMS key rotation the key is rewrapped under the
    /// active KMS key (see [`rewrap_under_active`]), so that the old KMS key
    /// can be retired.
    pub async fn open_or_create(
        db: &Database,
        kms: &dyn Kms,
        service: ServiceName,
        trust_domain: &str,
    ) -> Result<Self, SecretError> {
        let read = |db: Database| async move {
            let row: Option<(String, Vec<u8>)> = db
                .fetch_optional(
                    "SELECT key_id, wrapped FROM service_data_keys WHERE id = 1",
                    vec![],
                )
                .await?;
            Ok::<_, SecretError>(row)
        };
        let row = match read(db.clone()).await? {
            Some(row) => row,
            None => {
                let fresh = kms.generate_data_key(&context(service)).await?;
                db.transact(
                    vec![Statement::new(
                        "INSERT INTO service_data_keys (id, key_id, wrapped, created_at) VALUES (1, $1, $2, $3) \
                         ON CONFLICT (id) DO NOTHING",
                        vec![
                            Value::Text(fresh.wrapped.key_id.clone()),
                            Value::Bytes(fresh.wrapped.ciphertext.clone()),
                            Value::Time(Utc::now()),
                        ],
                    )],
                    &[],
                )
                .await?;
                // Another replica may have won: use what is stored.
                read(db.clone()).await?.ok_or(SecretError::Corrupt)?
            }
        };
        let (key_id, ciphertext) = row;
        let wrapped = WrappedKey { key_id, ciphertext };
        let plain = kms.decrypt(&wrapped, &context(service)).await?;
        if !kms.is_active(&wrapped.key_id) {
            rewrap_under_active(db, kms, service, trust_domain, &wrapped).await;
        }
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, plain.expose()).map_err(|_| SecretError::Corrupt)?,
        );
        Ok(Self { key })
    }

    /// Seals `secret` for `owner` (e.g. a staff id, an invitation id).
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
