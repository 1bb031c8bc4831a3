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
    /// A method about oneself came without a staff token.
    #[error("a staff token is required")]
    NoStaffToken,
    /// The caller may not do this: a reason code and what to tell them.
    #[error("{1}")]
    Refused(&'static str, &'static str),
    /// Storage failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sign-in or session failure.
    #[error(transparent)]
    Auth(#[from] crate::sessions::AuthError),
    /// Client verification failure.
    #[error(transparent)]
    Client(#[from] crate::clients::ClientError),
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        use crate::sessions::AuthError;
        use confidant_runtime::error::with_reason;
        use tonic::Code;
        match err {
            Error::Auth(AuthError::BadCredentials) => with_reason(
                Code::Unauthenticated,
                "bad_credentials",
                "invalid credentials",
            ),
            Error::Auth(AuthError::Locked) => with_reason(
                Code::Unauthenticated,
                "account_locked",
                "too many failed sign-ins; try again later",
            ),
            Error::Auth(AuthError::TotpNotEnrolled) => with_reason(
                Code::FailedPrecondition,
                "totp_not_enrolled",
                "a TOTP authenticator must be enrolled first",
            ),
            Error::Auth(AuthError::TotpAlreadyEnrolled) => with_reason(
                Code::FailedPrecondition,
                "totp_already_enrolled",
                "a TOTP authenticator is already enrolled",
            ),
            Error::Auth(AuthError::PasswordChangeRequired) => with_reason(
                Code::FailedPrecondition,
                "password_change_required",
                "the password is a temporary one: change it (ChangePassword) to sign in",
            ),
            Error::Auth(AuthError::SessionEnded) => with_reason(
                Code::Unauthenticated,
                "session_ended",
                "the session has ended; sign in again",
            ),
            Error::Auth(AuthError::Store(e)) => Error::Store(e).into(),
            Error::Auth(AuthError::Coord(e)) => {
                tracing::error!(error = %e, "coordination failed");
                Status::unavailable("coordination is unavailable, retry later")
            }
            Error::Auth(AuthError::Crypto) => {
                tracing::error!("a cryptographic operation failed");
                Status::internal("internal error")
            }
            Error::Auth(AuthError::Token(e)) => {
                tracing::error!(error = %e, "token signing failed");
                Status::internal("could not issue tokens")
            }
            Error::Client(e) => {
                use crate::clients::ClientError as C;
                match e {
                    C::UnknownClient => Status::not_found("client not found"),
                    C::RateLimited => {
                        with_reason(Code::ResourceExhausted, "rate_limited", e.to_string())
                    }
                    C::InvalidCode => {
                        with_reason(Code::Unauthenticated, "invalid_code", e.to_string())
                    }
                    C::Expired => with_reason(Code::Unauthenticated, "code_expired", e.to_string()),
                    C::Used => with_reason(Code::Unauthenticated, "code_used", e.to_string()),
                    C::NotSent => Status::unavailable("could not send the message; try again"),
                    C::ContactNotVerified => with_reason(
                        Code::FailedPrecondition,
                        "contact_not_verified",
                        e.to_string(),
                    ),
                    C::Store(s) => Error::Store(s).into(),
                    C::Coord(c) => {
                        tracing::error!(error = %c, "coordination failed");
                        Status::unavailable("coordination is unavailable, retry later")
                    }
                }
            }
            Error::Invalid(v) => invalid_argument(v.as_slice()),
            Error::Refused(reason, message) => with_reason(Code::PermissionDenied, reason, message),
            Error::NoIdentity => {
                Status::unauthenticated("a client certificate with a SPIFFE identity is required")
            }
            Error::NoStaffToken => with_reason(
                Code::Unauthenticated,
                "staff_token_required",
                "sign in: this method answers about the holder of a staff token",
            ),
            Error::Store(StoreError::NotFound(what)) => {
                Status::not_found(format!("{what} not found"))
            }
            Error::Store(StoreError::Conflict(what)) => Status::already_exists(what),
            Error::Store(StoreError::Precondition(what)) => confidant_runtime::error::with_reason(
                Code::FailedPrecondition,
                "precondition",
                what,
            ),
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
