//! The audit service's errors and their gRPC statuses.

use confidant_runtime::error::{Violations, invalid_argument, storage_status};
use tonic::Status;

/// What can go wrong in the audit service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request broke field rules.
    #[error("invalid request")]
    Invalid(Violations),
    /// The caller presented no service identity.
    #[error("caller has no service identity")]
    NoIdentity,
    /// The store failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Invalid(v) => invalid_argument(v.as_slice()),
            Error::NoIdentity => {
                Status::unauthenticated("a service certificate with a SPIFFE identity is required")
            }
            Error::Storage(e) => {
                tracing::error!(error = %e, "audit storage failed");
                storage_status(&e)
            }
        }
    }
}
