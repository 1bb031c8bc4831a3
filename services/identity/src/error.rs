//! The identity service's errors and their gRPC statuses.

use confidant_runtime::error::{Violations, invalid_argument, storage_status};
use tonic::Status;

use crate::store::StoreError;

/// What can go wrong in the identity service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request broke field rules.
    #[error("invalid request")]
    Invalid(Violations),
    /// The caller presented no identity.
    #[error("caller has no identity")]
    NoIdentity,
    /// Storage failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Invalid(v) => invalid_argument(v.as_slice()),
            Error::NoIdentity => {
                Status::unauthenticated("a client certificate with a SPIFFE identity is required")
            }
            Error::Store(StoreError::NotFound(what)) => {
                Status::not_found(format!("{what} not found"))
            }
            Error::Store(StoreError::Conflict(what)) => Status::already_exists(what),
            Error::Store(StoreError::Sqlx(e)) => {
                tracing::error!(error = %e, "identity storage failed");
                storage_status(&e)
            }
            Error::Store(StoreError::Outbox(e)) => {
                tracing::error!(error = %e, "identity outbox failed");
                Status::internal("could not record the audit event; nothing was changed")
            }
        }
    }
}
