//! The vault's errors and, in one place, their gRPC statuses. Messages never
//! carry field values, key material or database text.

use confidant_runtime::error::{
    Violations, invalid_argument, storage_status, with_info, with_reason,
};
use confidant_runtime::portable::TransactError;
use tonic::{Code, Status};

/// What can go wrong in the vault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request broke field rules.
    #[error("invalid request")]
    Invalid(Violations),
    /// No staff token where one is needed.
    #[error("sign in as a staff member")]
    Unauthenticated,
    /// The caller may not do this; `reason` is machine-readable.
    #[error("{message}")]
    Denied {
        /// e.g. `behind_wall`, `not_assigned`, `retention_only`.
        reason: String,
        /// For people.
        message: String,
    },
    /// No such record, scope or hold.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The key is destroyed: the data can never be read again.
    #[error("{0} is shredded")]
    Shredded(&'static str),
    /// The scope is pending destruction: reads and writes refused.
    #[error("the scope is pending destruction")]
    PendingDestruction,
    /// A legal hold forbids the shred.
    #[error("a legal hold covers the scope")]
    Held,
    /// A client stream stopped before it was complete; nothing was kept.
    #[error("the stream stopped before it was complete")]
    StreamAborted,
    /// The record was corrected: this version is history, `0` is the one
    /// that replaced it.
    #[error("the record was corrected; its current version is another")]
    Superseded(uuid::Uuid),
    /// The scope or record holds originals that belong to the client.
    #[error("originals that belong to the client are not shredded")]
    Originals,
    /// The state does not allow the operation.
    #[error("{0}")]
    Conflict(&'static str),
    /// The KMS cannot be reached or refused.
    #[error(transparent)]
    Kms(#[from] confidant_runtime::kms::Error),
    /// The KMS refuses to wrap under the active KMS key (disabled, pending
    /// deletion, unknown, or not allowed to the vault).
    #[error("the KMS refuses the active KMS key")]
    ActiveKeyRefused,
    /// A ciphertext does not open: tampered or corrupt storage.
    #[error("stored ciphertext does not open")]
    Integrity,
    /// The identity service cannot be asked.
    #[error("identity unavailable: {0}")]
    Identity(Status),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    /// The audit event could not be recorded, so nothing is returned.
    #[error("audit event not recorded: {0}")]
    Audit(String),
}

impl From<crate::keys::KeyError> for Error {
    fn from(e: crate::keys::KeyError) -> Self {
        match e {
            crate::keys::KeyError::Kms(e) => Error::Kms(e),
            crate::keys::KeyError::Crypto(_) => Error::Integrity,
        }
    }
}

/// A failed transaction of statements and their audit events. A guard that
/// did not hold means the scope changed under the write; callers that can
/// tell more match [`TransactError::Unmet`] themselves first.
impl From<TransactError> for Error {
    fn from(e: TransactError) -> Self {
        match e {
            TransactError::Sqlx(e) => Error::Store(e),
            TransactError::Unmet { .. } => {
                Error::Conflict("the scope was shredded or is pending destruction; retry")
            }
            TransactError::Outbox(e) => Error::Audit(e.to_string()),
        }
    }
}

impl From<crate::crypto::CryptoError> for Error {
    fn from(_: crate::crypto::CryptoError) -> Self {
        Error::Integrity
    }
}

impl Error {
    /// Why stored data did not open, if that is what this is: `integrity`
    /// (a ciphertext fails to authenticate) or `key_unwrap_failed` (a
    /// wrapped key does not unwrap where it is stored).
    pub fn unreadable_reason(&self) -> Option<&'static str> {
        use crate::keys::UNREADABLE_REASONS as REASONS;
        use confidant_runtime::kms::Error as Kms;
        match self {
            Error::Integrity => Some(REASONS[0]),
            Error::Kms(Kms::InvalidCiphertext | Kms::InvalidKeyMaterial) => Some(REASONS[1]),
            _ => None,
        }
    }

    /// The machine-readable reason, for batch item statuses.
    pub fn reason(&self) -> String {
        match self {
            Error::Denied { reason, .. } => reason.clone(),
            Error::Shredded(_) => "shredded".into(),
            Error::PendingDestruction => "pending_destruction".into(),
            Error::Held => "legal_hold".into(),
            Error::Originals => "originals".into(),
            Error::Superseded(_) => "superseded".into(),
            Error::Kms(_) => "kms_unavailable".into(),
            Error::ActiveKeyRefused => "kms_active_key_refused".into(),
            Error::Audit(_) => "audit_unavailable".into(),
            _ => String::new(),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        use confidant_runtime::kms::Error as Kms;
        match err {
            Error::Invalid(v) => invalid_argument(v.as_slice()),
            Error::Unauthenticated => with_reason(
                Code::Unauthenticated,
                "staff_token_required",
                "a staff member's access token is required: client data is read only for a person, and written by a person or a service configured as a writer",
            ),
            Error::Denied { reason, message } => {
                with_reason(Code::PermissionDenied, &reason, message)
            }
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::Shredded(what) => with_reason(
                Code::FailedPrecondition,
                "shredded",
                format!("the {what} was shredded: its key is destroyed and it cannot be read"),
            ),
            Error::PendingDestruction => with_reason(
                Code::FailedPrecondition,
                "pending_destruction",
                "the scope is pending destruction; a records manager can cancel it",
            ),
            Error::Held => with_reason(
                Code::FailedPrecondition,
                "legal_hold",
                "a legal hold covers the scope; it cannot be shredded until the hold is released",
            ),
            Error::StreamAborted => with_reason(
                Code::Aborted,
                "stream_aborted",
                "the upload stopped before it was complete; nothing was stored",
            ),
            Error::Originals => with_reason(
                Code::FailedPrecondition,
                "originals",
                "the scope holds originals that belong to the client: return them, never shred them",
            ),
            Error::Superseded(by) => with_info(
                Code::FailedPrecondition,
                "superseded",
                [("superseded_by", by.to_string())],
                format!(
                    "the record was corrected: version {by} replaced it; correct that one instead"
                ),
            ),
            Error::Conflict(message) => with_reason(Code::FailedPrecondition, "conflict", message),
            Error::Kms(e) => {
                tracing::warn!(error = %e, "kms call failed");
                match e {
                    Kms::Unavailable(_) | Kms::Other(_) => with_reason(
                        Code::Unavailable,
                        "kms_unavailable",
                        "the key management service is unavailable; nothing was written",
                    ),
                    Kms::AccessDenied(_) | Kms::KeyNotUsable(_) => with_reason(
                        Code::FailedPrecondition,
                        "kms_key_unusable",
                        "the KMS key is not usable by the vault",
                    ),
                    Kms::InvalidCiphertext | Kms::InvalidKeyMaterial | Kms::Keyring(_) => {
                        with_reason(
                            Code::DataLoss,
                            "key_unwrap_failed",
                            "a stored key does not unwrap",
                        )
                    }
                }
            }
            Error::ActiveKeyRefused => with_reason(
                Code::FailedPrecondition,
                "kms_active_key_refused",
                "the KMS refuses the active KMS key (kms.key_id): no scope key can be rewrapped \
                 under it; check the key's state and the vault's permission to use it",
            ),
            Error::Integrity => {
                tracing::error!("stored ciphertext does not open");
                with_reason(
                    Code::DataLoss,
                    "integrity",
                    "stored ciphertext does not open: it was altered or moved",
                )
            }
            Error::Identity(status) => {
                tracing::warn!(code = ?status.code(), "identity call failed");
                with_reason(
                    Code::Unavailable,
                    "identity_unavailable",
                    "the authorization decision could not be made; retry later",
                )
            }
            Error::Store(e) => {
                tracing::error!(error = %e, "vault storage failed");
                storage_status(&e)
            }
            Error::Audit(e) => {
                tracing::error!(error = %e, "audit event not recorded; nothing returned");
                with_reason(
                    Code::Unavailable,
                    "audit_unavailable",
                    "the access could not be recorded, so nothing was returned; retry later",
                )
            }
        }
    }
}
