//! The audit service's errors and their gRPC statuses.

use confidant_runtime::error::{Violations, invalid_argument, storage_status, with_reason};
use tonic::{Code, Status};

use crate::log::LogError;
use crate::merkle::ProofError;

/// What can go wrong in the audit service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request broke field rules.
    #[error("invalid request")]
    Invalid(Violations),
    /// The caller presented no service identity.
    #[error("caller has no service identity")]
    NoIdentity,
    /// What was asked for does not exist.
    #[error("{0}")]
    NotFound(&'static str),
    /// A proof for sizes the log cannot answer.
    #[error(transparent)]
    Proof(ProofError),
    /// The log was altered and refuses to sign.
    #[error("audit log integrity")]
    Integrity(crate::log::Integrity),
    /// The store failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
}

impl From<LogError> for Error {
    fn from(err: LogError) -> Self {
        match err {
            LogError::Storage(e) => Error::Storage(e),
            LogError::Integrity(i) => Error::Integrity(i),
            LogError::Proof(p) => Error::Proof(p),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Invalid(v) => invalid_argument(v.as_slice()),
            Error::NoIdentity => {
                Status::unauthenticated("a service certificate with a SPIFFE identity is required")
            }
            Error::NotFound(what) => Status::not_found(what),
            Error::Proof(p) => Status::out_of_range(p.to_string()),
            Error::Integrity(i) => {
                tracing::error!(problem = %i, "refused: audit log integrity");
                with_reason(
                    Code::FailedPrecondition,
                    "audit_log_integrity",
                    i.to_string(),
                )
            }
            Error::Storage(e) => {
                tracing::error!(error = %e, "audit storage failed");
                storage_status(&e)
            }
        }
    }
}
