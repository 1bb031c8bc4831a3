//! Retention's errors and, in one place, their gRPC statuses.

use confidant_runtime::error::{Violations, invalid_argument, storage_status, with_reason};
use tonic::{Code, Status};

/// What can go wrong in the retention service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request broke field rules.
    #[error("invalid request")]
    Invalid(Violations),
    /// No staff token where one is needed.
    #[error("sign in as a staff member")]
    Unauthenticated,
    /// The caller may not do this.
    #[error("{message}")]
    Denied {
        /// Machine-readable reason.
        reason: String,
        /// For people.
        message: String,
    },
    /// No such policy or hold.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The state does not allow it.
    #[error("{0}")]
    Conflict(&'static str),
    /// The state of the data does not allow it (a machine-readable reason).
    #[error("{message}")]
    Refused {
        /// Machine-readable reason.
        reason: &'static str,
        /// For people.
        message: &'static str,
    },
    /// The vault could not be reached or refused.
    #[error("vault: {0}")]
    VaultUnavailable(String),
    /// Identity could not be asked.
    #[error("identity unavailable")]
    Identity(Status),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    /// The audit event could not be recorded, so nothing changed.
    #[error("audit event not recorded: {0}")]
    Audit(String),
}

impl From<confidant_runtime::decide::Refusal> for Error {
    fn from(r: confidant_runtime::decide::Refusal) -> Self {
        match r {
            confidant_runtime::decide::Refusal::Denied { reason, message } => {
                Error::Denied { reason, message }
            }
            confidant_runtime::decide::Refusal::Unavailable(s) => Error::Identity(s),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Invalid(v) => invalid_argument(v.as_slice()),
            Error::Unauthenticated => with_reason(
                Code::Unauthenticated,
                "staff_token_required",
                "sign in as a staff member",
            ),
            Error::Denied { reason, message } => {
                with_reason(Code::PermissionDenied, &reason, message)
            }
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::Conflict(message) => with_reason(Code::FailedPrecondition, "conflict", message),
            Error::Refused { reason, message } => {
                with_reason(Code::FailedPrecondition, reason, message)
            }
            Error::VaultUnavailable(detail) => {
                tracing::warn!(detail = %detail, "vault call failed");
                with_reason(
                    Code::Unavailable,
                    "vault_unavailable",
                    "the vault could not be reached; retry later",
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
                tracing::error!(error = %e, "retention storage failed");
                storage_status(&e)
            }
            Error::Audit(e) => {
                tracing::error!(error = %e, "audit event not recorded");
                with_reason(
                    Code::Unavailable,
                    "audit_unavailable",
                    "the change could not be recorded, so it was not made; retry later",
                )
            }
        }
    }
}
