//! The one place where errors become gRPC statuses.
//!
//! Each service has its own `Error` enum; its `From<Error> for Status` calls
//! the constructors here, so every INVALID_ARGUMENT carries
//! `google.rpc.BadRequest` field violations and every status message is free
//! of client data.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The reason domain in `google.rpc.ErrorInfo` details.
pub const ERROR_DOMAIN: &str = "confidant.dev";

/// One field of a request that broke a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field path, e.g. `events[3].id`.
    pub field: String,
    /// The rule it broke, e.g. `must be a UUID`.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Collects every violation of a request so that the caller learns of all of
/// them at once.
#[derive(Debug, Default, Clone)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records the violation of a `Result`, keeping its value.
    pub fn check<T>(&mut self, result: Result<T, FieldViolation>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(v) => {
                self.0.push(v);
                None
            }
        }
    }

    /// Adds every violation of `other` as it is.
    pub fn extend(&mut self, other: Violations) {
        self.0.extend(other.0);
    }

    /// The violations, prefixed with `prefix.` (for nested messages).
    pub fn extend_prefixed(&mut self, prefix: &str, other: Violations) {
        for v in other.0 {
            self.0.push(FieldViolation::new(
                format!("{prefix}.{}", v.field),
                v.description,
            ));
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The violations.
    pub fn as_slice(&self) -> &[FieldViolation] {
        &self.0
    }

    /// `Ok(())` when there are none, otherwise the INVALID_ARGUMENT error.
    pub fn into_result(self) -> Result<(), Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// INVALID_ARGUMENT with `google.rpc.BadRequest` details naming each field and
/// the rule it broke. The message names the fields too, for clients that do
/// not decode details.
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    let summary = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {summary}"),
        details,
    )
}

/// A status with `google.rpc.ErrorInfo` carrying a machine-readable reason
/// (e.g. `PERMISSION_DENIED` with reason `behind_wall`).
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    with_info(code, reason, std::iter::empty(), message)
}

/// Like [`with_reason`], with `google.rpc.ErrorInfo` metadata too (ids a
/// caller acts on, never client data), e.g. the version that superseded a
/// record.
pub fn with_info<'a>(
    code: Code,
    reason: &str,
    metadata: impl IntoIterator<Item = (&'a str, String)>,
    message: impl Into<String>,
) -> Status {
    let details = ErrorDetails::with_error_info(
        reason,
        ERROR_DOMAIN,
        metadata
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<std::collections::HashMap<String, String>>(),
    );
    Status::with_error_details(code, message, details)
}

/// What a storage error means to a caller, decided from SQLSTATE codes in
/// exactly one function for every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// A unique constraint was violated (the row exists).
    AlreadyExists,
    /// A foreign key or check constraint was violated.
    ConstraintViolated,
    /// The database is unreachable, overloaded or the transaction must be retried.
    Unavailable,
    /// Anything else.
    Internal,
}

/// Classifies an sqlx error (PostgreSQL SQLSTATE classes and SQLite extended
/// result codes).
pub fn classify_sqlx(err: &sqlx::Error) -> StorageFault {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code();
            match code.as_deref() {
                // PostgreSQL
                Some("23505") => StorageFault::AlreadyExists,
                Some("23503" | "23514" | "23502") => StorageFault::ConstraintViolated,
                Some("40001" | "40P01" | "53300" | "57P01" | "57P03") => StorageFault::Unavailable,
                // SQLite extended codes: 2067 UNIQUE, 1555 PRIMARYKEY, 787 FOREIGNKEY,
                // 275 CHECK, 1299 NOTNULL, 5 BUSY, 6 LOCKED.
                Some("2067" | "1555") => StorageFault::AlreadyExists,
                Some("787" | "275" | "1299") => StorageFault::ConstraintViolated,
                Some("5" | "6" | "517") => StorageFault::Unavailable,
                _ => StorageFault::Internal,
            }
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StorageFault::Unavailable
        }
        _ => StorageFault::Internal,
    }
}

/// The status for a storage failure. The message is generic: database error
/// text can quote values, so it goes to the log (at the caller) and never to
/// the client.
pub fn storage_status(err: &sqlx::Error) -> Status {
    match classify_sqlx(err) {
        StorageFault::AlreadyExists => Status::already_exists("the resource already exists"),
        StorageFault::ConstraintViolated => {
            Status::failed_precondition("a storage constraint was violated")
        }
        StorageFault::Unavailable => Status::unavailable("storage is unavailable, retry later"),
        StorageFault::Internal => Status::internal("internal storage error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_every_field_violation() {
        let mut v = Violations::new();
        v.add("events[0].id", "must be a UUID");
        v.add("events[1].action", "must not be empty");
        let status = invalid_argument(&v.into_result().unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        let fields: Vec<_> = bad
            .field_violations
            .iter()
            .map(|f| f.field.as_str())
            .collect();
        assert_eq!(fields, ["events[0].id", "events[1].action"]);
        assert_eq!(bad.field_violations[0].description, "must be a UUID");
    }

    #[test]
    fn reasons_travel_as_error_info() {
        let status = with_reason(
            Code::PermissionDenied,
            "peer_not_allowed",
            "peer not allowed",
        );
        let info = status.get_error_details();
        let info = info.error_info().expect("error info");
        assert_eq!(info.reason, "peer_not_allowed");
        assert_eq!(info.domain, ERROR_DOMAIN);
    }
}
