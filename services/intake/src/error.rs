//! Intake's errors and, in one place, their gRPC statuses.

use confidant_runtime::error::{Violations, invalid_argument, storage_status, with_reason};
use tonic::{Code, Status};

/// What can go wrong in the intake service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request broke field rules.
    #[error("invalid request")]
    Invalid(Violations),
    /// No staff token where one is needed.
    #[error("sign in as a staff member")]
    Unauthenticated,
    /// A client token that does not verify, or is not for this invitation.
    #[error("the client token is not valid for this invitation")]
    ClientUnauthenticated,
    /// The caller may not do this.
    #[error("{message}")]
    Denied {
        /// Machine-readable reason.
        reason: String,
        /// For people.
        message: String,
    },
    /// No such thing (the invitation secret, a submission).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The state does not allow it.
    #[error("{message}")]
    Precondition {
        /// Machine-readable reason.
        reason: &'static str,
        /// For people.
        message: &'static str,
    },
    /// Concurrent writers kept taking the same version number.
    #[error("{0}")]
    Aborted(&'static str),
    /// A peer service could not be reached or refused.
    #[error("{service}: {detail}")]
    Peer {
        /// Which.
        service: &'static str,
        /// What it said (logged, never returned).
        detail: String,
    },
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
            confidant_runtime::decide::Refusal::Unavailable(s) => Error::Peer {
                service: "identity",
                detail: format!("{:?}", s.code()),
            },
        }
    }
}

impl From<confidant_runtime::portable::TransactError> for Error {
    fn from(e: confidant_runtime::portable::TransactError) -> Self {
        match e {
            confidant_runtime::portable::TransactError::Sqlx(e) => Error::Store(e),
            other => Error::Audit(other.to_string()),
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
            Error::ClientUnauthenticated => with_reason(
                Code::Unauthenticated,
                "client_token_invalid",
                "verify with the one-time code for this invitation again",
            ),
            Error::Denied { reason, message } => {
                with_reason(Code::PermissionDenied, &reason, message)
            }
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::Precondition { reason, message } => {
                with_reason(Code::FailedPrecondition, reason, message)
            }
            Error::Aborted(message) => with_reason(Code::Aborted, "concurrent_change", message),
            Error::Peer { service, detail } => {
                tracing::warn!(service, detail = %detail, "peer call failed");
                with_reason(
                    Code::Unavailable,
                    &format!("{service}_unavailable"),
                    format!("the {service} service could not complete the request; retry later"),
                )
            }
            Error::Store(e) => {
                tracing::error!(error = %e, "intake storage failed");
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
