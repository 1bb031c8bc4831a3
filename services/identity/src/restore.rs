//! What `confidant restore identity` makes again on an identity database
//! restored from a backup: the revocations the audit log records since the
//! backup, and sign-in changes it cannot bring back (they are locked
//! instead). Revocations only ever take access away, so replaying one a
//! second time, or one the restored database already shows, changes
//! nothing.

use chrono::{DateTime, Utc};
use confidant_runtime::portable::{Statement, Value};
use confidant_runtime::storage::Database;
use uuid::Uuid;

use crate::store::{self, StoreError};

/// A revocation the log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// A staff member was disabled.
    StaffDisabled(Uuid),
    /// An assignment to a matter was revoked.
    Assignment(Uuid),
    /// A role was taken from a staff member.
    Role { staff: Uuid, role: String },
    /// A wall exception was revoked.
    WallException(Uuid),
    /// A matter was closed.
    MatterClosed(Uuid),
}

impl Revocation {
    /// What it concerns (an audit resource type) and its id.
    pub fn resource(&self) -> (&'static str, String) {
        match self {
            Revocation::StaffDisabled(id) => ("staff", id.to_string()),
            Revocation::Assignment(id) => ("assignment", id.to_string()),
            Revocation::Role { staff, role } => ("staff_role", format!("{staff}/{role}")),
            Revocation::WallException(id) => ("wall_exception", id.to_string()),
            Revocation::MatterClosed(id) => ("matter", id.to_string()),
        }
    }

    /// Whether the database holds what it revokes, and whether that is
    /// still in force: `None` when the database never held it.
    pub async fn in_force(&self, db: &Database) -> Result<Option<bool>, StoreError> {
        let (sql, values): (&'static str, Vec<Value>) = match self {
            Revocation::StaffDisabled(id) => (
                "SELECT CASE WHEN disabled_at IS NULL THEN 1 ELSE 0 END FROM staff WHERE id = $1",
                vec![Value::Uuid(*id)],
            ),
            Revocation::Assignment(id) => (
                "SELECT CASE WHEN revoked_at IS NULL THEN 1 ELSE 0 END FROM assignments WHERE id = $1",
                vec![Value::Uuid(*id)],
            ),
            Revocation::Role { staff, role } => (
                "SELECT MAX(CASE WHEN revoked_at IS NULL THEN 1 ELSE 0 END) FROM staff_roles \
                 WHERE staff_id = $1 AND role = $2 HAVING COUNT(*) > 0",
                vec![Value::Uuid(*staff), Value::Text(role.clone())],
            ),
            Revocation::WallException(id) => (
                "SELECT CASE WHEN revoked_at IS NULL THEN 1 ELSE 0 END FROM wall_exceptions WHERE id = $1",
                vec![Value::Uuid(*id)],
            ),
            Revocation::MatterClosed(id) => (
                "SELECT CASE WHEN closed_at IS NULL THEN 1 ELSE 0 END FROM matters WHERE id = $1",
                vec![Value::Uuid(*id)],
            ),
        };
        let row: Option<(i32,)> = db.fetch_optional(sql, values).await?;
        Ok(row.map(|(live,)| live == 1))
    }

    /// The statement that makes it again, at the logged time `at` (the
    /// service's own); unmet when it is in force no longer.
    pub fn statement(&self, at: DateTime<Utc>) -> Statement {
        match self {
            Revocation::StaffDisabled(id) => store::staff_disabled(*id, at).expecting(1),
            Revocation::Assignment(id) => store::assignment_revoked(*id, at).expecting(1),
            // A role may have been granted more than once (one row each).
            Revocation::Role { staff, role } => store::role_revoked(*staff, role, at),
            Revocation::WallException(id) => store::wall_exception_revoked(*id, at).expecting(1),
            Revocation::MatterClosed(id) => store::matter_closed(*id, at).expecting(1),
        }
    }
}

/// A staff member's password hash, when it was set and when their TOTP was
/// confirmed, as the database holds them; `None` when it holds no
/// credentials for them.
pub async fn sign_in_set(
    db: &Database,
    staff: Uuid,
) -> Result<Option<(String, DateTime<Utc>, Option<DateTime<Utc>>)>, StoreError> {
    Ok(db
        .fetch_optional(
            "SELECT password_hash, password_set_at, totp_confirmed_at FROM credentials WHERE staff_id = $1",
            vec![Value::Uuid(staff)],
        )
        .await?)
}

/// The password hash of a sign-in locked by a restore: no password
/// matches it (it is not a hash at all).
pub const LOCKED_HASH: &str = "locked-by-restore";

/// Statement: the staff member's password and TOTP stop working (a hash no
/// password matches, no TOTP secret), so that neither what the backup held
/// nor anything else signs them in until an administrator sets a new
/// password and they enrol TOTP again.
pub fn lock_sign_in(staff: Uuid) -> Statement {
    Statement::new(
        "UPDATE credentials SET password_hash = $2, totp_secret = NULL, \
         totp_confirmed_at = NULL, totp_last_step = NULL WHERE staff_id = $1",
        vec![Value::Uuid(staff), Value::Text(LOCKED_HASH.to_owned())],
    )
    .expecting(1)
}

/// The sessions not ended yet, at most `limit`, oldest first.
pub async fn live_sessions(db: &Database, limit: i64) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
    Ok(db
        .fetch_all(
            "SELECT id, staff_id FROM sessions WHERE revoked_at IS NULL ORDER BY id LIMIT $1",
            vec![Value::BigInt(limit)],
        )
        .await?)
}

/// Whether the database holds `staff`'s `role` granted at `at` (to the
/// microsecond a database keeps).
pub async fn role_granted_at(
    db: &Database,
    staff: Uuid,
    role: &str,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let rows: Vec<(DateTime<Utc>,)> = db
        .fetch_all(
            "SELECT granted_at FROM staff_roles WHERE staff_id = $1 AND role = $2",
            vec![Value::Uuid(staff), Value::Text(role.to_owned())],
        )
        .await?;
    let leeway = chrono::Duration::milliseconds(1);
    Ok(rows.iter().any(|(granted,)| (*granted - at).abs() < leeway))
}
